"""RemotePrefixState: vLLM's block events as rumor's own block hashes."""

from __future__ import annotations

import logging

import pytest

from inference.llm.prefix import block_hashes
from inference.remote.kv_wire import decode_event_batch
from inference.remote.prefix_state import RemotePrefixState
from tests.fakes.fake_kv import cleared, encode_batch, removed, stored

BS = 4


def _apply(state: RemotePrefixState, *events: object) -> None:
    state.apply(decode_event_batch(encode_batch(list(events))))


def test_blocks_are_named_as_a_router_names_them() -> None:
    """The state's hashes are block_hashes(prompt, block_size, salt): what any
    router computes from the same token ids, whatever vLLM's own hashes are."""
    tokens = list(range(100, 112))  # three blocks of four
    state = RemotePrefixState(BS, salt="llama")
    _apply(state, stored([b"A" * 32, b"B" * 32], None, tokens[:8], BS))
    _apply(state, stored([b"C" * 32], b"B" * 32, tokens[8:12], BS))  # a child, later
    expected = block_hashes(tokens, BS, salt="llama")
    assert sorted(state.cached_block_hashes()) == sorted(expected)
    assert all(h in state for h in expected)
    assert block_hashes(tokens, BS, salt="other")[0] not in state  # the salt separates models


def test_removed_and_feed() -> None:
    tokens = list(range(8))
    h = block_hashes(tokens, BS, salt="m")
    state = RemotePrefixState(BS, salt="m")
    state.clear()  # as at the engine's first batch
    cursor = state.cursor
    _apply(state, stored([1, 2], None, tokens, BS))
    _apply(state, removed([2]), removed([99]))  # 99: never seen, ignored
    ev = state.kv_events_since(cursor)
    assert ev.complete and ev.stored == tuple(h) and ev.removed == (h[1],)
    assert state.cached_block_hashes() == [h[0]]
    assert state.kv_events_since(ev.cursor) == type(ev)(ev.cursor, (), (), True)


def test_untranslatable_blocks_are_left_out_and_counted() -> None:
    state = RemotePrefixState(BS, salt="m")
    toks = list(range(4))
    _apply(
        state,
        stored([1], None, toks, BS, lora_id=3),
        stored([2], None, toks, BS, extra_keys=[["cache-salt"]]),
        stored([3], None, toks, BS, medium="CPU"),
        stored([4], None, toks, BS, group_idx=1),
        stored([5], 12345, toks, BS),  # parent never seen
        stored([6], None, toks[:3], BS),  # tokens do not fill the block
        stored([7], 1, toks, BS),  # child of a skipped block: also unknown
    )
    assert len(state) == 0
    assert sum(state.skipped.values()) == 7
    assert state.skipped["unknown parent"] == 2


def test_block_size_mismatch_is_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    state = RemotePrefixState(16, salt="m")
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            _apply(state, stored([1], None, list(range(32)), 32))
    assert len(state) == 0 and "block_size=32" in state.mismatch
    assert sum("block_size=32" in r.message for r in caplog.records) == 1


def test_clear_and_reset_invalidate_cursors() -> None:
    state = RemotePrefixState(BS, salt="m")
    state.clear()
    _apply(state, stored([1], None, [1, 2, 3, 4], BS))
    cursor = state.cursor
    _apply(state, cleared())
    assert len(state) == 0 and state.exact
    assert not state.kv_events_since(cursor).complete  # resync from the (empty) snapshot
    fresh = state.kv_events_since(0)
    assert not fresh.complete
    state.reset("a gap that could not be filled")
    assert not state.exact and state.why_inexact == "a gap that could not be filled"
    assert not state.kv_events_since(fresh.cursor).complete
    assert state.kv_events_since(state.cursor).complete


def test_a_full_log_asks_for_a_resync() -> None:
    state = RemotePrefixState(1, salt="m", log_size=4)
    state.clear()
    start = state.cursor
    _apply(state, stored(list(range(1, 11)), None, list(range(10)), 1))
    assert len(state) == 10
    late = state.kv_events_since(start)
    assert not late.complete and len(late.stored) == 4  # only the log's tail
    assert state.kv_events_since(state.cursor - 2).stored == late.stored[-2:]


def test_a_replayed_duplicate_is_held_once() -> None:
    state = RemotePrefixState(BS, salt="m")
    for _ in range(2):
        _apply(state, stored([1], None, [1, 2, 3, 4], BS))
    assert len(state) == 1
    _apply(state, removed([1]))
    assert len(state) == 0
