"""The live index's sampler against the standard library's `Random.sample`:
the same picks and the same draws, so the trace hashes stay as they were."""

from __future__ import annotations

import random

import pytest

from gossip.live import LiveIndex, sample


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
