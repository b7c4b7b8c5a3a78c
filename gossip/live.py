"""The live-member index: O(1) membership updates and random sampling, and
O(log N) ring neighbours, so no per-message work grows with cluster size."""

from __future__ import annotations

import bisect
import hashlib
import math
import random

#: name -> ring position, memoised for the process (a pure function; every
#: simulated node places the same names). Bounded: cleared when full.
_positions: dict[str, int] = {}


def ring_position(name: str) -> int:
    pos = _positions.get(name)
    if pos is None:
        if len(_positions) >= 1 << 17:
            _positions.clear()
        pos = _positions[name] = int.from_bytes(
            hashlib.blake2b(name.encode(), digest_size=8).digest(), "big"
        )
    return pos


#: k -> the population size up to which random.sample draws from a list
#: rather than a set (its `setsize`), memoised: one log and one power per k.
_set_sizes: dict[int, int] = {}


def _set_size(k: int) -> int:
    """Whether an n-long list or a k-long set is smaller, as the stdlib decides."""
    size = _set_sizes.get(k)
    if size is None:
        size = 21
        if k > 5:
            size += 4 ** math.ceil(math.log(k * 3, 4))
        if len(_set_sizes) < 1024:
            _set_sizes[k] = size
    return size


def same_sample(rng: random.Random, population: list[str], k: int) -> list[str]:
    """`rng.sample(population, k)`: the same picks, the same draws from `rng`,
    compiled. The standard library's sample is interpreted (2.4 us for 6 of
    100, every push); its draws decide who hears what, and so the simulator's
    trace hashes, so this follows its algorithm step by step (CPython 3.11,
    Lib/random.py: `sample` over `_randbelow_with_getrandbits`).
    tests/gossip/test_live.py checks it against `rng.sample` draw for draw.
    A subclass of Random may draw differently: it gets its own `sample`."""
    n = len(population)
    if type(rng) is not random.Random or not 0 <= k <= n:
        return rng.sample(population, k)
    bits = n.bit_length()
    draw = rng.getrandbits  # looked up once, not per draw
    result: list[str] = []
    if n <= _set_size(k):
        pool = list(population)
        for i in range(k):
            m = n - i
            mbits = m.bit_length()
            j = draw(mbits)
            while j >= m:
                j = draw(mbits)
            result.append(pool[j])
            pool[j] = pool[m - 1]
    else:
        selected: set[int] = set()
        for _ in range(k):
            j = draw(bits)
            while j >= n or j in selected:
                j = draw(bits)
            selected.add(j)
            result.append(population[j])
    return result


class LiveIndex:
    __slots__ = ("_keys", "_names", "_neighbours", "_pos", "_ring", "_sorted")

    def __init__(self) -> None:
        self._names: list[str] = []  # for sampling; order is deterministic
        self._pos: dict[str, int] = {}
        self._ring: list[tuple[int, str]] = []  # sorted by (ring position, name)
        self._keys: dict[str, tuple[int, str]] = {}
        # Additions are appended and the ring sorted when next read: learning
        # N members at once (a join, a warm start) is then one sort, not N
        # insertions into an N-long list.
        self._sorted = True
        # The last answer of `neighbours` (asked on every tick), until a change.
        self._neighbours: tuple[str, str | None, str | None] | None = None

    def _ring_sorted(self) -> list[tuple[int, str]]:
        if not self._sorted:
            self._ring.sort()
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
        key = self._keys[name] = (ring_position(name), name)
        self._ring.append(key)
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
        key = self._keys.pop(name)
        self._neighbours = None
        ring = self._ring_sorted()
        del ring[bisect.bisect_left(ring, key)]

    def sample(self, rng: random.Random, k: int, exclude: str) -> list[str]:
        """Up to k distinct names other than `exclude`, drawn from `rng`."""
        n = len(self._names) - (1 if exclude in self._pos else 0)
        if n <= 0:
            return []
        if n <= k:
            return [x for x in self._names if x != exclude]
        picks = same_sample(rng, self._names, min(k + 1, len(self._names)))
        return [x for x in picks if x != exclude][:k]

    def neighbours(self, name: str) -> tuple[str | None, str | None]:
        """(predecessor, successor) of `name` on the ring, if it is live and not alone."""
        memo = self._neighbours
        if memo is not None and memo[0] == name:
            return memo[1], memo[2]
        if name not in self._pos or len(self._ring) < 2:
            return None, None
        ring = self._ring_sorted()
        j = bisect.bisect_left(ring, self._keys[name])
        pred = ring[j - 1][1]
        succ = ring[(j + 1) % len(ring)][1]
        self._neighbours = (name, pred, succ)
        return pred, succ
