"""Grow-only and positive-negative counters."""

from __future__ import annotations

from typing import Any, Self

from ._wire import expect_dict, expect_list, expect_replica, expect_uint
from .base import CRDT


class GCounter(CRDT):
    """A grow-only counter: one monotone entry per replica, joined by max."""

    TYPE_TAG = 1
    __slots__ = ("_counts",)

    def __init__(self, counts: dict[str, int] | None = None) -> None:
        self._counts: dict[str, int] = dict(counts) if counts else {}

    def increment(self, replica: str, amount: int = 1) -> GCounter:
        if amount < 0:
            raise ValueError("GCounter can only grow; use PNCounter to decrement")
        n = self._counts.get(replica, 0) + amount
        self._counts[replica] = n
        return GCounter({replica: n})

    def merge(self, other: Self) -> None:
        self._check_same_type(other)
        mine = self._counts
        for r, n in other._counts.items():
            if n > mine.get(r, 0):
                mine[r] = n

    def copy(self) -> Self:
        return type(self)(self._counts)

    def get(self, replica: str) -> int:
        """This replica's own contribution."""
        return self._counts.get(replica, 0)

    @property
    def value(self) -> int:
        return sum(self._counts.values())

    def to_wire(self) -> dict[str, int]:
        return {r: self._counts[r] for r in sorted(self._counts) if self._counts[r]}

    @classmethod
    def _from_wire(cls, obj: Any) -> Self:
        counts = {
            expect_replica(r, "GCounter replica"): expect_uint(n, "GCounter count")
            for r, n in expect_dict(obj, "GCounter").items()
        }
        return cls(counts)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        # A zero entry and a missing one are the same state.
        return {r: n for r, n in self._counts.items() if n} == {
            r: n for r, n in other._counts.items() if n
        }

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"GCounter({self.to_wire()!r})"


class PNCounter(CRDT):
    """A counter that goes both ways: a pair of GCounters (increments, decrements)."""

    TYPE_TAG = 2
    __slots__ = ("_n", "_p")

    def __init__(self, p: GCounter | None = None, n: GCounter | None = None) -> None:
        self._p = p if p is not None else GCounter()
        self._n = n if n is not None else GCounter()

    def increment(self, replica: str, amount: int = 1) -> PNCounter:
        if amount < 0:
            return self.decrement(replica, -amount)
        return PNCounter(self._p.increment(replica, amount), GCounter())

    def decrement(self, replica: str, amount: int = 1) -> PNCounter:
        if amount < 0:
            return self.increment(replica, -amount)
        return PNCounter(GCounter(), self._n.increment(replica, amount))

    def merge(self, other: Self) -> None:
        self._check_same_type(other)
        self._p.merge(other._p)
        self._n.merge(other._n)

    def copy(self) -> Self:
        return type(self)(self._p.copy(), self._n.copy())

    @property
    def value(self) -> int:
        return self._p.value - self._n.value

    def to_wire(self) -> list[dict[str, int]]:
        return [self._p.to_wire(), self._n.to_wire()]

    @classmethod
    def _from_wire(cls, obj: Any) -> Self:
        p, n = expect_list(obj, "PNCounter", 2)
        return cls(GCounter.from_wire(p), GCounter.from_wire(n))

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._p == other._p and self._n == other._n

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PNCounter(p={self._p.to_wire()!r}, n={self._n.to_wire()!r})"
