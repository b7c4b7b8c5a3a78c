"""gossip.live.same_sample draws exactly what `random.Random.sample` draws:
the same picks, and the generator left in the same state (the simulator's
trace hashes rest on it)."""

from __future__ import annotations

import random

import pytest

from gossip.live import same_sample


def test_same_picks_and_same_draws_as_the_standard_library() -> None:
    cases = 0
    for n in [*range(0, 30), 84, 85, 86, 100, 1000]:
        population = [f"node{i}" for i in range(n)]
        for k in sorted({0, 1, 2, 3, 5, 6, 7, 11, 22, n // 2, n - 1, n}):
            if not 0 <= k <= n:
                continue
            for seed in range(5):
                mine, theirs = random.Random(seed), random.Random(seed)
                assert same_sample(mine, population, k) == theirs.sample(population, k)
                assert mine.getstate() == theirs.getstate()
                cases += 1
    assert cases > 500  # both of the stdlib's branches (list pool, set), many times


def test_a_sample_too_large_fails_as_the_standard_library_does() -> None:
    with pytest.raises(ValueError):
        same_sample(random.Random(1), ["a", "b"], 3)


def test_a_subclass_of_random_keeps_its_own_sample() -> None:
    class Fixed(random.Random):
        def sample(self, population, k, *, counts=None):  # type: ignore[no-untyped-def]
            return list(population[:k])

    assert same_sample(Fixed(1), ["c", "b", "a"], 2) == ["c", "b"]
