"""Prefix hashes and the block pool: chains, refcounts, LRU eviction, the event feed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference.llm.block_pool import REMOVED, STORED, BlockPool
from inference.llm.prefix import block_hashes, extend_block_hashes

tokens = st.lists(st.integers(0, 2**32 - 1), max_size=80)


@given(tokens, tokens)
def test_equal_hashes_mean_equal_prefixes(a: list[int], b: list[int]) -> None:
    ha, hb = block_hashes(a, 4), block_hashes(b, 4)
    for i, (x, y) in enumerate(zip(ha, hb, strict=False)):
        assert (x == y) == (a[: 4 * (i + 1)] == b[: 4 * (i + 1)])
    assert len(ha) == len(a) // 4


@given(tokens, st.integers(1, 80))
def test_incremental_equals_batch(ids: list[int], cut: int) -> None:
    hashes: list[int] = []
    extend_block_hashes(hashes, ids[:cut], 4, "s")
    extend_block_hashes(hashes, ids, 4, "s")
    assert hashes == block_hashes(ids, 4, "s")


def test_salt_separates_models() -> None:
    ids = list(range(32))
    assert block_hashes(ids, salt="a") != block_hashes(ids, salt="b")
    assert all(0 <= h < 2**64 for h in block_hashes(ids))


def test_hashes_are_the_same_in_another_process() -> None:
    # A router in another process (other PYTHONHASHSEED, no torch) must agree.
    code = "from inference.llm.prefix import block_hashes; print(block_hashes(range(64), salt='m'))"
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout
    assert out.strip() == str(block_hashes(list(range(64)), salt="m"))
    # ...and importing the package (the hash function, the clients) does not import torch.
    code = "import sys, inference.llm; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


def test_refcounts_and_sharing() -> None:
    pool = BlockPool(4)
    a = pool.allocate(2)
    assert a is not None and pool.num_free == 2
    assert pool.cache(a[0], 111)
    block = pool.lookup(111)
    assert block == a[0]
    pool.acquire(block)  # a second sequence shares it
    assert pool.refcount(block) == 2
    pool.free(a[::-1])
    assert pool.refcount(block) == 1 and pool.num_free == 3  # still held by the sharer
    pool.free([block])
    assert pool.num_free == 4 and pool.lookup(111) == block  # free but still cached
    with pytest.raises(ValueError):
        pool.free([block])


def test_plain_blocks_are_reused_before_cached_ones_are_evicted() -> None:
    pool = BlockPool(3)
    blocks = pool.allocate(3)
    assert blocks is not None and pool.allocate(1) is None
    pool.cache(blocks[0], 1)
    pool.free(blocks)
    again = pool.allocate(2)
    assert again is not None and blocks[0] not in again
    assert pool.lookup(1) == blocks[0] and pool.evictions == 0


def test_lru_eviction_order() -> None:
    pool = BlockPool(3)
    blocks = pool.allocate(3)
    assert blocks is not None
    for h, b in zip((10, 20, 30), blocks, strict=True):
        pool.cache(b, h)
    pool.free([blocks[1]])  # freed first: least recently used
    pool.free([blocks[0]])
    pool.free([blocks[2]])
    pool.acquire(pool.lookup(20))  # a hit takes it out of the LRU...
    pool.free([pool.lookup(20)])  # ...and freeing makes it the most recent
    got = pool.allocate(1)
    assert got == [blocks[0]] and pool.lookup(10) is None
    assert pool.lookup(30) is not None and pool.lookup(20) is not None


def test_duplicate_hash_keeps_the_first_block() -> None:
    pool = BlockPool(2)
    a, b = pool.allocate(2) or []
    assert pool.cache(a, 7) and not pool.cache(b, 7)
    assert pool.lookup(7) == a


def test_event_feed_and_overflow() -> None:
    pool = BlockPool(4, max_events=3)
    blocks = pool.allocate(4)
    assert blocks is not None
    pool.cache(blocks[0], 1)
    pool.cache(blocks[1], 2)
    events, complete = pool.events_since(0)
    assert complete and [(e.kind, e.block_hash) for e in events] == [(STORED, 1), (STORED, 2)]
    cursor = pool.event_cursor
    pool.free(blocks)
    pool.allocate(4)  # evicts both cached blocks
    events, complete = pool.events_since(cursor)
    assert complete and sorted(e.block_hash for e in events if e.kind == REMOVED) == [1, 2]
    assert sorted(pool.cached_hashes()) == []
    events, complete = pool.events_since(0)  # 4 events, the log holds 3
    assert not complete and len(events) == 3
