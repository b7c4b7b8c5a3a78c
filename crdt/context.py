"""Causal contexts: the set of dots a replica has seen, and digests of it for sync.

A context is a version vector plus a *dot cloud* of out-of-order dots, kept per
replica as a set of counters above that replica's vector entry. Joins are
incremental: a join touches only the replicas and counters the other side
brings, and folding the cloud into the vector ("compaction") walks only the
counters that become contiguous, so joining k deltas costs O(total delta
size), not O(k x context) (issue #23; the ORSWOT of riak_dt compacts the same
way, per actor).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator
from itertools import chain, compress, count, repeat
from operator import add, ne, sub
from typing import Any

from ._wire import MAX_UINT, expect_list, expect_replica, expect_uint
from .errors import DecodeError

Dot = tuple[str, int]


class CausalContext:
    """The set of dots seen: a version vector plus a cloud of out-of-order dots.

    Invariant (the canonical form, which `==` and the codec rely on): every
    cloud counter of replica r is above `vv[r] + 1`, no cloud set is empty and
    no vector entry is 0.
    """

    __slots__ = ("_cloud", "vv")

    def __init__(
        self, vv: dict[str, int] | None = None, cloud: Iterable[Dot] | None = None
    ) -> None:
        self.vv: dict[str, int] = {r: n for r, n in vv.items() if n} if vv else {}
        self._cloud: dict[str, set[int]] = {}
        for r, c in cloud or ():
            self.add(r, c)

    # -- queries ----------------------------------------------------------------

    def contains(self, dot: Dot) -> bool:
        r, c = dot
        if c <= self.vv.get(r, 0):
            return True
        s = self._cloud.get(r)
        return s is not None and c in s

    def seen_among(self, dots: Iterable[Dot]) -> list[Dot]:
        """The dots of `dots` seen here (one pass, no call per dot)."""
        vv_get, cloud = self.vv.get, self._cloud
        if not cloud:
            return [d for d in dots if d[1] <= vv_get(d[0], 0)]
        return [
            d
            for d in dots
            if d[1] <= vv_get(d[0], 0) or ((s := cloud.get(d[0])) is not None and d[1] in s)
        ]

    def unseen_among(self, dots: Iterable[Dot]) -> list[Dot]:
        """The dots of `dots` never seen here (one pass, no call per dot)."""
        vv_get, cloud = self.vv.get, self._cloud
        if not cloud:
            return [d for d in dots if d[1] > vv_get(d[0], 0)]
        return [
            d
            for d in dots
            if d[1] > vv_get(d[0], 0) and ((s := cloud.get(d[0])) is None or d[1] not in s)
        ]

    @property
    def cloud(self) -> frozenset[Dot]:
        """The out-of-order dots, as a set of (replica, counter)."""
        return frozenset((r, c) for r, s in self._cloud.items() for c in s)

    def cloud_of(self, replica: str) -> frozenset[int]:
        return frozenset(self._cloud.get(replica, ()))

    def replicas(self) -> set[str]:
        return set(self.vv) | set(self._cloud)

    def next_dot(self, replica: str) -> Dot:
        top = self.vv.get(replica, 0)
        s = self._cloud.get(replica)
        if s:
            top = max(top, max(s))
        return (replica, top + 1)

    def dot_count(self) -> int:
        return sum(self.vv.values()) + sum(map(len, self._cloud.values()))

    def iter_dots(self) -> Iterator[Dot]:
        for r, n in self.vv.items():
            for c in range(1, n + 1):
                yield (r, c)
        for r, s in self._cloud.items():
            for c in s:
                yield (r, c)

    # -- updates ------------------------------------------------------------------

    def add(self, replica: str, counter: int) -> None:
        """Mark one dot seen."""
        top = self.vv.get(replica, 0)
        if counter <= top:
            return
        if counter == top + 1:
            self.vv[replica] = counter
            if replica in self._cloud:
                self._fold(replica)
        else:
            self._cloud.setdefault(replica, set()).add(counter)

    def add_counters(self, replica: str, counters: Iterable[int]) -> None:
        """Mark many dots of one replica seen; costs O(len(counters)) plus the fold."""
        top = self.vv.get(replica, 0)
        fresh = [c for c in counters if c > top]
        if not fresh:
            return
        s = self._cloud.get(replica)
        if s is None:
            s = self._cloud[replica] = set(fresh)
        else:
            s.update(fresh)
        if top + 1 in s:
            self._fold(replica)

    def raise_to(self, replica: str, n: int) -> None:
        """Mark dots 1..n of `replica` seen."""
        old = self.vv.get(replica, 0)
        if n <= old:
            return
        self.vv[replica] = n
        s = self._cloud.get(replica)
        if s is None:
            return
        # Drop the counters the vector now covers, by whichever walk is shorter,
        # so a join never scans a large cloud for a small step (or the reverse).
        if len(s) <= n - old:
            s.difference_update([c for c in s if c <= n])
        else:
            s.difference_update(range(old + 1, n + 1))
        self._fold(replica)

    def _fold(self, replica: str) -> None:
        """Move the counters contiguous with the vector entry into it."""
        s = self._cloud[replica]
        top = self.vv.get(replica, 0)
        while top + 1 in s:
            top += 1
            s.remove(top)
        if top:
            self.vv[replica] = top
        if not s:
            del self._cloud[replica]

    def merge(self, other: CausalContext) -> None:
        for r, n in other.vv.items():
            if n > self.vv.get(r, 0):
                self.raise_to(r, n)
        for r, s in other._cloud.items():
            self.add_counters(r, s)

    def copy(self) -> CausalContext:
        c = CausalContext()
        c.vv = dict(self.vv)
        c._cloud = {r: set(s) for r, s in self._cloud.items()}
        return c

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CausalContext):
            return NotImplemented
        return self.vv == other.vv and self._cloud == other._cloud

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CausalContext(vv={self.vv!r}, cloud={sorted(self.cloud)!r})"

    # -- wire: vv as flat [ridx, n, ...]; cloud as runs (see `runs_wire`) ---------

    def vv_wire(self, ix: dict[str, int]) -> list[int]:
        out: list[int] = []
        for r in sorted(self.vv):
            out += (ix[r], self.vv[r])
        return out

    def cloud_wire(self, ix: dict[str, int]) -> list[list[int]]:
        return runs_wire({r: sorted(s) for r, s in self._cloud.items()}, ix)

    def load_wire(self, vv_obj: object, cloud_obj: object, replicas: list[str], what: str) -> None:
        """Fill an empty context from its wire parts; raises DecodeError."""
        vv_flat = expect_list(vv_obj, f"{what} vv")
        if len(vv_flat) % 2:
            raise DecodeError(f"{what}: odd-length vector")
        for i in range(0, len(vv_flat), 2):
            r = replica_at(replicas, vv_flat[i], what)
            n = expect_uint(vv_flat[i + 1], f"{what} vv counter")
            if r in self.vv or n == 0:
                raise DecodeError(f"{what}: duplicate or zero vv entry")
            self.vv[r] = n
        for r, counters in parse_runs(cloud_obj, replicas, f"{what} cloud").items():
            self.add_counters(r, counters)


#: A run list expands into this many dots at most: two small numbers on the
#: wire must not become gigabytes of counters. `delta_since` sends a full state
#: rather than a cloud this big.
MAX_RUN_DOTS = 1 << 22


def replica_at(replicas: list[str], obj: object, what: str) -> str:
    i = expect_uint(obj, f"{what} replica index")
    if i >= len(replicas):
        raise DecodeError(f"{what}: replica index out of range")
    return replicas[i]


def runs_wire(counters: dict[str, list[int]], ix: dict[str, int]) -> list[list[int]]:
    """Sorted counters per replica as [[ridx, gap, length, gap, length, ...], ...].

    A run starts `gap` after the end of the previous one (from 0 for the first),
    so a gappy cloud costs about two bytes a dot and a contiguous range (what
    `delta_since` sends a replica that is behind) costs two numbers. The run
    boundaries are found with C-level maps, not a Python loop per counter.
    """
    out: list[list[int]] = []
    for r in sorted(counters, key=ix.__getitem__):
        cs = counters[r]
        if not cs:
            continue
        # Index i starts a run when cs[i] is not cs[i - 1] + 1.
        starts = [0, *compress(count(1), map(ne, cs[1:], map(add, cs, repeat(1))))]
        ends = [*starts[1:], len(cs)]
        first = list(map(cs.__getitem__, starts))
        last = [0, *map(cs.__getitem__, map(sub, ends, repeat(1)))]
        gaps = map(sub, first, last)
        lengths = map(sub, ends, starts)
        out.append([ix[r], *chain.from_iterable(zip(gaps, lengths, strict=True))])
    return out


def parse_runs(obj: object, replicas: list[str], what: str) -> dict[str, list[int]]:
    """The inverse of `runs_wire`; strict: runs are ascending, maximal and in range."""
    out: dict[str, list[int]] = {}
    last_ix = -1
    total = 0
    for row in expect_list(obj, what):
        row = expect_list(row, what)
        if len(row) < 3 or len(row) % 2 == 0:
            raise DecodeError(f"{what}: malformed run list")
        i = expect_uint(row[0], f"{what} replica index")
        if i <= last_ix:
            raise DecodeError(f"{what}: replicas out of order")
        last_ix = i
        r = replica_at(replicas, i, what)
        counters: list[int] = []
        end = 0
        for k in range(1, len(row), 2):
            gap = expect_uint(row[k], f"{what} gap")
            length = expect_uint(row[k + 1], f"{what} run length")
            # Runs are maximal: each starts at least 2 past the previous end.
            if gap < (1 if k == 1 else 2) or length == 0:
                raise DecodeError(f"{what}: runs overlap, touch or are empty")
            start = end + gap
            end = start + length - 1
            total += length
            if end > MAX_UINT or total > MAX_RUN_DOTS:
                raise DecodeError(f"{what}: run out of range")
            counters.extend(range(start, end + 1))
        out[r] = counters
    return out


def counters_by_replica(dots: Iterable[Dot]) -> dict[str, list[int]]:
    """Sorted counters per replica (sorting ints is far cheaper than sorting dots)."""
    out: dict[str, list[int]] = {}
    for r, c in dots:
        cs = out.get(r)
        if cs is None:
            out[r] = [c]
        else:
            cs.append(c)
    for cs in out.values():
        cs.sort()
    return out


class ContextDigest:
    """What a replica has: its causal context and the dots it holds.

    The version vector and cloud alone cannot say which of the asker's entries
    the answerer has removed: an ORSWOT remove leaves no dot behind, so a
    remove is "seen, not held" and only the held dots tell seen from held
    (Enes et al., "Efficient Synchronization of State-based CRDTs", ICDE 2019,
    send the same pair as the digest of an add-wins set). Yjs ships its whole
    delete set with every update for the same reason.
    """

    __slots__ = ("context", "held")

    def __init__(self, context: CausalContext, held: frozenset[Dot]) -> None:
        self.context = context
        self.held = held

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ContextDigest):
            return NotImplemented
        return self.context == other.context and self.held == other.held

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ContextDigest({self.context!r}, held={len(self.held)} dots)"

    def to_wire(self) -> list[Any]:
        """[replicas, vv, cloud runs, held runs]: canonical msgpack primitives."""
        ctx = self.context
        replicas = sorted(ctx.replicas() | {r for r, _ in self.held})
        ix = {r: i for i, r in enumerate(replicas)}
        held = runs_wire(counters_by_replica(self.held), ix)
        return [replicas, ctx.vv_wire(ix), ctx.cloud_wire(ix), held]

    @classmethod
    def from_wire(cls, obj: object) -> ContextDigest:
        """Rebuild from wire primitives; raises DecodeError for anything malformed."""
        what = "ContextDigest"
        replicas_obj, vv_obj, cloud_obj, held_obj = expect_list(obj, what, 4)
        replicas = parse_replicas(replicas_obj, what)
        ctx = CausalContext()
        ctx.load_wire(vv_obj, cloud_obj, replicas, what)
        held: list[Dot] = []
        for r, cs in parse_runs(held_obj, replicas, f"{what} held").items():
            # Counters come sorted: only those past the vector need a cloud lookup.
            for c in cs[bisect_right(cs, ctx.vv.get(r, 0)) :]:
                if not ctx.contains((r, c)):
                    raise DecodeError(f"{what}: a held dot is missing from the context")
            held += zip(repeat(r, len(cs)), cs, strict=True)
        return cls(ctx, frozenset(held))


def parse_replicas(obj: object, what: str) -> list[str]:
    replicas = [expect_replica(r, f"{what} replica") for r in expect_list(obj, what)]
    if len(set(replicas)) != len(replicas):
        raise DecodeError(f"{what}: duplicate replica id")
    return replicas
