"""LWWMap entries and their columnar wire form (wire version 2).

An entry is a plain tuple (ts, replica, key, value), a removed key's value
being `TOMBSTONE`; a state is one dict of them, which the codec sorts and
zips in C. The key rides along so that sorting entries never compares values.

    [replicas, keys, walls, logicals, ridx, values, dead]

Entries are sorted by (ts, replica, key), so timestamps can be sent as
differences: `walls` holds the HLC's millisecond halves as differences from
the previous entry (the first one absolute) and `logicals` the 16-bit logical
halves, about two bytes an entry where a raw HLC costs nine. `ridx` indexes
`replicas` and is empty when there is at most one replica. `values` has None
at a tombstone, and `dead` lists the tombstones' positions as differences, so
no entry carries an alive flag. Every column is checked with one C-level pass
(`set(map(type, col))`, `min`, `max`) instead of a call per field.
"""

from __future__ import annotations

from itertools import accumulate, repeat
from operator import and_, itemgetter, lshift, or_, rshift, sub
from typing import Any, Final

from ._wire import MAX_UINT, expect_list, expect_plain, expect_replica
from .errors import DecodeError

Entry = tuple[int, str, str, Any]


class _Tombstone:
    """The value of a removed key (a unique object; never on the wire)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "TOMBSTONE"


TOMBSTONE: Final = _Tombstone()

_LOGICAL_BITS: Final = 16
_LOGICAL_MASK: Final = (1 << _LOGICAL_BITS) - 1
_SCALARS: Final = frozenset((type(None), bool, int, float, str, bytes))
_ts_of = itemgetter(0)


def lwwmap_to_wire(entries: dict[str, Entry]) -> list[Any]:
    ordered = sorted(entries.values(), key=_ts_of)
    stamps = list(map(_ts_of, ordered))
    if len(set(stamps)) != len(stamps):
        ordered.sort()  # equal timestamps: order by (replica, key) too
        stamps = list(map(_ts_of, ordered))
    replicas = sorted({e[1] for e in ordered})
    walls = list(map(rshift, stamps, repeat(_LOGICAL_BITS)))
    wall_gaps = walls[:1]
    wall_gaps += map(sub, walls[1:], walls[:-1])
    values = list(map(itemgetter(3), ordered))
    dead = [i for i, v in enumerate(values) if v is TOMBSTONE]
    for i in dead:
        values[i] = None
    ridx: list[int] = []
    if len(replicas) > 1:
        ix = {r: i for i, r in enumerate(replicas)}
        ridx = list(map(ix.__getitem__, map(itemgetter(1), ordered)))
    return [
        replicas,
        list(map(itemgetter(2), ordered)),
        wall_gaps,
        list(map(and_, stamps, repeat(_LOGICAL_MASK))),
        ridx,
        values,
        [*dead[:1], *map(sub, dead[1:], dead[:-1])],
    ]


def _uints(obj: object, what: str, low: int, high: int) -> list[int]:
    col = expect_list(obj, what)
    if col and (set(map(type, col)) != {int} or min(col) < low or max(col) > high):
        raise DecodeError(f"{what}: expected integers in [{low}, {high}]")
    return col


def lwwmap_entries(obj: object) -> dict[str, Entry]:
    """Validate a wire form and build its entries; raises DecodeError."""
    parts = expect_list(obj, "LWWMap", 7)
    replicas = [expect_replica(r, "LWWMap replica") for r in expect_list(parts[0], "LWWMap")]
    keys = expect_list(parts[1], "LWWMap keys")
    n = len(keys)
    wall_gaps = _uints(parts[2], "LWWMap walls", 0, MAX_UINT >> _LOGICAL_BITS)
    logicals = _uints(parts[3], "LWWMap logicals", 0, _LOGICAL_MASK)
    ridx = _uints(parts[4], "LWWMap replica indices", 0, len(replicas) - 1)
    values = expect_list(parts[5], "LWWMap values")
    dead_gaps = _uints(parts[6], "LWWMap dead", 0, max(n - 1, 0))
    if not n:
        if replicas or wall_gaps or logicals or ridx or values or dead_gaps:
            raise DecodeError("LWWMap: columns disagree in length")
        return {}
    if len(wall_gaps) != n or len(logicals) != n or len(values) != n:
        raise DecodeError("LWWMap: columns disagree in length")
    if len(ridx) != (n if len(replicas) > 1 else 0) or len(replicas) != len(set(replicas)):
        raise DecodeError("LWWMap: malformed replica table")
    if not replicas or set(map(type, keys)) != {str}:
        raise DecodeError("LWWMap: expected string keys and a replica")
    walls = list(accumulate(wall_gaps))
    if walls[-1] > MAX_UINT >> _LOGICAL_BITS:
        raise DecodeError("LWWMap: timestamp out of range")
    stamps = list(map(or_, map(lshift, walls, repeat(_LOGICAL_BITS)), logicals))
    if min(stamps) == 0:
        raise DecodeError("LWWMap: a written entry has ts > 0")
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
    names = map(replicas.__getitem__, ridx) if ridx else repeat(replicas[0], n)
    entries = dict(zip(keys, zip(stamps, names, keys, values, strict=True), strict=True))
    if len(entries) != n:
        raise DecodeError("LWWMap: duplicate key")
    return entries
