"""The live index's sampler against the standard library's `Random.sample`:
the same picks and the same draws, so the trace hashes stay as they were;
and its ring, sorted or copied from the last index that sorted the same names."""

from __future__ import annotations

import random

import pytest

from gossip.live import LiveIndex, ring_key, sample


@pytest.mark.parametrize("seed", range(20))
def test_sample_matches_the_stdlib(seed: int) -> None:
    names = [f"node{i}" for i in range(300)]
    for n in (1, 2, 5, 21, 22, 60, 84, 85, 86, 300):
        for k in range(0, min(n, 12) + 1):
            ours, theirs = random.Random(f"{seed}/{n}/{k}"), random.Random(f"{seed}/{n}/{k}")
            assert sample(ours, names[:n], k) == theirs.sample(names[:n], k)
            assert ours.getstate() == theirs.getstate()  # the same draws, no more


def test_sample_rejects_what_the_stdlib_rejects() -> None:
    with pytest.raises(ValueError):
        sample(random.Random(1), ["a", "b"], 3)
    with pytest.raises(ValueError):
        sample(random.Random(1), ["a", "b"], -1)


def test_index_sample_excludes_and_is_seeded() -> None:
    index = LiveIndex()
    for i in range(50):
        index.add(f"n{i}")
    a = index.sample(random.Random(7), 3, exclude="n0")
    assert a == index.sample(random.Random(7), 3, exclude="n0")
    assert len(set(a)) == 3 and "n0" not in a


def _ring_by_sorting(names: list[str]) -> list[str]:
    return [k[1] for k in sorted(ring_key(n) for n in names)]


def test_neighbours_are_those_of_the_sorted_ring_whichever_index_sorted_first() -> None:
    """Indices holding the same names share the last sorted ring (copied, not
    re-sorted); one holding other names, or as many different ones, sorts its own."""
    rng = random.Random(5)
    names = [f"node{i}" for i in range(50)]
    others = [f"other{i}" for i in range(50)]  # as many names, none shared
    fewer = names[:49]
    for population in (names, names, others, fewer, names, others):
        order = population[:]
        rng.shuffle(order)
        index = LiveIndex()
        for n in order:
            index.add(n)
        ring = _ring_by_sorting(population)
        for i, n in enumerate(ring):
            assert index.neighbours(n) == (ring[i - 1], ring[(i + 1) % len(ring)])
        # and it stays its own: changes to it reach no other index
        index.discard(ring[0])
        index.add("late")
        ring = _ring_by_sorting([*ring[1:], "late"])
        for i, n in enumerate(ring):
            assert index.neighbours(n) == (ring[i - 1], ring[(i + 1) % len(ring)])
