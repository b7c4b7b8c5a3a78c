"""KV events over ZeroMQ into the prefix state: order, gaps, replay, restarts, garbage."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio

from inference.llm.prefix import block_hashes
from inference.remote.kv_subscriber import KVEventSubscriber, SequenceTracker
from inference.remote.prefix_state import RemotePrefixState
from tests.fakes.fake_kv import FakeKVPublisher, cleared, removed, stored

BS = 4
TOKENS = list(range(1, 25))  # six blocks of four
HASHES = block_hashes(TOKENS, BS, salt="m")


def _block(i: int, encoding: str = "map") -> object:
    """The engine storing block i of TOKENS (engine hash 1000+i)."""
    parent = None if i == 0 else 1000 + i - 1
    return stored([1000 + i], parent, TOKENS[i * BS:(i + 1) * BS], BS, encoding=encoding)


@asynccontextmanager
async def subscribed(
    publisher: FakeKVPublisher, replay: bool = True, replay_timeout: float = 1.0
) -> AsyncIterator[tuple[RemotePrefixState, KVEventSubscriber]]:
    state = RemotePrefixState(BS, salt="m")
    sub = KVEventSubscriber(state, publisher.endpoint,
                            publisher.replay_endpoint if replay else "", "kv-events",
                            replay_timeout=replay_timeout)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sub.run)
        with trio.fail_after(5):
            await sub.connected.wait()
        await trio.sleep(0.2)  # PUB/SUB: the subscription reaches the publisher
        yield state, sub
        nursery.cancel_scope.cancel()


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


@pytest.fixture
def publisher() -> object:
    pub = FakeKVPublisher()
    yield pub
    pub.close()


def test_sequence_tracker() -> None:
    t = SequenceTracker()
    assert t.classify(0) == "apply" and t.classify(3) == "unknown"
    t.applied(0)
    assert [t.classify(s) for s in (1, 0, 5)] == ["apply", "restart", "gap"]
    t.applied(5)
    assert t.classify(2) == "duplicate"


async def test_stored_removed_cleared(publisher: FakeKVPublisher) -> None:
    async with subscribed(publisher) as (state, sub):
        await until(lambda: state.exact)  # empty buffer at start: the engine holds nothing
        publisher.publish([_block(0), _block(1)])
        publisher.publish([_block(2, "array")])  # an older engine's encoding
        await until(lambda: len(state) == 3)
        assert sorted(state.cached_block_hashes()) == sorted(HASHES[:3])
        publisher.publish([removed([1002])])
        await until(lambda: len(state) == 2)
        assert HASHES[2] not in state and state.exact
        publisher.publish([cleared()])
        await until(lambda: sub.stats.batches == 4)
        assert len(state) == 0 and state.exact


async def test_a_gap_is_filled_from_the_replay_socket(publisher: FakeKVPublisher) -> None:
    async with subscribed(publisher) as (state, sub):
        publisher.publish([_block(0)])
        publisher.publish([_block(1)], skip_live=True)  # lost on the way, still buffered
        publisher.publish([_block(2)], skip_live=True)
        publisher.publish([_block(3)])
        await until(lambda: len(state) == 4)
        assert sorted(state.cached_block_hashes()) == sorted(HASHES[:4])
        assert state.exact and sub.stats.gaps == 1 and sub.stats.unfilled_gaps == 0
        assert sub.stats.replayed_batches == 2


async def test_older_replay_framing(publisher: FakeKVPublisher) -> None:
    legacy = FakeKVPublisher(legacy_replay=True)  # (seq, payload), as before vLLM 0.32
    try:
        async with subscribed(legacy) as (state, _sub):
            legacy.publish([_block(0)])
            legacy.publish([_block(1)], skip_live=True)
            legacy.publish([_block(2)])
            await until(lambda: len(state) == 3)
            assert state.exact
    finally:
        legacy.close()


async def test_an_unfillable_gap_resets_to_inexact(publisher: FakeKVPublisher) -> None:
    async with subscribed(publisher) as (state, sub):
        publisher.publish([_block(0)])
        await until(lambda: len(state) == 1)
        cursor = state.cursor
        publisher.publish([removed([1000])], forget=True)  # gone for good
        publisher.publish([_block(1)])  # its parent (block 0) is still known
        await until(lambda: sub.stats.unfilled_gaps == 1)
        await until(lambda: sub.stats.batches == 2)
        assert not state.exact and "1..1" in state.why_inexact
        # Emptied rather than trusted: block 0 might be gone (it was), block 1's
        # parent is now unknown, so nothing is claimed.
        assert len(state) == 0
        assert not state.kv_events_since(cursor).complete  # consumers resync


async def test_joining_late_without_replay_is_inexact(publisher: FakeKVPublisher) -> None:
    publisher.publish([_block(0)])  # before anyone listened
    publisher.flush()
    async with subscribed(publisher, replay=False) as (state, _sub):
        publisher.publish([_block(1)])  # parent unknown to us
        publisher.publish([stored([2000], None, TOKENS[:BS], BS)])  # a new first block
        await until(lambda: len(state) == 1)
        assert not state.exact and "no replay endpoint" in state.why_inexact


async def test_joining_late_with_replay_catches_up(publisher: FakeKVPublisher) -> None:
    for i in range(3):
        publisher.publish([_block(i)])
    publisher.flush()
    async with subscribed(publisher) as (state, sub):
        await until(lambda: len(state) == 3)
        assert state.exact and sub.stats.replays >= 1


async def test_replay_buffer_moved_on(publisher: FakeKVPublisher) -> None:
    small = FakeKVPublisher(buffer_steps=2)
    try:
        for i in range(4):  # seq 0 and 1 fall out of the buffer
            small.publish([_block(i)])
        small.flush()
        async with subscribed(small) as (state, _sub):
            await until(lambda: not state.exact and "gone from the replay" in state.why_inexact)
            assert len(state) == 0  # blocks 2 and 3 have parents we never saw
    finally:
        small.close()


async def test_a_restarted_engine_starts_over(publisher: FakeKVPublisher) -> None:
    async with subscribed(publisher) as (state, sub):
        publisher.publish([_block(0)])
        publisher.publish([_block(1)])
        await until(lambda: len(state) == 2)
        publisher.restart()
        publisher.publish([stored([5000], None, TOKENS[:BS], BS)])  # seq 0 again
        await until(lambda: sub.stats.restarts == 1)
        await until(lambda: len(state) == 1)
        assert state.exact and state.cached_block_hashes() == [HASHES[0]]


async def test_engine_down_empties_the_state_until_it_is_back(
    publisher: FakeKVPublisher,
) -> None:
    async with subscribed(publisher) as (state, sub):
        publisher.publish([_block(0)])
        await until(lambda: len(state) == 1)
        sub.engine_down("the engine is not ready: connection refused")
        assert len(state) == 0 and not state.exact
        await trio.sleep(0.15)  # the thread forgets its history
        publisher.publish([_block(1)])  # the same engine was only hung: replay from 0
        await until(lambda: len(state) == 2 and state.exact)


async def test_garbage_never_stops_the_subscriber(publisher: FakeKVPublisher) -> None:
    async with subscribed(publisher) as (state, sub):
        publisher.publish([_block(0)])
        await until(lambda: len(state) == 1)
        publisher.send_raw([b"kv-events", b"short"])  # a bad seq frame
        publisher.send_raw([b"kv-events"])  # too few frames
        publisher.publish_payload(b"\xc1 not msgpack")  # a payload that does not decode
        await until(lambda: sub.stats.malformed >= 3)
        assert not state.exact and len(state) == 0  # its events are unknown: reset
        publisher.publish([stored([3000], None, TOKENS[:BS], BS)])
        await until(lambda: len(state) == 1)  # and it goes on


async def test_engine_up_catches_up_an_idle_engine(publisher: FakeKVPublisher) -> None:
    """An engine that was not up at subscribe time and then publishes nothing:
    engine_up() asks its (empty) replay buffer, which proves an empty cache."""
    state = RemotePrefixState(BS, salt="m")
    dead = FakeKVPublisher()
    endpoint, replay = dead.endpoint, dead.replay_endpoint
    dead.close()  # nobody answers the first catch-up
    sub = KVEventSubscriber(state, endpoint, replay, "kv-events", replay_timeout=0.2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sub.run)
        await until(lambda: sub.stats.replays == 1)
        await trio.sleep(0.3)  # the first catch-up timed out
        assert not state.exact
        port = int(replay.rsplit(":", 1)[1])
        back = FakeKVPublisher(port=int(endpoint.rsplit(":", 1)[1]), replay_port=port)
        try:
            sub.engine_up()
            await until(lambda: state.exact)
            assert sub.stats.replays == 2
        finally:
            nursery.cancel_scope.cancel()
            back.close()
