"""node.cluster.prefix: bounded summaries with small deltas, and the match a
router reads from them."""

from __future__ import annotations

import random

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from inference.llm.prefix import block_hashes
from node.cluster.prefix import (
    MAX_FPS,
    SLOT_FPS,
    PrefixRequest,
    ServedPrefixes,
    Summary,
    SummaryCache,
    SummaryPublisher,
    decode_slot,
    encode_slot,
    slot_key,
)

SCHEME = (16, "blake2b-64-chain-v1", "m")


def _chain(seed: int, blocks: int, shared: list[int] | None = None) -> list[int]:
    """Real block hashes of a random prompt (optionally after a shared prefix)."""
    rng = random.Random(seed)
    ids = (shared or []) + [rng.randrange(1000) for _ in range(blocks * 16)]
    return block_hashes(ids, 16, "m")


def _record(pub: SummaryPublisher) -> dict[str, object]:
    pub.changes()
    return {"models": {"m": {"prefix": pub.header()}}, **pub.published()}


def _decode(pub: SummaryPublisher, cache: SummaryCache | None = None) -> Summary:
    rec = _record(pub)
    header = rec["models"]["m"]["prefix"]  # type: ignore[index]
    got = (cache or SummaryCache()).summary("n1", header, rec.get)
    assert got is not None
    return got


def test_the_summary_stays_under_8_kb_however_large_the_cache() -> None:
    rng = random.Random(1)
    pub = SummaryPublisher("m", kv_blocks=400_000)
    pub.stored(rng.getrandbits(64) for _ in range(400_000))
    assert pub.size <= MAX_FPS
    rec = _record(pub)
    size = sum(
        len(msgpack.packb(k)) + len(msgpack.packb(v)) for k, v in rec.items() if k != "models"
    )
    assert size <= 8 * 1024
    # The tracker's memory is bounded too (hashes far below the level are forgotten).
    assert len(pub._hashes) <= 5 * MAX_FPS
    assert pub.level >= 7  # 400k blocks in 1,536 fingerprints: one block in 2^level kept


def test_the_level_falls_again_when_the_cache_shrinks() -> None:
    rng = random.Random(2)
    hashes = [rng.getrandbits(64) for _ in range(20_000)]
    pub = SummaryPublisher("m", kv_blocks=20_000)
    pub.stored(hashes)
    high = pub.level
    pub.removed(hashes[:19_000])
    assert pub.level < high and 0 < pub.size <= MAX_FPS
    assert _decode(pub).fps == pub.snapshot().fps


def test_a_publish_rewrites_few_slots_under_lru_churn() -> None:
    """New blocks fill the newest slot; LRU evicts the oldest, which sit in the
    oldest slots: a typical publish rewrites about two slots, not all."""
    rng = random.Random(3)
    live = [rng.getrandbits(64) for _ in range(16_384)]
    pub = SummaryPublisher("m", kv_blocks=16_384)
    pub.stored(live)
    first = pub.changes()
    assert len(first) > 20
    touched = []
    for _ in range(200):
        new = [rng.getrandbits(64) for _ in range(80)]  # a request's worth of blocks
        old, live = live[:80], live[80:] + new
        pub.stored(new)
        pub.removed(old)
        touched.append(len(pub.changes()))
    assert sum(touched) / len(touched) <= 3
    assert max(touched) <= 6


def test_an_empty_cache_is_published_as_empty_slots() -> None:
    pub = SummaryPublisher("m", kv_blocks=1024)
    chain = _chain(1, 40)
    pub.stored(chain)
    pub.changes()
    pub.reset([])  # a new engine: nothing cached
    changed = pub.changes()
    assert changed and all(v == b"" for v in changed.values())
    req = PrefixRequest("m", 40 * 16, {SCHEME: chain})
    assert req.matched_tokens(SCHEME, _decode(pub)) == 0


