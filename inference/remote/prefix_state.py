"""What a remote engine's prefix cache holds, in rumor's own block hashes. Pure.

vLLM names a cached block by its own hash: sha256 or xxhash over
(parent hash, token ids, extra keys), CBOR- or pickle-serialised, seeded by
`PYTHONHASHSEED` or by random bytes per process (`--prefix-caching-hash-algo`,
`vllm/v1/core/kv_cache_utils.py`). A rumor router cannot compute those from a
prompt in general: with no `PYTHONHASHSEED` the seed is secret and random, the
pickle form depends on Python's pickle protocol, and the hash ends in bytes
rumor would have to truncate the same way. So this state does not keep the
engine's hashes for routing: every `BlockStored` carries its token ids and its
parent, and each block is re-hashed with rumor's chain
(`inference.llm.prefix.chain_hash`, salt = the model's rumor name) from its
parent's rumor hash. A router then computes `block_hashes(prompt_ids,
block_size, salt)` for a remote engine exactly as for the built-in one. What
it cannot do is tokenize differently from the engine: the router must use the
engine's tokenizer and chat template (the `tokenizer=` option).

Blocks that cannot be translated are left out and counted, never guessed:
- a block whose hash covers more than its tokens (LoRA, multimodal inputs,
  `cache_salt`): a plain prompt would wrongly match it;
- a block whose parent is unknown (stored before we subscribed, or after a
  parent we skipped);
- a block of another size than `block_size` (the engine's `--block-size`
  differs from the config: `mismatch` says so, once);
- copies on another medium than the GPU (CPU offloading), and KV-cache groups
  other than the first (hybrid models).

The feed (`kv_events_since`) has the built-in engine's shape (`KVEvents`): a
cursor, stored and removed hashes, and `complete`. `complete=False` means the
caller's cursor is older than the log or older than a reset; it resyncs from
`cached_block_hashes()`. Separately, `exact` says whether the set is believed
to be all the engine holds: False until the event history is known from the
engine's first event (or after a gap that could not be filled); the set then
under-reports, which costs affinity but never sends a request to a node for a
prefix it does not hold.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import dataclass

from ..llm.client import KVEvents
from ..llm.prefix import chain_hash, root_hash
from .kv_wire import AllBlocksCleared, BlockRemoved, BlockStored, EventBatch

log = logging.getLogger(__name__)

STORED = 1
REMOVED = 2
#: Media whose blocks a request can hit: vLLM tags GPU blocks "GPU" (older
#: releases send no medium at all).
SERVING_MEDIA = (None, "GPU")


@dataclass(frozen=True)
class _Event:
    seq: int
    kind: int
    block_hash: int


class RemotePrefixState:
    """The engine's cached blocks as rumor hashes, fed decoded event batches."""

    def __init__(self, block_size: int, salt: str, log_size: int = 8192) -> None:
        self.block_size = block_size
        self.salt = salt
        self._root = root_hash(salt)
        self._rumor_of: dict[int, int] = {}  # engine hash -> rumor hash
        self._held: Counter[int] = Counter()  # rumor hash -> engine blocks naming it
        self._log: deque[_Event] = deque(maxlen=log_size)
        self._seq = 0  # newest event's sequence number
        self._valid_from = 0  # cursors older than this must resync
        self.exact = False
        self.why_inexact = "no events received yet"
        self.mismatch = ""  # a block size the engine uses and rumor was not told
        self.skipped: Counter[str] = Counter()  # blocks left out, by reason
        self.batches = 0
        self.resets = 0

    # -- fed by the subscriber ---------------------------------------------------

    def apply(self, batch: EventBatch) -> None:
        self.batches += 1
        if batch.unknown_events:
            self.skipped["unknown event type"] += batch.unknown_events
        for event in batch.events:
            if isinstance(event, BlockStored):
                self._stored(event)
            elif isinstance(event, BlockRemoved):
                self._removed(event)
            elif isinstance(event, AllBlocksCleared):
                self.clear()  # the engine holds nothing now, whatever we missed before

    def clear(self, exact: bool = True, why: str = "") -> None:
        """The engine holds nothing (its first event, AllBlocksCleared, a restart):
        empty the set; cursors taken before now must resync."""
        self._rumor_of.clear()
        self._held.clear()
        self._log.clear()
        self._seq += 1  # a sequence number no event has: every older cursor is stale
        self._valid_from = self._seq
        self.exact = exact
        self.why_inexact = "" if exact else why

    def reset(self, why: str) -> None:
        """History was lost (an unfillable gap, a malformed batch, the engine
        went away): what the engine holds is unknown. Empty the set, since a
        stale entry could misroute while a missing one only costs affinity."""
        self.resets += 1
        if self.exact or self.why_inexact != why:
            log.warning("prefix state of %r reset: %s", self.salt, why)
        self.clear(exact=False, why=why)

    def _stored(self, e: BlockStored) -> None:
        n = len(e.block_hashes)
        if e.medium not in SERVING_MEDIA:
            self.skipped[f"medium {e.medium}"] += n
            return
        if e.group_idx not in (None, 0):
            self.skipped["KV-cache group > 0"] += n
            return
        if not self.check_block_size(e.block_size):
            self.skipped["block size mismatch"] += n
            return
        if e.lora or e.extra_keys:
            self.skipped["hash covers more than tokens (LoRA, multimodal, cache_salt)"] += n
            return
        tokens = e.token_ids
        if tokens is None or len(tokens) != n * self.block_size:
            self.skipped["token ids do not fill the blocks"] += n
            return
        if e.parent_block_hash is None:
            parent = self._root
        else:
            known = self._rumor_of.get(e.parent_block_hash)
            if known is None:
                self.skipped["unknown parent"] += n
                return
            parent = known
        bs = self.block_size
        for i, engine_hash in enumerate(e.block_hashes):
            parent = chain_hash(parent, tokens[i * bs : (i + 1) * bs])
            if engine_hash in self._rumor_of:
                continue  # stored twice (a replay overlapping the live feed)
            self._rumor_of[engine_hash] = parent
            self._held[parent] += 1
            if self._held[parent] == 1:
                self._append(STORED, parent)

    def check_block_size(self, engine_block_size: int) -> bool:
        """Whether the engine's block size is ours; if not, say so (once) in
        `mismatch` and the log: no block of it will be translated."""
        if engine_block_size == self.block_size:
            return True
        if not self.mismatch:
            self.mismatch = (
                f"the engine's blocks hold {engine_block_size} tokens but block_size is "
                f"{self.block_size}: set block_size={engine_block_size} in the model spec"
            )
            log.error("model %r: %s; its prefix state stays empty", self.salt, self.mismatch)
        return False

    def _removed(self, e: BlockRemoved) -> None:
        if e.medium not in SERVING_MEDIA or e.group_idx not in (None, 0):
            return
        for engine_hash in e.block_hashes:
            rumor = self._rumor_of.pop(engine_hash, None)
            if rumor is None:
                continue  # a block we never translated
            self._held[rumor] -= 1
            if self._held[rumor] <= 0:
                del self._held[rumor]
                self._append(REMOVED, rumor)

    def _append(self, kind: int, block_hash: int) -> None:
        self._seq += 1
        self._log.append(_Event(self._seq, kind, block_hash))

    # -- read by the daemon (the built-in engine's shapes) -----------------------

    def cached_block_hashes(self) -> list[int]:
        return list(self._held)

    def __contains__(self, block_hash: int) -> bool:
        return block_hash in self._held

    def __len__(self) -> int:
        return len(self._held)

    @property
    def cursor(self) -> int:
        return self._seq

    def kv_events_since(self, cursor: int) -> KVEvents:
        """Changes after `cursor` (0 at first); see the module docstring."""
        if cursor >= self._seq:
            return KVEvents(self._seq, (), (), True)
        oldest = self._log[0].seq if self._log else self._seq + 1
        complete = cursor >= self._valid_from and cursor + 1 >= oldest
        stored: list[int] = []
        removed: list[int] = []
        # The log's sequence numbers are consecutive (clear() empties it).
        for i in range(max(0, cursor + 1 - oldest), len(self._log)):
            e = self._log[i]
            (stored if e.kind == STORED else removed).append(e.block_hash)
        return KVEvents(self._seq, tuple(stored), tuple(removed), complete)
