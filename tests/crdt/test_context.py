"""Causal contexts: incremental joins give the canonical context of the union."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from crdt import CausalContext

DOTS = st.sets(st.tuples(st.sampled_from(["a", "b"]), st.integers(1, 24)), max_size=40)


def canonical(dots: set[tuple[str, int]]) -> tuple[dict[str, int], set[tuple[str, int]]]:
    """The vector (longest prefix from 1 per replica) and the cloud (the rest)."""
    vv: dict[str, int] = {}
    for r in sorted({r for r, _ in dots}):
        n = 0
        while (r, n + 1) in dots:
            n += 1
        if n:
            vv[r] = n
    return vv, {(r, c) for r, c in dots if c > vv.get(r, 0)}


def context_of(dots: set[tuple[str, int]], as_vector: bool) -> CausalContext:
    """A context of exactly `dots`, built dot by dot or from its canonical parts."""
    if as_vector:
        vv, cloud = canonical(dots)
        return CausalContext(vv, cloud)
    ctx = CausalContext()
    for r, c in sorted(dots, key=lambda d: (d[1] * 7919) % 31):  # a scrambled order
        ctx.add(r, c)
    return ctx


@given(parts=st.lists(st.tuples(DOTS, st.booleans()), min_size=1, max_size=5))
def test_joins_in_any_grouping_give_the_canonical_union(
    parts: list[tuple[set[tuple[str, int]], bool]],
) -> None:
    union: set[tuple[str, int]] = set().union(*(dots for dots, _ in parts))
    joined = CausalContext()
    for dots, as_vector in parts:
        joined.merge(context_of(dots, as_vector))
    vv, cloud = canonical(union)
    assert joined.vv == vv and joined.cloud == cloud
    assert joined == CausalContext(vv, cloud)
    assert joined.dot_count() == len(union) and set(joined.iter_dots()) == union
    for r in ("a", "b"):
        assert all(joined.contains((r, c)) == ((r, c) in union) for c in range(1, 26))
        assert joined.next_dot(r) == (r, max([c for q, c in union if q == r], default=0) + 1)


@given(dots=DOTS, n=st.integers(0, 30), replica=st.sampled_from(["a", "b"]))
def test_raising_the_vector_drops_the_cloud_it_covers(
    dots: set[tuple[str, int]], n: int, replica: str
) -> None:
    ctx = context_of(dots, as_vector=False)
    ctx.raise_to(replica, n)
    union = dots | {(replica, c) for c in range(1, n + 1)}
    vv, cloud = canonical(union)
    assert ctx.vv == vv and ctx.cloud == cloud