@settings(max_examples=60, deadline=None)
@given(
    held=st.integers(0, 120),
    extra=st.integers(1, 60),
    level=st.integers(0, 4),
    seed=st.integers(0, 10_000),
)
def test_the_match_read_from_a_summary_is_within_its_granularity(
    held: int, extra: int, level: int, seed: int
) -> None:
    """A replica holding the first `held` blocks of the chain: the router reads
    a match that is never longer than that, and short of it by less than one
    sampling step (2^level blocks) when a kept hash lies in the held part."""
    chain = _chain(seed, held + extra)
    fps = frozenset((h >> 32) for h in chain[:held] if h & ((1 << level) - 1) == 0)
    req = PrefixRequest("m", (held + extra) * 16, {SCHEME: chain})
    got = req.matched_tokens(SCHEME, Summary(level, fps))
    assert got <= held * 16
    kept = [i for i in range(held) if chain[i] & ((1 << level) - 1) == 0]
    assert got == ((kept[-1] + 1) * 16 if kept else 0)


def test_shared_prefixes_match_to_their_end_and_never_the_last_token() -> None:
    system = [random.Random(9).randrange(1000) for _ in range(64 * 16)]
    pub = SummaryPublisher("m", kv_blocks=1024)
    a = _chain(1, 30, system)
    pub.stored(a)
    summary = _decode(pub)
    b = _chain(2, 30, system)  # another session after the same system prompt
    assert PrefixRequest("m", 94 * 16, {SCHEME: b}).matched_tokens(SCHEME, summary) == 64 * 16
    # The whole prompt cached: the engine recomputes the last token anyway.
    assert PrefixRequest("m", 94 * 16, {SCHEME: a}).matched_tokens(SCHEME, summary) == 94 * 16 - 1
    # Another scheme (model, block size) matches nothing.
    other = (16, "blake2b-64-chain-v1", "other")
    assert PrefixRequest("m", 94 * 16, {other: a}).matched_tokens(SCHEME, summary) == 0


def test_bad_peer_slots_read_as_empty() -> None:
    assert decode_slot(b"\x00\x01\x02") == frozenset()  # not a multiple of 4
    assert decode_slot("text") == frozenset()
    assert decode_slot(b"\x00" * 4 * (SLOT_FPS + 1)) == frozenset()  # over the slot's bound
    assert decode_slot(encode_slot([7, 3])) == {3, 7}
    cache = SummaryCache()
    assert cache.summary("n", {"tag": 5, "level": 0}, {}.get) is None
    assert cache.summary("n", {"tag": "t", "level": 99}, {}.get) is None
    assert cache.summary("n", {"tag": "t", "level": 2, "blocks": "x"}, {}.get) == Summary(
        2, frozenset(), 0, True
    )


def test_the_cache_decodes_a_slot_once_per_change() -> None:
    pub = SummaryPublisher("m", kv_blocks=1024)
    pub.stored(_chain(1, 100))
    cache = SummaryCache()
    rec = _record(pub)
    header = rec["models"]["m"]["prefix"]  # type: ignore[index]
    first = cache.summary("n1", header, rec.get)
    again = cache.summary("n1", header, rec.get)
    assert first is not None and again is not None and again.fps is first.fps
    pub.stored(_chain(2, 20))
    rec = _record(pub)
    later = cache.summary("n1", rec["models"]["m"]["prefix"], rec.get)  # type: ignore[index]
    assert later is not None and later.fps > first.fps
    cache.forget(["n2"])
    assert not cache._summaries and not cache._slots
    assert slot_key(pub.tag, 3) in rec


def test_served_prefixes_remember_at_most_their_capacity() -> None:
    pub = SummaryPublisher("m", kv_blocks=100, exact=False)
    served = ServedPrefixes(pub, capacity=100)
    chains = [_chain(i, 30) for i in range(10)]
    for c in chains:
        served.served(c)
    assert len(served._lru) == 100
    assert not pub.header()["exact"]
    summary = _decode(pub)
    recent = PrefixRequest("m", 30 * 16, {SCHEME: chains[-1]})
    oldest = PrefixRequest("m", 30 * 16, {SCHEME: chains[0]})
    assert recent.matched_tokens(SCHEME, summary) == 30 * 16 - 1
    assert oldest.matched_tokens(SCHEME, summary) == 0
