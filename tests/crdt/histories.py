"""Random operation histories over a few replicas, for every CRDT type.

A history is a list of steps: ("op", replica, args) runs a delta mutator on
that replica and records the delta; ("sync", src, dst) joins one replica's
full state into another, so later operations observe remote state (which is
what makes add-wins and LWW interesting).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from crdt import CRDT, GCounter, LWWMap, LWWRegister, ORMap, ORSet, PNCounter

REPLICAS = ("a", "b", "c")
ELEMENTS = st.one_of(st.sampled_from(["x", "y", "z"]), st.integers(0, 3), st.just(b"\x00"))
KEYS = st.sampled_from(["k1", "k2", "k3"])
# Small timestamps make ties (same ts, different replicas) common.
TS = st.integers(1, 12)
VALUES = st.one_of(
    st.none(), st.integers(-3, 3), st.text(max_size=3), st.lists(st.booleans(), max_size=2)
)


@dataclass(frozen=True)
class Kind:
    name: str
    make: Callable[[], CRDT]
    op: st.SearchStrategy[tuple[Any, ...]]
    apply: Callable[[CRDT, str, tuple[Any, ...]], CRDT]


def _apply_counter(c: Any, r: str, args: tuple[Any, ...]) -> CRDT:
    verb, n = args
    return c.increment(r, n) if verb == "inc" else c.decrement(r, n)


def _apply_orset(s: Any, r: str, args: tuple[Any, ...]) -> CRDT:
    verb, e = args
    return s.add(r, e) if verb == "add" else s.remove(r, e)


def _apply_lwwmap(m: Any, r: str, args: tuple[Any, ...]) -> CRDT:
    verb, k, v, ts = args
    return m.set(r, k, v, ts) if verb == "set" else m.remove(r, k, ts)


def _apply_ormap(m: Any, r: str, args: tuple[Any, ...]) -> CRDT:
    verb, k, v, ts = args
    if verb == "remove":
        return m.remove(r, k)
    if verb == "count":
        return m.update(r, k, lambda c: c.increment(r, v))
    return m.update(r, k, lambda c: c.set(r, v, ts))


KINDS: dict[str, Kind] = {
    "GCounter": Kind(
        "GCounter", GCounter, st.tuples(st.just("inc"), st.integers(0, 5)), _apply_counter
    ),
    "PNCounter": Kind(
        "PNCounter",
        PNCounter,
        st.tuples(st.sampled_from(["inc", "dec"]), st.integers(0, 5)),
        _apply_counter,
    ),
    "LWWRegister": Kind(
        "LWWRegister",
        LWWRegister,
        st.tuples(VALUES, TS),
        lambda reg, r, a: reg.set(r, a[0], a[1]),  # type: ignore[attr-defined]
    ),
    "ORSet": Kind(
        "ORSet", ORSet, st.tuples(st.sampled_from(["add", "remove"]), ELEMENTS), _apply_orset
    ),
    "LWWMap": Kind(
        "LWWMap",
        LWWMap,
        st.tuples(st.sampled_from(["set", "remove"]), KEYS, VALUES, TS),
        _apply_lwwmap,
    ),
    "ORMap[LWWRegister]": Kind(
        "ORMap[LWWRegister]",
        lambda: ORMap(LWWRegister),
        st.tuples(st.sampled_from(["set", "remove"]), KEYS, VALUES, TS),
        _apply_ormap,
    ),
    "ORMap[GCounter]": Kind(
        "ORMap[GCounter]",
        lambda: ORMap(GCounter),
        st.tuples(st.sampled_from(["count", "remove"]), KEYS, st.integers(0, 4), TS),
        _apply_ormap,
    ),
}


def history(kind: Kind, max_size: int = 30) -> st.SearchStrategy[list[tuple[Any, ...]]]:
    step = st.one_of(
        st.tuples(st.just("op"), st.sampled_from(REPLICAS), kind.op),
        st.tuples(st.just("sync"), st.sampled_from(REPLICAS), st.sampled_from(REPLICAS)),
    )
    return st.lists(step, max_size=max_size)


@dataclass
class Run:
    replicas: dict[str, CRDT]
    deltas: list[CRDT] = field(default_factory=list)


def run(kind: Kind, steps: list[tuple[Any, ...]]) -> Run:
    out = Run({r: kind.make() for r in REPLICAS})
    for step in steps:
        if step[0] == "op":
            _, r, args = step
            out.deltas.append(kind.apply(out.replicas[r], r, args))
        else:
            _, src, dst = step
            out.replicas[dst].merge(out.replicas[src])
    return out


def join_all(kind: Kind, states: list[CRDT]) -> CRDT:
    acc = kind.make()
    for s in states:
        acc.merge(s)
    return acc
