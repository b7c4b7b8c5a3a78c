"""Gossiped prefix-cache summaries: what a node publishes about the KV blocks
its engine holds, and how a router reads a request's match from it. Pure.

Which hashes matter. A block hash is chained (inference/llm/prefix.py: a
block's hash covers its parent's), so a cached block k implies the whole
prefix up to k, and an engine serves the longest run of a prompt's blocks
from the start. A router therefore needs, per replica, "how deep along this
request's chain does the cache go", not the set of blocks. A summary keeps a
*sample* of the chain hashes, chosen by the hash itself: a hash is kept at
level L when its L low bits are zero (one block in 2^L, like content-defined
chunking). Publisher and router agree on which positions of a chain are
sampled without exchanging positions, so this works with any engine that
reports bare hashes (vLLM's KV events too). The match read from a summary is
the deepest sampled position of the request's chain that the summary holds:
exact to within 2^L blocks, never longer than the truth unless the cache has
a hole (LRU frees a sequence's tail first, so caches are prefix-closed almost
always).

Bounded: each kept hash is published as a 4-byte fingerprint (its high 32
bits; a false match among 2,000 fingerprints is about 5e-7 per lookup), at
most `MAX_FPS`, spread over `SLOTS` record keys of at most `SLOT_FPS` each:
with the key names, under 8 KB per node per model. The level rises when the
cache holds more sampled hashes than fit, and falls (with hysteresis) when
it shrinks.

Small deltas. Gossip re-sends a changed record key whole, so the slots are
filled in insertion order, not by hash: new blocks go to the slot being
filled, and the LRU evicts the oldest blocks first, which sit in the oldest
slots. A publish therefore rewrites about two slots (~0.5 KB), however large
the summary; only a level change rewrites all of them.

Record layout (per model): the model's entry in the `models` key carries
`prefix: {"tag", "level", "blocks", "exact"}`; slot k is the key
`px:<tag>:<k>` holding sorted big-endian uint32 fingerprints. `tag` is a
short digest of the model name, so long model names do not bloat every key.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Record keys of a model's summary slots, and how many fingerprints each holds.
SLOTS = 96
SLOT_FPS = 16
MAX_FPS = SLOTS * SLOT_FPS  # 1,536 fingerprints: 6,144 B; 7.6 KB with the key names
KEY_PREFIX = "px:"
#: A lower level is taken back only when it would fill at most this much of
#: the budget (hysteresis: a level change rewrites every slot).
LOWER_AT = 0.7
#: A summary's changes are published at most this often (the load, every
#: gossip interval): gossip floods each change to every node, and in
#: `rumor sim llm` summaries 1 s older cost no measurable hit rate (routers
#: send a session to its home pair before they hear where it went). A new
#: engine's empty summary goes out at once.
SUMMARY_EVERY = 1.0
#: Sampled hashes tracked beyond the budget, as a multiple of it, so the level
#: can fall again without a resync (bounds the tracker's memory for huge caches).
TRACK_FACTOR = 4


def model_tag(model: str) -> str:
    """A short, stable name for a model in record keys (6 hex characters)."""
    return hashlib.blake2b(model.encode(), digest_size=3).hexdigest()


def slot_key(tag: str, slot: int) -> str:
    return f"{KEY_PREFIX}{tag}:{slot:x}"


def fingerprint(block_hash: int) -> int:
    """The published form of a kept hash: its high 32 bits (the level uses the low bits)."""
    return (block_hash >> 32) & 0xFFFFFFFF


def trailing_zeros(h: int) -> int:
    return 64 if h == 0 else (h & -h).bit_length() - 1


def encode_slot(fps: Iterable[int]) -> bytes:
    return b"".join(fp.to_bytes(4, "big") for fp in sorted(fps))


def decode_slot(value: object) -> frozenset[int]:
    """A gossiped slot; anything malformed reads as empty (peer data is not trusted)."""
    if not isinstance(value, bytes) or len(value) % 4 or len(value) > 4 * SLOT_FPS:
        return frozenset()
    return frozenset(int.from_bytes(value[i : i + 4], "big") for i in range(0, len(value), 4))


# -- the publisher's side -------------------------------------------------------------


@dataclass
class SummaryPublisher:
    """One model's summary as a node publishes it, fed with the engine's cache
    changes (`stored`, `removed`, `reset`). `changes()` returns the record keys
    to rewrite since the last call; `header()` goes into the model's entry.

    `kv_blocks` (the engine's pool size) sets the lowest level ever tracked, so
    the tracker holds at most about TRACK_FACTOR * MAX_FPS hashes however big
    the cache. `exact` says whether the source is the engine's own cache (KV
    events) or an approximation from the prompts this node served.
    """

    model: str
    kv_blocks: int = 0
    exact: bool = True
    tag: str = ""
    level: int = 0
    floor: int = 0
    #: Tracked hashes (trailing zeros >= floor), oldest first: a dict keeps the
    #: insertion order, so a level change lays the slots out by age again.
    _hashes: dict[int, None] = field(default_factory=dict)
    _by_tz: dict[int, int] = field(default_factory=dict)  # count per trailing-zero count
    _fp_refs: dict[int, int] = field(default_factory=dict)  # fingerprint -> kept hashes
    _slot_of: dict[int, int] = field(default_factory=dict)  # fingerprint -> slot
    _slots: list[set[int]] = field(default_factory=lambda: [set() for _ in range(SLOTS)])
    _filling: int = 0
    _dirty: set[int] = field(default_factory=set)
    _published: dict[int, bytes] = field(default_factory=dict)
    blocks: int = 0  # every block the source says is cached, sampled or not

    def __post_init__(self) -> None:
        self.tag = self.tag or model_tag(self.model)
        self.floor = 0
        while self.kv_blocks >> self.floor > TRACK_FACTOR * MAX_FPS:
            self.floor += 1
        self.level = self.floor

    # -- input -------------------------------------------------------------------

    def stored(self, hashes: Iterable[int]) -> None:
        for h in hashes:
            self.blocks += 1
            tz = trailing_zeros(h)
            if tz < self.floor or h in self._hashes:
                continue
            self._hashes[h] = None
            self._by_tz[tz] = self._by_tz.get(tz, 0) + 1
            if tz >= self.level:
                self._keep(fingerprint(h))
        self._fit()

    def removed(self, hashes: Iterable[int]) -> None:
        for h in hashes:
            self.blocks = max(0, self.blocks - 1)
            if h not in self._hashes:
                continue
            del self._hashes[h]
            tz = trailing_zeros(h)
            self._by_tz[tz] -= 1
            if tz >= self.level:
                self._drop(fingerprint(h))
        self._fit()

    def reset(self, hashes: Iterable[int]) -> None:
        """Start over from a snapshot of the whole cache (a resync, a new engine)."""
        for fp in list(self._fp_refs):
            self._drop(fp, all_refs=True)
        self._hashes.clear()
        self._by_tz.clear()
        self.blocks = 0
        self.level = self.floor
        self._filling = 0
        self.stored(hashes)

    # -- output ------------------------------------------------------------------

    def header(self) -> dict[str, Any]:
        return {"tag": self.tag, "level": self.level, "blocks": self.blocks, "exact": self.exact}

    def changes(self) -> dict[str, bytes]:
        """Slot keys whose value changed since the last call (first call: the
        non-empty ones)."""
        out = {}
        for s in sorted(self._dirty):
            value = encode_slot(self._slots[s])
            if self._published.get(s, b"") != value:
                out[slot_key(self.tag, s)] = value
                self._published[s] = value
        self._dirty.clear()
        return out

    def published(self) -> dict[str, bytes]:
        """Every slot key published so far, at its last published value."""
        return {slot_key(self.tag, s): v for s, v in sorted(self._published.items())}

    def snapshot(self) -> Summary:
        """What a router would decode from the published state now."""
        return Summary(self.level, frozenset(self._fp_refs), self.blocks)

    @property
    def size(self) -> int:
        return len(self._fp_refs)

    # -- internals -----------------------------------------------------------------

    def _keep(self, fp: int) -> None:
        refs = self._fp_refs.get(fp, 0)
        self._fp_refs[fp] = refs + 1
        if refs:
            return
        if len(self._slots[self._filling]) >= SLOT_FPS:
            # Fill the emptiest slot next (an evicted old slot, usually).
            self._filling = min(range(SLOTS), key=lambda s: (len(self._slots[s]), s))
        self._slots[self._filling].add(fp)
        self._slot_of[fp] = self._filling
        self._dirty.add(self._filling)

    def _drop(self, fp: int, all_refs: bool = False) -> None:
        refs = self._fp_refs.get(fp, 0) - 1
        if refs > 0 and not all_refs:
            self._fp_refs[fp] = refs
            return
        self._fp_refs.pop(fp, None)
        slot = self._slot_of.pop(fp, None)
        if slot is not None:
            self._slots[slot].discard(fp)
            self._dirty.add(slot)

    def _count_at(self, level: int) -> int:
        return sum(n for tz, n in self._by_tz.items() if tz >= level)

    def _fit(self) -> None:
        """Keep the kept set within MAX_FPS: raise the level at once when over,
        lower it only when the lower level would fill at most LOWER_AT of it."""
        level = self.level
        while self._count_at(level) > MAX_FPS:
            level += 1
        while level > self.floor and self._count_at(level - 1) <= LOWER_AT * MAX_FPS:
            level -= 1
        if level != self.level:
            self._relevel(level)
        # Forget tracked hashes far beyond the budget (only for huge caches).
        while self.floor < self.level and self._count_at(self.floor) > TRACK_FACTOR * MAX_FPS:
            self._hashes = {h: None for h in self._hashes if trailing_zeros(h) > self.floor}
            self._by_tz.pop(self.floor, None)
            self.floor += 1

    def _relevel(self, level: int) -> None:
        for fp in list(self._fp_refs):
            self._drop(fp, all_refs=True)
        self.level = level
        self._filling = 0
        for h in self._hashes:  # oldest first
            if trailing_zeros(h) >= level:
                self._keep(fingerprint(h))


# -- a node without KV events: what it served ------------------------------------------------


class ServedPrefixes:
    """For an engine that reports no KV events: approximate its cache by the
    block hashes of the prompts this node served, least recently used dropped
    first once more than `capacity` blocks are remembered (the engine's pool,
    when known). Feeds a SummaryPublisher (exact=False)."""

    def __init__(self, summary: SummaryPublisher, capacity: int) -> None:
        self.summary = summary
        self.capacity = max(1, capacity)
        self._lru: OrderedDict[int, None] = OrderedDict()

    def served(self, chain: Sequence[int]) -> None:
        new = []
        for h in chain:
            if h in self._lru:
                self._lru.move_to_end(h)
            else:
                self._lru[h] = None
                new.append(h)
        self.summary.stored(new)
        gone = []
        while len(self._lru) > self.capacity:
            h, _ = self._lru.popitem(last=False)
            gone.append(h)
        self.summary.removed(gone)


# -- the router's side ----------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """A replica's prefix cache as its summary says: kept fingerprints at `level`."""

    level: int
    fps: frozenset[int]
    blocks: int = 0  # cached blocks in all (SGLang's "tree size")
    exact: bool = True

    def held(self, block_hash: int) -> bool:
        """Whether the summary keeps this (sampled) block."""
        return fingerprint(block_hash) in self.fps


