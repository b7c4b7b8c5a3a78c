"""The live index's sampler against the standard library's `Random.sample`:
the same picks and the same draws, so the trace hashes stay as they were;
and its ring, sorted or copied from the last index that sorted the same names."""

from __future__ import annotations

import random

import pytest

from gossip import live
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


def _index(names: list[str], rng: random.Random) -> LiveIndex:
    order = names[:]
    rng.shuffle(order)
    index = LiveIndex()
    for n in order:
        index.add(n)
    return index


def _assert_ring(index: LiveIndex, names: list[str]) -> None:
    ring = _ring_by_sorting(names)
    for i, n in enumerate(ring):
        assert index.neighbours(n) == (ring[i - 1], ring[(i + 1) % len(ring)])


def test_neighbours_are_those_of_the_sorted_ring_whichever_index_sorted_first() -> None:
    """An index holding the same names as the ring sorted last copies that
    ring (it does not sort, and shares no list with it); one holding other
    names, or as many different ones, or fewer, sorts its own."""
    rng = random.Random(5)
    names = [f"node{i}" for i in range(50)]
    first = _index(names, rng)
    _assert_ring(first, names)
    sorted_last = live._last_sorted[0]
    second = _index(names, rng)  # the same names, added in another order
    _assert_ring(second, names)
    assert live._last_sorted[0] is sorted_last  # copied, not sorted again
    # Each holds its own list: a change to one reaches no other.
    second.discard(_ring_by_sorting(names)[0])
    second.add("late")
    _assert_ring(second, [*_ring_by_sorting(names)[1:], "late"])
    _assert_ring(first, names)
    for population in (
        [f"other{i}" for i in range(50)],  # as many names, none shared
        names[:49],  # fewer
        [*names[:49], "late"],  # as many, one different
        names,
    ):
        _assert_ring(_index(population, rng), population)
