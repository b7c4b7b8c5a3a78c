"""LWWMap entries and their columnar wire form (wire version 2).

An entry is a plain tuple (replica, ts, key, value), a removed key's value
being `TOMBSTONE`; a state is one dict of them, which the codec sorts and
zips in C. The key rides along so that sorting entries never compares values.

    [replicas, counts, ts_gaps, keys, values, dead]

Entries are sorted by (replica, ts, key): `counts[i]` entries belong to
`replicas[i]`, so no entry carries a replica index, and each replica's
timestamps go as plain differences (its first one absolute): one byte between
writes within a millisecond, five across one (an HLC keeps its logical
counter in the low 16 bits), where a raw HLC costs nine. `values` has None at
a tombstone and `dead` lists the tombstones' positions as differences, so no
entry carries an alive flag. Every column is checked with one C-level pass
(`set(map(type, col))`, `min`, `max`) instead of a call per field.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate, compress, count, repeat
from operator import is_, itemgetter, sub
from typing import Any, Final

from ._wire import MAX_UINT, expect_list, expect_plain, expect_replica
from .errors import DecodeError

Entry = tuple[str, int, str, Any]


class _Tombstone:
    """The value of a removed key (a unique object; never on the wire)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "TOMBSTONE"


TOMBSTONE: Final = _Tombstone()

_SCALARS: Final = frozenset((type(None), bool, int, float, str, bytes))
_replica_of = itemgetter(0)
_ts_of = itemgetter(1)
_key_of = itemgetter(2)
_value_of = itemgetter(3)


def lwwmap_to_wire(entries: dict[str, Entry]) -> list[Any]:
    # Entries compare as tuples: by replica, ts, then the (unique) key, never
    # the value. The merge keeps the dict nearly in write order, so this sort
    # mostly finds runs (Timsort is adaptive).
    ordered = sorted(entries.values())
    names = list(map(_replica_of, ordered))
    replicas: list[str] = []
    counts: list[int] = []
    start = 0
    while start < len(names):  # one bisection per replica: the column is sorted
        end = bisect_right(names, names[start], start)
        replicas.append(names[start])
        counts.append(end - start)
        start = end
    stamps = list(map(_ts_of, ordered))
    ts_gaps = stamps[:1]
    ts_gaps += map(sub, stamps[1:], stamps)
    start = 0
    for n in counts:  # each replica's first timestamp is absolute
        ts_gaps[start] = stamps[start]
        start += n
    values = list(map(_value_of, ordered))
    dead = list(compress(count(), map(is_, values, repeat(TOMBSTONE))))
    for i in dead:
        values[i] = None
    dead_gaps = dead[:1]
    dead_gaps += map(sub, dead[1:], dead)
    return [replicas, counts, ts_gaps, list(map(_key_of, ordered)), values, dead_gaps]


def _uints(obj: object, what: str, low: int, high: int | None) -> list[int]:
    """An integer column in [low, high]; `high=None` when the caller bounds it."""
    col = expect_list(obj, what)
    if col and (
        set(map(type, col)) != {int} or min(col) < low or (high is not None and max(col) > high)
    ):
        raise DecodeError(f"{what}: expected integers in [{low}, {high}]")
    return col


Columns = tuple[list[str], list[int], list[str], list[Any]]


def build_entries(cols: Columns) -> dict[str, Entry]:
    names, stamps, keys, values = cols
    return dict(zip(keys, zip(names, stamps, keys, values, strict=True), strict=True))


def lwwmap_columns(obj: object) -> Columns:
    """Validate a wire form completely; returns its columns (replica, ts, key, value).

    The entries dict is built later and only if asked for: a decoded state is
    usually just merged, which reads the columns directly (`LWWMap.merge`).
    Raises DecodeError.
    """
    parts = expect_list(obj, "LWWMap", 6)
    replicas = [expect_replica(r, "LWWMap replica") for r in expect_list(parts[0], "LWWMap")]
    counts = _uints(parts[1], "LWWMap counts", 1, None)
    # Gaps are >= 0, so bounding each replica's sum (below) bounds each gap.
    ts_gaps = _uints(parts[2], "LWWMap timestamps", 0, None)
    keys = expect_list(parts[3], "LWWMap keys")
    values = expect_list(parts[4], "LWWMap values")
    n = len(keys)
    dead_gaps = _uints(parts[5], "LWWMap dead", 0, max(n - 1, 0))
    if len(counts) != len(replicas) or sum(counts) != n or len(ts_gaps) != n or len(values) != n:
        raise DecodeError("LWWMap: columns disagree in length")
    if len(set(replicas)) != len(replicas):
        raise DecodeError("LWWMap: duplicate replica id")
    if n and set(map(type, keys)) != {str}:
        raise DecodeError("LWWMap: expected string keys")
    stamps: list[int] = []
    names: list[str] = []
    for r, c in zip(replicas, counts, strict=True):
        run = list(accumulate(ts_gaps[len(stamps) : len(stamps) + c]))
        # A replica's timestamps never decrease: its first is its least.
        if run[0] == 0 or run[-1] > MAX_UINT:
            raise DecodeError("LWWMap: timestamp out of range (a written entry has ts > 0)")
        stamps += run
        names += repeat(r, c)
    if not set(map(type, values)) <= _SCALARS:
        for v in values:
            expect_plain(v, "LWWMap value")
    if dead_gaps:
        if min(dead_gaps[1:], default=1) < 1:
            raise DecodeError("LWWMap: dead positions out of order")
        dead = list(accumulate(dead_gaps))
        if dead[-1] >= n:
            raise DecodeError("LWWMap: dead position out of range")
        values = list(values)
        for i in dead:
            if values[i] is not None:
                raise DecodeError("LWWMap: a tombstone carries no value")
            values[i] = TOMBSTONE
    if len(set(keys)) != n:
        raise DecodeError("LWWMap: duplicate key")
    return names, stamps, keys, values