#: How a model's engine names blocks: (block_size, hash function, salt).
Scheme = tuple[int, str, str]


@dataclass
class PrefixRequest:
    """One request's prompt as routers see it: its block-hash chain under each
    scheme the replicas use (usually one), and its length in tokens."""

    model: str
    prompt_tokens: int
    chains: Mapping[Scheme, Sequence[int]]
    #: (scheme, level) -> the chain's sampled positions, filled on first use
    #: (or in advance, by a caller that knows them).
    positions: dict[tuple[Scheme, int], list[int]] = field(default_factory=dict)

    def sampled_positions(self, scheme: Scheme, level: int) -> list[int]:
        """Indices of the chain's blocks a summary at `level` would keep."""
        key = (scheme, level)
        pos = self.positions.get(key)
        if pos is None:
            chain = self.chains.get(scheme, ())
            mask = (1 << level) - 1
            pos = self.positions[key] = [i for i, h in enumerate(chain) if h & mask == 0]
        return pos

    def matched_tokens(self, scheme: Scheme, summary: Summary) -> int:
        """Prompt tokens the replica holds, as far as its summary tells: the
        deepest sampled block of the chain it keeps (binary search: caches are
        prefix-closed, so "held" is monotone along the chain), in tokens, and
        never the prompt's last token (an engine recomputes it for its logits)."""
        chain = self.chains.get(scheme)
        if not chain or not (summary.fps or summary.blocks):
            return 0
        pos = self.sampled_positions(scheme, summary.level)
        lo, hi = 0, len(pos)  # pos[:lo] known held, pos[hi:] known not held
        while lo < hi:
            mid = (lo + hi) // 2
            if summary.held(chain[pos[mid]]):
                lo = mid + 1
            else:
                hi = mid
        if lo == 0:
            return 0
        return min((pos[lo - 1] + 1) * scheme[0], self.prompt_tokens - 1)


