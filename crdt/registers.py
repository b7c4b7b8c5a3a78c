"""Last-writer-wins register and map, timestamped by an HLC.

Ties on the timestamp are broken by replica id, then (only for hostile or
buggy input, since one replica never issues a timestamp twice) by a removal
beating a write and by the encoded value, so the join stays a total order and
every replica picks the same winner.
"""

from __future__ import annotations

from typing import Any, Final, Self

import msgpack

from ._wire import MAX_UINT, expect_list, expect_plain, expect_replica, expect_uint
from .base import CRDT
from .errors import DecodeError
from .lwwmap_wire import (
    TOMBSTONE,
    Columns,
    Entry,
    build_entries,
    lwwmap_columns,
    lwwmap_to_wire,
)


def _wins(a: Entry, b: Entry) -> bool:
    """True when `a` beats `b` (strictly)."""
    if a[1] != b[1]:
        return a[1] > b[1]
    if a[0] != b[0]:
        return a[0] > b[0]
    va, vb = a[3], b[3]
    a_dead, b_dead = va is TOMBSTONE, vb is TOMBSTONE
    if a_dead or b_dead:
        return a_dead and not b_dead
    # The same write seen twice (the common tie): equal scalars of one type
    # encode equally, so skip packing them (1 == True and 0.0 == -0.0 do not).
    if type(va) is type(vb) and type(va) in _EXACT_SCALARS and va == vb:
        return False
    pa: bytes = msgpack.packb(va, use_bin_type=True)
    pb: bytes = msgpack.packb(vb, use_bin_type=True)
    return pa > pb


_EXACT_SCALARS: Final = frozenset((type(None), bool, int, str, bytes))


def _check_local_value(value: object) -> None:
    try:
        expect_plain(value, "value")
    except DecodeError as e:
        raise TypeError(str(e)) from None


def _check_ts(ts: int) -> None:
    if type(ts) is not int or ts <= 0 or ts > MAX_UINT:
        raise ValueError("ts must be a positive HLC timestamp")


_EMPTY: Final[Entry] = ("", 0, "", None)


class LWWRegister(CRDT):
    """A single value; the write with the greatest (ts, replica) wins.

    Values are plain msgpack data and are treated as immutable.
    """

    TYPE_TAG = 3
    __slots__ = ("_e",)

    def __init__(self, value: Any = None, ts: int = 0, replica: str = "") -> None:
        self._e: Entry = (replica, ts, "", value) if ts else _EMPTY

    def set(self, replica: str, value: Any, ts: int) -> LWWRegister:
        _check_ts(ts)
        _check_local_value(value)
        delta = LWWRegister(value, ts, replica)
        self.merge(delta)
        return delta

    @property
    def ts(self) -> int:
        return self._e[1]

    @property
    def replica(self) -> str:
        return self._e[0]

    def max_timestamp(self) -> int:
        return self._e[1]

    def merge(self, other: Self) -> None:
        self._check_same_type(other)
        if _wins(other._e, self._e):
            self._e = other._e

    def copy(self) -> Self:
        c = type(self)()
        c._e = self._e
        return c

    @property
    def value(self) -> Any:
        return self._e[3]

    def to_wire(self) -> list[Any]:
        replica, ts, _, value = self._e
        return [ts, replica, value] if ts else []

    @classmethod
    def _from_wire(cls, obj: Any) -> Self:
        items = expect_list(obj, "LWWRegister")
        if not items:
            return cls()
        ts, replica, value = expect_list(items, "LWWRegister", 3)
        ts = expect_uint(ts, "LWWRegister ts")
        if ts == 0:
            raise DecodeError("LWWRegister: a written register has ts > 0")
        return cls(
            expect_plain(value, "LWWRegister value"),
            ts,
            expect_replica(replica, "LWWRegister replica"),
        )

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._e == other._e

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        replica, ts, _, value = self._e
        return f"LWWRegister({value!r}, ts={ts}, replica={replica!r})"


