"""Replicas that restart, with their state or without it (issue #13, item 2).

A restarted process that numbers its dots from its bare name again reissues
dots its peers already hold: the same dot then names different keys (merge
stops commuting), or its peers have seen that dot removed and drop the new add
silently. A replica id unique per process lifetime (`gossip.status.replica_id`,
name@generation) avoids both, whatever happened to the disk.
"""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from crdt import LWWRegister, ORMap
from gossip.status import replica_id

NODES = 3
KEYS = ("m1", "m2", "m3")

# A step: ("put", node, key, value), ("del", node, key), ("sync", src, dst),
# ("restart", node, keep_state).
STEP = st.one_of(
    st.tuples(st.just("put"), st.integers(0, NODES - 1), st.sampled_from(KEYS), st.integers(0, 9)),
    st.tuples(st.just("del"), st.integers(0, NODES - 1), st.sampled_from(KEYS)),
    st.tuples(st.just("sync"), st.integers(0, NODES - 1), st.integers(0, NODES - 1)),
    st.tuples(st.just("restart"), st.integers(0, NODES - 1), st.booleans()),
)


class Replica:
    def __init__(self, name: str, unique_ids: bool) -> None:
        self.name, self.unique_ids, self.generation = name, unique_ids, 1
        self.state = ORMap(LWWRegister)
        self.clock = 0

    @property
    def rid(self) -> str:
        return replica_id(self.name, self.generation) if self.unique_ids else self.name

    def put(self, key: str, value: object, ts: int) -> None:
        rid = self.rid
        self.state.update(rid, key, lambda r: r.set(rid, value, ts))

    def restart(self, keep_state: bool) -> None:
        self.generation += 1
        if not keep_state:
            self.state = ORMap(LWWRegister)


def _run(steps: list[tuple], unique_ids: bool) -> tuple[list[Replica], str, object]:
    nodes = [Replica(f"n{i}", unique_ids) for i in range(NODES)]
    ts = itertools.count(1)
    for step in steps:
        if step[0] == "put":
            nodes[step[1]].put(step[2], step[3], next(ts))
        elif step[0] == "del":
            nodes[step[1]].state.remove(nodes[step[1]].rid, step[2])
        elif step[0] == "sync":
            nodes[step[2]].state.merge(nodes[step[1]].state.copy())
        else:
            nodes[step[1]].restart(step[2])
    # Finally node 0 restarts without its state and writes a key nobody removes.
    nodes[0].restart(False)
    nodes[0].put("fresh", "new spec", next(ts))
    return nodes, "fresh", "new spec"


@given(st.lists(STEP, max_size=25), st.permutations(range(NODES)))
def test_restarted_replicas_converge_and_keep_their_writes(
    steps: list[tuple], order: list[int]
) -> None:
    nodes, key, value = _run(steps, unique_ids=True)
    # Join every replica's state, in two different orders: merge commutes.
    a, b = ORMap(LWWRegister), ORMap(LWWRegister)
    for i in order:
        a.merge(nodes[i].state.copy())
    for i in reversed(order):
        b.merge(nodes[i].state.copy())
    assert a == b and a.value == b.value
    assert a.value.get(key) == value  # the restarted replica's write survives


def test_bare_names_lose_a_restarted_replicas_write() -> None:
    """Why the id carries the generation: the issue's reproduction, as CRDT
    operations. n0 adds m1; n1 sees it and n0's later remove; n0 restarts
    without state and adds m2, reusing the dot (n0, 1) that n1 has seen removed."""
    steps = [("put", 0, "m1", 1), ("sync", 0, 1), ("del", 0, "m1"), ("sync", 0, 1)]
    for unique, survives in ((False, False), (True, True)):
        nodes, key, value = _run(steps, unique_ids=unique)
        nodes[1].state.merge(nodes[0].state.copy())
        assert (nodes[1].state.value.get(key) == value) is survives, unique
