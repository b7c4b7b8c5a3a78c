"""The lattice laws and delta-state equivalence, for every CRDT type."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdt import CRDT, GCounter, ORMap, ORSet, PNCounter, decode, encode

from .histories import KINDS, REPLICAS, Kind, history, join_all, run

KIND_NAMES = sorted(KINDS)


def _state(kind: Kind, steps: list[Any], which: str) -> CRDT:
    return run(kind, steps).replicas[which]


@pytest.mark.parametrize("name", KIND_NAMES)
@given(data=st.data())
def test_merge_is_commutative_associative_idempotent(name: str, data: st.DataObject) -> None:
    kind = KINDS[name]
    # Three states from one shared history, so they overlap and conflict.
    steps = data.draw(history(kind))
    a, b, c = (_state(kind, steps, r) for r in REPLICAS)

    ab = a.copy()
    ab.merge(b)
    ba = b.copy()
    ba.merge(a)
    assert ab == ba, "commutativity"

    ab_c = ab.copy()
    ab_c.merge(c)
    bc = b.copy()
    bc.merge(c)
    a_bc = a.copy()
    a_bc.merge(bc)
    assert ab_c == a_bc, "associativity"

    aa = a.copy()
    aa.merge(a)
    assert aa == a, "idempotence"
    # Joining never loses what either side had (it is an upper bound).
    assert join_all(kind, [ab, a]) == ab and join_all(kind, [ab, b]) == ab


@pytest.mark.parametrize("name", KIND_NAMES)
@given(data=st.data())
def test_deltas_in_any_order_with_duplicates_equal_full_state(
    name: str, data: st.DataObject
) -> None:
    kind = KINDS[name]
    r = run(kind, data.draw(history(kind)))
    full = join_all(kind, list(r.replicas.values()))

    dupes = data.draw(st.lists(st.sampled_from(r.deltas), max_size=10)) if r.deltas else []
    shuffled = data.draw(st.permutations(r.deltas + dupes))
    from_deltas = join_all(kind, shuffled)

    assert from_deltas == full
    assert from_deltas.value == full.value
    # Canonical encoding: equal states encode to equal bytes.
    assert encode(from_deltas) == encode(full)


@pytest.mark.parametrize("name", KIND_NAMES)
@given(data=st.data())
def test_replicas_converge_after_exchanging_state(name: str, data: st.DataObject) -> None:
    kind = KINDS[name]
    r = run(kind, data.draw(history(kind)))
    order = data.draw(st.permutations(REPLICAS))
    # One gossip sweep in a random order, then a second, reaches everyone.
    for _ in range(2):
        for src in order:
            for dst in REPLICAS:
                r.replicas[dst].merge(r.replicas[src])
    states = list(r.replicas.values())
    assert all(s == states[0] for s in states)


@pytest.mark.parametrize("name", KIND_NAMES)
@given(data=st.data())
def test_codec_round_trips(name: str, data: st.DataObject) -> None:
    kind = KINDS[name]
    for state in run(kind, data.draw(history(kind))).replicas.values():
        blob = encode(state)
        back = decode(blob)
        assert type(back) is type(state)
        assert back == state
        assert back.value == state.value
        assert encode(back) == blob
        assert type(state).from_wire(state.to_wire()) == state


@given(ops=st.lists(st.tuples(st.sampled_from(REPLICAS), st.integers(-5, 5)), max_size=40))
def test_pncounter_value_is_increments_minus_decrements(ops: list[tuple[str, int]]) -> None:
    replicas = {r: PNCounter() for r in REPLICAS}
    expected = 0
    for r, n in ops:
        if n >= 0:
            replicas[r].increment(r, n)
        else:
            replicas[r].decrement(r, -n)
        expected += n
    total = PNCounter()
    for c in replicas.values():
        total.merge(c)
    assert total.value == expected


@given(
    element=st.one_of(st.text(max_size=4), st.integers(), st.binary(max_size=4)),
    prior=st.lists(st.sampled_from(["add_a", "add_b", "rm_a", "sync"]), max_size=8),
)
def test_orset_concurrent_add_and_remove_add_wins(element: Any, prior: list[str]) -> None:
    a, b = ORSet(), ORSet()
    for step in prior:
        if step == "add_a":
            a.add("a", element)
        elif step == "add_b":
            b.add("b", element)
        elif step == "rm_a":
            a.remove("a", element)
        else:
            a.merge(b)
            b.merge(a)
    # Concurrently: a removes what it has seen, b adds again.
    a.remove("a", element)
    b.add("b", element)
    a.merge(b)
    b.merge(a)
    assert element in a.value and a == b
    # A remove that has observed the add does remove it.
    a.remove("a", element)
    b.merge(a)
    assert element not in b.value


@given(prior=st.lists(st.integers(0, 5), max_size=5), bump=st.integers(1, 5))
def test_ormap_concurrent_update_and_remove_update_wins(prior: list[int], bump: int) -> None:
    a = ORMap(GCounter)
    for n in prior:
        a.update("a", "k", lambda c, n=n: c.increment("a", n))
    b = a.copy()
    a.remove("a", "k")
    b.update("b", "k", lambda c: c.increment("b", bump))
    a.merge(b)
    b.merge(a)
    assert a == b
    # The key survives, and the concurrent update is kept in full.
    assert a.value["k"] == sum(prior) + bump


def test_ormap_remove_resets_state() -> None:
    m = ORMap(GCounter)
    m.update("a", "k", lambda c: c.increment("a", 5))
    m.remove("a", "k")
    m.update("a", "k", lambda c: c.increment("a", 1))
    assert m.value == {"k": 1}


def test_orset_has_no_growing_tombstones() -> None:
    s = ORSet()
    for i in range(1000):
        s.add("a", f"e{i}")
        s.remove("a", f"e{i}")
    # 2,000 operations leave one version-vector entry and nothing else.
    assert s.value == frozenset()
    assert s.context.vv == {"a": 1000} and not s.context.cloud
    assert len(encode(s)) < 20


def test_merge_rejects_another_type() -> None:
    with pytest.raises(TypeError):
        GCounter().merge(PNCounter())  # type: ignore[arg-type]
