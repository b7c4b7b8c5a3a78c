"""Last-writer-wins register and map, timestamped by an HLC.

Ties on the timestamp are broken by replica id, then (only for hostile or
buggy input, since one replica never issues a timestamp twice) by a removal
beating a write and by the encoded value, so the join stays a total order and
every replica picks the same winner.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Self

import msgpack

from ._wire import (
    expect_key,
    expect_list,
    expect_plain,
    expect_replica,
    expect_uint,
)
from .base import CRDT
from .errors import DecodeError


class _Entry(NamedTuple):
    ts: int
    replica: str
    alive: bool
    value: Any


def _wins(a: _Entry, b: _Entry) -> bool:
    """True when `a` beats `b` (strictly)."""
    if a.ts != b.ts:
        return a.ts > b.ts
    if a.replica != b.replica:
        return a.replica > b.replica
    if a.alive != b.alive:
        return not a.alive
    pa: bytes = msgpack.packb(a.value, use_bin_type=True)
    pb: bytes = msgpack.packb(b.value, use_bin_type=True)
    return pa > pb


def _check_local_value(value: object) -> None:
    try:
        expect_plain(value, "value")
    except DecodeError as e:
        raise TypeError(str(e)) from None


def _check_ts(ts: int) -> None:
    if type(ts) is not int or ts <= 0:
        raise ValueError("ts must be a positive HLC timestamp")


_EMPTY = _Entry(0, "", True, None)


class LWWRegister(CRDT):
    """A single value; the write with the greatest (ts, replica) wins.

    Values are plain msgpack data and are treated as immutable.
    """

    TYPE_TAG = 3
    __slots__ = ("_e",)

    def __init__(self, value: Any = None, ts: int = 0, replica: str = "") -> None:
        self._e = _Entry(ts, replica, True, value) if ts else _EMPTY

    def set(self, replica: str, value: Any, ts: int) -> LWWRegister:
        _check_ts(ts)
        _check_local_value(value)
        delta = LWWRegister(value, ts, replica)
        self.merge(delta)
        return delta

    @property
    def ts(self) -> int:
        return self._e.ts

    @property
    def replica(self) -> str:
        return self._e.replica

    def max_timestamp(self) -> int:
        return self._e.ts

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
        return self._e.value

    def to_wire(self) -> list[Any]:
        e = self._e
        return [e.ts, e.replica, e.value] if e.ts else []

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
        return f"LWWRegister({self._e.value!r}, ts={self._e.ts}, replica={self._e.replica!r})"


class LWWMap(CRDT):
    """A map of string keys to LWW values; removal writes a timestamped tombstone.

    Tombstones are what stop a stale peer from resurrecting a removed key.
    """

    TYPE_TAG = 4
    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def set(self, replica: str, key: str, value: Any, ts: int) -> LWWMap:
        _check_ts(ts)
        _check_local_value(value)
        if type(key) is not str:
            raise TypeError("LWWMap keys are strings")
        return self._write(key, _Entry(ts, replica, True, value))

    def remove(self, replica: str, key: str, ts: int) -> LWWMap:
        _check_ts(ts)
        return self._write(key, _Entry(ts, replica, False, None))

    def _write(self, key: str, entry: _Entry) -> LWWMap:
        delta = LWWMap()
        delta._entries[key] = entry
        self.merge(delta)
        return delta

    def merge(self, other: Self) -> None:
        self._check_same_type(other)
        mine = self._entries
        for k, e in other._entries.items():
            cur = mine.get(k)
            if cur is None or _wins(e, cur):
                mine[k] = e

    def copy(self) -> Self:
        c = type(self)()
        c._entries = dict(self._entries)
        return c

    def get(self, key: str, default: Any = None) -> Any:
        e = self._entries.get(key)
        return e.value if e is not None and e.alive else default

    def __contains__(self, key: object) -> bool:
        e = self._entries.get(key)  # type: ignore[call-overload]
        return e is not None and e.alive

    def max_timestamp(self) -> int:
        return max((e.ts for e in self._entries.values()), default=0)

    def entry_ts(self, key: str) -> int:
        """Timestamp of the latest write or removal of `key` (0 if never seen)."""
        e = self._entries.get(key)
        return e.ts if e is not None else 0

    @property
    def value(self) -> dict[str, Any]:
        return {k: e.value for k, e in self._entries.items() if e.alive}

    def to_wire(self) -> list[Any]:
        # Replica ids repeat across keys; a table of them keeps the encoding small.
        replicas = sorted({e.replica for e in self._entries.values()})
        index = {r: i for i, r in enumerate(replicas)}
        flat: list[Any] = []
        for k in sorted(self._entries):
            e = self._entries[k]
            flat += (k, e.ts, index[e.replica], e.alive, e.value)
        return [replicas, flat]

    @classmethod
    def _from_wire(cls, obj: Any) -> Self:
        replicas_obj, flat = expect_list(obj, "LWWMap", 2)
        replicas = [
            expect_replica(r, "LWWMap replica") for r in expect_list(replicas_obj, "LWWMap")
        ]
        flat = expect_list(flat, "LWWMap entries")
        if len(flat) % 5:
            raise DecodeError("LWWMap entries: length is not a multiple of 5")
        m = cls()
        for i in range(0, len(flat), 5):
            k, ts, ridx, alive, value = flat[i : i + 5]
            k = expect_key(k, "LWWMap key")
            if k in m._entries:
                raise DecodeError("LWWMap: duplicate key")
            ts = expect_uint(ts, "LWWMap ts")
            ridx = expect_uint(ridx, "LWWMap replica index")
            if ts == 0 or ridx >= len(replicas) or type(alive) is not bool:
                raise DecodeError("LWWMap: malformed entry")
            if not alive and value is not None:
                raise DecodeError("LWWMap: a tombstone carries no value")
            m._entries[k] = _Entry(ts, replicas[ridx], alive, expect_plain(value, "LWWMap value"))
        return m

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._entries == other._entries

    __hash__ = None  # type: ignore[assignment]

    def __len__(self) -> int:
        return sum(1 for e in self._entries.values() if e.alive)

    def __repr__(self) -> str:
        return f"LWWMap({self.value!r})"
