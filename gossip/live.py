"""The live-member index: O(1) membership updates and random sampling, and
O(log N) ring neighbours, so no per-message work grows with cluster size."""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from typing import Any

#: A member's key on the ring: (ring position, name). Typed as a plain tuple,
#: not `tuple[int, str]`, so that compiled code keeps the one shared object
#: (mypyc unboxes a fixed-length tuple and boxes a new copy at each store).
RingKey = tuple[Any, ...]

#: name -> its ring key, memoised for the process: a pure function of the
#: name, and every simulated node holds the same keys, so they share one
#: tuple (about 80 bytes less per member per node). Bounded: cleared when full.
_ring_keys: dict[str, RingKey] = {}


def ring_key(name: str) -> RingKey:
    key = _ring_keys.get(name)
    if key is None:
        if len(_ring_keys) >= 1 << 17:
            _ring_keys.clear()
        pos = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")
        key = _ring_keys[name] = (pos, name)
    return key


#: The ring this process sorted last (a copy). Nodes that know the same
#: members sort the same ring: every simulated node after a warm start, once
#: each, on its first tick. The first sorts; the others find they hold the
#: same names (N set look-ups instead of a sort's N log N tuple comparisons,
#: 0.2 s of a 1,000-node simulation) and copy it.
_last_sorted: list[list[RingKey]] = [[]]


def _below(rng: random.Random, n: int) -> int:
    """A uniform int in [0, n), drawn as `random.Random._randbelow` draws it
    (getrandbits of n's bit length, redrawn until below n)."""
    bits = n.bit_length()
    r = rng.getrandbits(bits)
    while r >= n:
        r = rng.getrandbits(bits)
    return r


def sample(rng: random.Random, population: list[str], k: int) -> list[str]:
    """`rng.sample(population, k)`: the same draws from `rng`, the same picks.

    CPython's `Random.sample` is interpreted (3.11's Lib/random.py) and ran for
    every push and anti-entropy round, 4% of a simulation; written here it is
    compiled with the rest of the core. Its algorithm is followed step for
    step (a partial Fisher-Yates shuffle of a copy when the population is
    small next to a k-set, else rejection of repeated indices), so the picks,
    and every later draw, are the stdlib's: the trace hashes are unchanged,
    and tests/gossip/test_live.py compares the two on many sizes and seeds.
    Only `getrandbits` is called, as the stdlib does for `random.Random` and
    any subclass that does not replace `random` alone.
    """
    n = len(population)
    if not 0 <= k <= n:
        raise ValueError("sample larger than population or is negative")
    setsize = 21  # the stdlib's: a small set's size minus an empty list's
    if k > 5:
        setsize += 4 ** math.ceil(math.log(k * 3, 4))
    result: list[str] = []
    if n <= setsize:
        pool = list(population)
        for i in range(k):
            j = _below(rng, n - i)
            result.append(pool[j])
            pool[j] = pool[n - i - 1]
    else:
        selected: set[int] = set()
        for _ in range(k):
            j = _below(rng, n)
            while j in selected:
                j = _below(rng, n)
            selected.add(j)
            result.append(population[j])
    return result


class LiveIndex:
    __slots__ = ("_names", "_neighbours", "_pos", "_ring", "_sorted")

    def __init__(self) -> None:
        self._names: list[str] = []  # for sampling; order is deterministic
        self._pos: dict[str, int] = {}
        self._ring: list[RingKey] = []  # sorted by (ring position, name)
        # Additions are appended and the ring sorted when next read: learning
        # N members at once (a join, a warm start) is then one sort, not N
        # insertions into an N-long list.
        self._sorted = True
        # The last answer of `neighbours` (asked on every tick), until a change.
        self._neighbours: tuple[str, str | None, str | None] | None = None

    def _ring_sorted(self) -> list[RingKey]:
        if not self._sorted:
            last = _last_sorted[0]
            same = len(last) == len(self._ring)
            if same:
                pos = self._pos
                for key in last:
                    if key[1] not in pos:
                        same = False
                        break
            if same:  # the same N distinct names: the same sorted ring
                self._ring = list(last)
            else:
                self._ring.sort()
                _last_sorted[0] = list(self._ring)
            self._sorted = True
        return self._ring

    def __contains__(self, name: object) -> bool:
        return name in self._pos

    def __len__(self) -> int:
        return len(self._names)

    def add(self, name: str) -> None:
        if name in self._pos:
            return
        self._pos[name] = len(self._names)
        self._names.append(name)
        self._ring.append(ring_key(name))
        self._sorted = False
        self._neighbours = None

    def discard(self, name: str) -> None:
        i = self._pos.pop(name, None)
        if i is None:
            return
        last = self._names.pop()
        if last != name:  # swap-remove
            self._names[i] = last
            self._pos[last] = i
        self._neighbours = None
        ring = self._ring_sorted()
        del ring[bisect.bisect_left(ring, ring_key(name))]

    def sample(self, rng: random.Random, k: int, exclude: str) -> list[str]:
        """Up to k distinct names other than `exclude`, drawn from `rng`."""
        n = len(self._names) - (1 if exclude in self._pos else 0)
        if n <= 0:
            return []
        if n <= k:
            return [x for x in self._names if x != exclude]
        picks = sample(rng, self._names, min(k + 1, len(self._names)))
        return [x for x in picks if x != exclude][:k]

    def neighbours(self, name: str) -> tuple[str | None, str | None]:
        """(predecessor, successor) of `name` on the ring, if it is live and not alone."""
        memo = self._neighbours
        if memo is not None and memo[0] == name:
            return memo[1], memo[2]
        if name not in self._pos or len(self._ring) < 2:
            return None, None
        ring = self._ring_sorted()
        j = bisect.bisect_left(ring, ring_key(name))
        pred: str = ring[j - 1][1]
        succ: str = ring[(j + 1) % len(ring)][1]
        self._neighbours = (name, pred, succ)
        return pred, succ
