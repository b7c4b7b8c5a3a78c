"""Joining deltas costs their total size, not k x context (issue #23).

The cost is counted, not timed: a trace hook counts the Python bytecode
instructions executed by the joins. A join that re-compacted the whole
context each time (the old `CausalContext.compact`) makes the count grow
with the square of the number of deltas; a linear join makes it grow in
proportion. Work inside C builtins counts as one instruction, so the joins
keep their C-level set operations to the smaller side (see `DotStore.merge`).
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

from crdt import ORMap, ORSet


def count_instructions(fn: Callable[[], object]) -> int:
    n = 0

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal n
        frame.f_trace_opcodes = True
        if event == "opcode":
            n += 1
        return tracer

    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(None)
    return n


def join_cost(deltas: list[Any]) -> int:
    def join() -> None:
        joined = deltas[0].copy()
        for d in deltas[1:]:
            joined.merge(d)

    return count_instructions(join)


def gappy_remove_deltas(k: int) -> list[ORSet]:
    """The deltas of removing every other element of a 2k-element set."""
    s = ORSet()
    for i in range(2 * k):
        s.add("a", f"e{i}")
    return [s.remove("a", f"e{i}") for i in range(1, 2 * k, 2)]


def test_joining_gappy_remove_deltas_is_linear() -> None:
    small, large = join_cost(gappy_remove_deltas(400)), join_cost(gappy_remove_deltas(1600))
    # 4x the deltas: about 4x the work when linear, 16x when quadratic.
    assert large < 5 * small, (small, large)
    # And a constant number of instructions per delta, not one per dot seen.
    assert large < 400 * 1600, large


def mixed_deltas(k: int, seed: int) -> list[Any]:
    """Adds and removes by three replicas of an ORMap, shuffled: clouds everywhere."""
    rng = random.Random(seed)
    replicas = {r: ORMap() for r in ("a", "b", "c")}
    deltas: list[Any] = []
    for i in range(k):
        r = rng.choice("abc")
        m = replicas[r]
        key = f"k{rng.randrange(k // 2)}"
        if key in m and rng.random() < 0.4:
            deltas.append(m.remove(r, key))
        else:
            deltas.append(m.update(r, key, lambda reg, i=i, r=r: reg.set(r, i, i + 1)))
    rng.shuffle(deltas)
    return deltas


def test_joining_shuffled_mixed_deltas_is_linear() -> None:
    small, large = join_cost(mixed_deltas(300, seed=1)), join_cost(mixed_deltas(1200, seed=1))
    assert large < 5 * small, (small, large)


def test_adds_cost_a_constant_number_of_instructions() -> None:
    s = ORSet()
    for i in range(2000):
        s.add("a", i)
    before = count_instructions(lambda: [s.add("a", -i) for i in range(1, 101)])
    for i in range(2000, 20000):
        s.add("a", i)
    after = count_instructions(lambda: [s.add("a", -i) for i in range(101, 201)])
    # 10x the state, the same work per add (a margin for dict resizes: none are Python).
    assert after < 1.2 * before, (before, after)


class _CountingSet(set[int]):
    """A cloud that records how many counters each removal walks over."""

    walked = 0

    def difference_update(self, *others: Any) -> None:
        for o in others:
            _CountingSet.walked += len(o)
        super().difference_update(*others)


def test_raising_the_vector_past_a_small_cloud_walks_the_cloud_not_the_range() -> None:
    # A dot far ahead (a replica's counter after a long life) sits in the cloud;
    # the vector then jumps to just below it. Walking the range would touch ten
    # million counters; walking the cloud touches one. (The result is the same
    # either way, so only the cost tells the two walks apart.)
    from crdt.context import CausalContext

    far = 10**7
    ctx = CausalContext()
    ctx.add("r", far)
    cloud = _CountingSet(ctx._cloud["r"])
    ctx._cloud["r"] = cloud
    _CountingSet.walked = 0
    ctx.raise_to("r", far - 1)
    assert _CountingSet.walked <= 1, _CountingSet.walked
    assert ctx.vv["r"] == far and "r" not in ctx._cloud  # folded: 1..far all seen
