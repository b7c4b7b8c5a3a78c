"""ClusterState.apply_delta: a copy of a change already held (the common case
for a pushed change, which reaches every node several times) changes nothing
and says "stale", through the short path as through the long one."""

from __future__ import annotations

import random

from gossip.state import ClusterState, NodeRecord
from gossip.wire import KeyUpdate, NodeDelta

A = ("10.0.0.1", 7000)
B = ("10.0.0.2", 7000)


def _snapshot(state: ClusterState, name: str) -> tuple[object, ...]:
    rec = state.records[name]
    entries = {
        k: (e.version, e.value, e.deleted, e.deleted_at, e.size) for k, e in rec.entries.items()
    }
    return (rec.addr, rec.max_version, rec.gc_floor, rec.size, rec.updated_at, entries, state.hash)


def _origin(rng: random.Random, writes: int) -> tuple[NodeRecord, list[NodeDelta]]:
    """A record written `writes` times (sets and deletes), and the delta of each write."""
    rec = NodeRecord("n1", 3, A)
    deltas = []
    for t in range(writes):
        key = f"k{rng.randrange(5)}"
        since = rec.max_version
        if rng.random() < 0.2:
            if not rec.delete_local(key, float(t)):
                continue
        else:
            rec.set_local(key, rng.choice(["v", 7, [1, None], {"x": b"y"}]), float(t))
        deltas.append(rec.delta_since(since))
    return rec, deltas


def test_every_copy_of_a_held_change_is_stale_and_changes_nothing() -> None:
    for seed in range(30):
        rng = random.Random(seed)
        origin, deltas = _origin(rng, 20)
        state = ClusterState()
        for d in deltas:
            outcome, _ = state.apply_delta(d, 100.0)
            assert outcome in ("new", "applied")
        before = _snapshot(state, "n1")
        # Every earlier change again, and the whole record from any version.
        copies = [*deltas, *(origin.delta_since(v) for v in range(origin.max_version + 1))]
        for d in copies:
            assert state.apply_delta(d, 200.0) == ("stale", [])
            assert _snapshot(state, "n1") == before


def test_a_held_change_from_a_new_address_still_moves_the_record() -> None:
    state = ClusterState()
    state.apply_delta(NodeDelta("n1", 3, A, 0, (KeyUpdate("k", 1, "v"),)), 1.0)
    moved = NodeDelta("n1", 3, B, 0, (KeyUpdate("k", 1, "v"),))
    assert state.apply_delta(moved, 2.0) == ("stale", [])
    assert state.records["n1"].addr == B


def test_a_held_change_with_a_higher_gc_floor_still_raises_it() -> None:
    state = ClusterState()
    state.apply_delta(NodeDelta("n1", 3, A, 0, (KeyUpdate("k", 2, "v"),), False, 0), 1.0)
    again = NodeDelta("n1", 3, A, 0, (KeyUpdate("k", 2, "v"),), False, 1)
    assert state.apply_delta(again, 2.0) == ("stale", [])
    assert state.records["n1"].gc_floor == 1


def test_a_held_deletion_keeps_the_record_on_the_tombstone_list() -> None:
    state = ClusterState()
    gone = NodeDelta("n1", 3, A, 0, (KeyUpdate("k", 1, None, True),))
    state.apply_delta(gone, 1.0)
    state.with_tombstones.clear()
    assert state.apply_delta(gone, 2.0) == ("stale", [])
    assert "n1" in state.with_tombstones


def test_the_hash_is_always_that_of_the_records_held() -> None:
    """The O(1) state hash (each record's digest kept on the record) equals
    the XOR over the records held, through new records, new generations that
    replace old ones, removals and own writes, in any order."""
    from gossip.state import _record_digest

    rng = random.Random(11)
    state = ClusterState()
    own = state.add_record("me", 1, A, 0.0)
    for step in range(400):
        name = f"n{rng.randrange(6)}"
        roll = rng.random()
        if roll < 0.45:
            gen = rng.randrange(1, 4)
            ups = tuple(KeyUpdate(f"k{i}", i + 1, i) for i in range(rng.randrange(3)))
            state.apply_delta(NodeDelta(name, gen, B, 0, ups, True), float(step))
        elif roll < 0.6:
            state.remove_record(name, 1, float(step))
            state.tombstones.pop(name, None)  # so the name may come back
        elif roll < 0.7:
            state.drop_record(name)
        elif roll < 0.8:
            own = state.add_record("me", own.generation + 1, A, float(step))
        else:
            own.set_local("x", step, float(step))
            state.touched("me")
        expected = 0
        for rec in state.records.values():
            expected ^= _record_digest(rec.name, rec.generation, rec.max_version)
        assert state.hash == expected, step