class LWWMap(CRDT):
    """A map of string keys to LWW values; removal writes a timestamped tombstone.

    Tombstones are what stop a stale peer from resurrecting a removed key.
    The wire form is in `lwwmap_wire`.
    """

    TYPE_TAG = 4
    __slots__ = ("_cols", "_map")

    def __init__(self) -> None:
        self._map: dict[str, Entry] = {}
        # Columns of a decoded state not yet turned into `_map` (see `_entries`).
        self._cols: Columns | None = None

    @property
    def _entries(self) -> dict[str, Entry]:
        if self._cols is not None:
            self._map, self._cols = build_entries(self._cols), None
        return self._map

    def set(self, replica: str, key: str, value: Any, ts: int) -> LWWMap:
        _check_ts(ts)
        _check_local_value(value)
        if type(key) is not str:
            raise TypeError("LWWMap keys are strings")
        return self._write((replica, ts, key, value))

    def remove(self, replica: str, key: str, ts: int) -> LWWMap:
        _check_ts(ts)
        if type(key) is not str:
            raise TypeError("LWWMap keys are strings")
        return self._write((replica, ts, key, TOMBSTONE))

    def _write(self, entry: Entry) -> LWWMap:
        delta = LWWMap()
        delta._map[entry[2]] = entry
        self.merge(delta)
        return delta

    def merge(self, other: Self) -> None:
        self._check_same_type(other)
        if other._cols is not None:
            self._merge_columns(other._cols)
            return
        mine = self._entries
        get = mine.get
        for k, e in other._entries.items():
            cur = get(k)
            if cur is None:
                mine[k] = e
            elif e[1] > cur[1] or (e[1] == cur[1] and e is not cur and _wins(e, cur)):
                # Re-inserting moves the key to the end: writes arrive roughly in
                # time order, so the dict stays nearly sorted by timestamp and the
                # encoder's sort (Timsort, adaptive) runs in about linear time.
                del mine[k]
                mine[k] = e

    def _merge_columns(self, cols: Columns) -> None:
        """`merge` from a decoded state's columns: a tuple only for each winner."""
        mine = self._entries
        get = mine.get
        exact = _EXACT_SCALARS
        for r, ts, k, v in zip(*cols, strict=True):
            cur = get(k)
            if cur is None:
                mine[k] = (r, ts, k, v)
            elif ts > cur[1] or (
                ts == cur[1]
                # The same write seen again (the common tie) needs no `_wins`.
                and not (r == cur[0] and type(v) is type(cur[3]) in exact and v == cur[3])
                and _wins((r, ts, k, v), cur)
            ):
                del mine[k]
                mine[k] = (r, ts, k, v)

    def copy(self) -> Self:
        c = type(self)()
        c._map = dict(self._entries)
        return c

    def get(self, key: str, default: Any = None) -> Any:
        e = self._entries.get(key)
        return default if e is None or e[3] is TOMBSTONE else e[3]

    def __contains__(self, key: object) -> bool:
        e = self._entries.get(key)  # type: ignore[call-overload]
        return e is not None and e[3] is not TOMBSTONE

    def max_timestamp(self) -> int:
        if self._cols is not None:  # decoded, not yet materialized: read the column
            return max(self._cols[1], default=0)
        return max((e[1] for e in self._map.values()), default=0)

    def entry_ts(self, key: str) -> int:
        """Timestamp of the latest write or removal of `key` (0 if never seen)."""
        e = self._entries.get(key)
        return e[1] if e is not None else 0

    @property
    def value(self) -> dict[str, Any]:
        return {k: e[3] for k, e in self._entries.items() if e[3] is not TOMBSTONE}

    def to_wire(self) -> list[Any]:
        return lwwmap_to_wire(self._entries)

    @classmethod
    def _from_wire(cls, obj: Any) -> Self:
        m = cls()
        m._cols = lwwmap_columns(obj)
        return m

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._entries == other._entries

    __hash__ = None  # type: ignore[assignment]

    def __len__(self) -> int:
        return sum(1 for e in self._entries.values() if e[3] is not TOMBSTONE)

    def __repr__(self) -> str:
        return f"LWWMap({self.value!r})"