def scheme_of(entry: Mapping[str, Any]) -> Scheme | None:
    """The hashing scheme from a model's gossiped entry, or None if malformed."""
    bs, name, salt = entry.get("block_size"), entry.get("hash"), entry.get("hash_salt")
    if not isinstance(bs, int) or isinstance(bs, bool) or not 0 < bs <= 4096:
        return None
    return (bs, name, salt) if isinstance(name, str) and isinstance(salt, str) else None


class SummaryCache:
    """Decoded summaries of gossiped records, reused while their values are the
    same objects (a record value is replaced, never mutated, when it changes),
    so a router decodes a slot once per change, not once per request."""

    def __init__(self) -> None:
        self._slots: dict[str, tuple[object, frozenset[int]]] = {}  # "node\0key" -> decoded
        self._summaries: dict[tuple[str, str], tuple[tuple[object, ...], Summary]] = {}

    def summary(
        self, node: str, header: Mapping[str, Any], get: Callable[[str], object]
    ) -> Summary | None:
        """Decode `node`'s summary from its model entry's `prefix` header and
        its record (`get(key)`); None when it publishes none."""
        tag, level = header.get("tag"), header.get("level")
        if not isinstance(tag, str) or not isinstance(level, int) or not 0 <= level <= 64:
            return None
        values = tuple(get(slot_key(tag, s)) for s in range(SLOTS))
        blocks = header.get("blocks")
        blocks = blocks if isinstance(blocks, int) and not isinstance(blocks, bool) else 0
        exact = header.get("exact") is not False
        key = (node, tag)
        hit = self._summaries.get(key)
        if hit is not None and all(a is b for a, b in zip(hit[0], values, strict=True)):
            fps = hit[1].fps
        else:
            union: set[int] = set()
            for s, value in enumerate(values):
                if value is not None:
                    union |= self._slot(f"{node}\0{tag}\0{s}", value)
            fps = frozenset(union)
        summary = Summary(level, fps, blocks, exact)
        self._summaries[key] = (values, summary)
        return summary

    def _slot(self, key: str, value: object) -> frozenset[int]:
        hit = self._slots.get(key)
        if hit is not None and hit[0] is value:
            return hit[1]
        decoded = decode_slot(value)
        self._slots[key] = (value, decoded)
        return decoded

    def forget(self, keep: Iterable[str]) -> None:
        """Drop cached summaries of nodes not in `keep` (dead or gone)."""
        alive = set(keep)
        self._summaries = {k: v for k, v in self._summaries.items() if k[0] in alive}
        self._slots = {k: v for k, v in self._slots.items() if k.split("\0", 1)[0] in alive}
