"""The KV block pool's bookkeeping: ids, reference counts, the prefix cache, LRU eviction.

No torch here: the KV tensors are allocated once by the model runner, and a
block id is just an index into them. This class decides which ids are free,
which are shared, and which free ones still hold a reusable prefix.

- A block is *in use* while its reference count is positive (one reference per
  sequence whose block table holds it; a shared prefix block has several).
- A full block may carry a *hash* (`prefix.chain_hash`); the pool then maps the
  hash to the block so a later sequence with the same prefix reuses it.
- A freed block that carries a hash stays *cached*: it is reusable until it is
  evicted, least recently freed first (vLLM's policy). A freed block without a
  hash is reused before any cached one is evicted.
- Every hash stored or evicted is appended to a bounded event log, so a caller
  (the gossip layer) can follow the cache's contents cheaply (`events_since`).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

STORED = "stored"
REMOVED = "removed"


@dataclass(frozen=True)
class BlockEvent:
    seq: int  # position in the pool's event log, from 1
    kind: str  # STORED or REMOVED
    block_hash: int


class BlockPool:
    def __init__(self, num_blocks: int, max_events: int = 8192) -> None:
        if num_blocks <= 0:
            raise ValueError("num_blocks must be positive")
        self.num_blocks = num_blocks
        self._refcount = [0] * num_blocks
        self._hash: list[int | None] = [None] * num_blocks
        self._cached: dict[int, int] = {}  # hash -> block id
        # Free blocks without a hash, reused first (a stack: recently used memory is warm).
        self._free_plain: list[int] = list(range(num_blocks - 1, -1, -1))
        # Free blocks that still hold a cached prefix, oldest first (the eviction order).
        self._free_cached: OrderedDict[int, None] = OrderedDict()
        self._events: deque[BlockEvent] = deque(maxlen=max_events)
        self._event_seq = 0
        self.evictions = 0

    # -- capacity ----------------------------------------------------------

    @property
    def num_free(self) -> int:
        """Blocks that can be handed out now (plain free plus evictable cached)."""
        return len(self._free_plain) + len(self._free_cached)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    # -- allocation ----------------------------------------------------------

    def allocate(self, n: int) -> list[int] | None:
        """`n` fresh blocks with a reference count of 1, or None (nothing taken)
        if fewer than `n` are free. Evicts cached free blocks, oldest first."""
        if n > self.num_free:
            return None
        out: list[int] = []
        for _ in range(n):
            if self._free_plain:
                block = self._free_plain.pop()
            else:
                block, _ = self._free_cached.popitem(last=False)
                self._uncache(block)
            self._refcount[block] = 1
            out.append(block)
        return out

    def lookup(self, block_hash: int) -> int | None:
        """The block holding this hash, if cached (in use or free)."""
        return self._cached.get(block_hash)

    def acquire(self, block: int) -> None:
        """Take one more reference to a cached block (a prefix-cache hit)."""
        if self._refcount[block] == 0:
            del self._free_cached[block]
        self._refcount[block] += 1

    def free(self, blocks: Sequence[int]) -> None:
        """Drop one reference to each block. Pass a sequence's blocks tail first,
        so that its last blocks (least likely to be shared) are evicted first."""
        for block in blocks:
            count = self._refcount[block] - 1
            if count < 0:
                raise ValueError(f"block {block} freed more often than taken")
            self._refcount[block] = count
            if count == 0:
                if self._hash[block] is None:
                    self._free_plain.append(block)
                else:
                    self._free_cached[block] = None

    def refcount(self, block: int) -> int:
        return self._refcount[block]

    # -- the prefix cache ------------------------------------------------------

    def cache(self, block: int, block_hash: int) -> bool:
        """Publish a full, in-use block under its hash. False if another block
        already holds that hash (two sequences computed the same prefix at once):
        the first stays the cached one and this block stays private."""
        if self._refcount[block] <= 0:
            raise ValueError(f"block {block} is not in use")
        if self._hash[block] is not None or block_hash in self._cached:
            return False
        self._hash[block] = block_hash
        self._cached[block_hash] = block
        self._log(STORED, block_hash)
        return True

    def _uncache(self, block: int) -> None:
        h = self._hash[block]
        if h is not None:
            self._hash[block] = None
            del self._cached[h]
            self.evictions += 1
            self._log(REMOVED, h)

    def clear_cache(self) -> int:
        """Forget every cached block not in use (e.g. after a weight reload)."""
        n = 0
        while self._free_cached:
            block, _ = self._free_cached.popitem(last=False)
            self._uncache(block)
            self._free_plain.append(block)
            n += 1
        return n

    # -- what the cache holds, for routers -------------------------------------

    def cached_hashes(self) -> Iterator[int]:
        """Snapshot of every hash the pool can serve now (in use or free)."""
        return iter(list(self._cached))

    @property
    def event_cursor(self) -> int:
        """The sequence number of the newest event (0 before any)."""
        return self._event_seq

    def events_since(self, cursor: int) -> tuple[list[BlockEvent], bool]:
        """Events after `cursor`, and whether they are complete. Incomplete means
        the log dropped some: the caller resyncs from `cached_hashes()`."""
        if cursor >= self._event_seq:
            return [], True
        oldest = self._events[0].seq if self._events else self._event_seq + 1
        complete = cursor + 1 >= oldest
        start = max(0, cursor + 1 - oldest)
        return [self._events[i] for i in range(start, len(self._events))], complete

    def _log(self, kind: str, block_hash: int) -> None:
        self._event_seq += 1
        self._events.append(BlockEvent(self._event_seq, kind, block_hash))
