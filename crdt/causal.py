"""Causal CRDTs: the add-wins ORSet and ORMap, built on one dot store.

Design (Almeida, Shoker and Baquero 2018, "optimized add-wins set"; the
ORSWOT of riak_dt): every add is a *dot* (replica, counter) and the state is a
dot store plus a causal context, the set of every dot ever seen. Join keeps a
dot when both sides hold it, or when one side holds it and the other has never
seen it. A remove therefore needs no tombstone: it is just "seen, not held".
The context is a version vector plus a *dot cloud* for the gaps that
out-of-order deltas leave; the cloud shrinks back into the vector as gaps fill,
so nothing grows with the number of removes.

Each key holds at most one dot per replica: a new add by a replica also
retires every dot it observed for that key, as in ORSWOT.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Iterator
from typing import Any, ClassVar, Generic, Self, TypeVar

from ._wire import (
    Element,
    element_sort_key,
    expect_element,
    expect_key,
    expect_list,
    expect_replica,
    expect_uint,
)
from .base import CRDT
from .errors import DecodeError

Dot = tuple[str, int]
K = TypeVar("K", bound=Hashable)


class CausalContext:
    """The set of dots seen: a version vector plus a cloud of out-of-order dots."""

    __slots__ = ("cloud", "vv")

    def __init__(self, vv: dict[str, int] | None = None, cloud: set[Dot] | None = None) -> None:
        self.vv: dict[str, int] = vv if vv is not None else {}
        self.cloud: set[Dot] = cloud if cloud is not None else set()

    def contains(self, dot: Dot) -> bool:
        return dot[1] <= self.vv.get(dot[0], 0) or dot in self.cloud

    def next_dot(self, replica: str) -> Dot:
        top = self.vv.get(replica, 0)
        for r, c in self.cloud:
            if r == replica and c > top:
                top = c
        return (replica, top + 1)

    def merge(self, other: CausalContext) -> None:
        vv = self.vv
        for r, n in other.vv.items():
            if n > vv.get(r, 0):
                vv[r] = n
        if other.cloud:
            self.cloud |= other.cloud
        if self.cloud:
            self.compact()

    def compact(self) -> None:
        """Fold contiguous cloud dots into the vector: the canonical form."""
        by_replica: dict[str, list[int]] = defaultdict(list)
        for r, c in self.cloud:
            by_replica[r].append(c)
        cloud: set[Dot] = set()
        for r, counters in by_replica.items():
            top = self.vv.get(r, 0)
            for c in sorted(counters):
                if c <= top:
                    continue
                if c == top + 1:
                    top = c
                else:
                    cloud.add((r, c))
            if top:
                self.vv[r] = top
        self.cloud = cloud

    def dot_count(self) -> int:
        return sum(self.vv.values()) + len(self.cloud)

    def iter_dots(self) -> Iterator[Dot]:
        for r, n in self.vv.items():
            for c in range(1, n + 1):
                yield (r, c)
        yield from self.cloud

    def copy(self) -> CausalContext:
        return CausalContext(dict(self.vv), set(self.cloud))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CausalContext):
            return NotImplemented
        return self.vv == other.vv and self.cloud == other.cloud

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CausalContext(vv={self.vv!r}, cloud={sorted(self.cloud)!r})"


class _DotStore(CRDT, Generic[K]):
    """Keys mapped to dots, with an optional CRDT payload per dot, plus a context.

    `_index` maps each held dot back to its key, so a small delta joins in time
    proportional to the delta, not to the whole state.
    """

    __slots__ = ("_ctx", "_entries", "_index", "_payload")
    _HAS_PAYLOAD: ClassVar[bool] = False

    def __init__(self) -> None:
        self._ctx = CausalContext()
        self._entries: dict[K, dict[str, int]] = {}
        self._index: dict[Dot, K] = {}
        self._payload: dict[Dot, CRDT] = {}

    # -- the join -------------------------------------------------------------

    def merge(self, other: Self) -> None:
        self._check_same_type(other)
        octx, oindex = other._ctx, other._index
        # 1. Drop what the other side has seen but no longer holds (its removes).
        if octx.dot_count() < len(self._index):
            doomed = [d for d in octx.iter_dots() if d in self._index and d not in oindex]
        else:
            doomed = [d for d in self._index if octx.contains(d) and d not in oindex]
        for d in doomed:
            self._drop(d)
        # 2. Take what the other side holds and this side has never seen.
        for d, key in oindex.items():
            if d in self._index:
                if self._HAS_PAYLOAD:
                    self._payload[d].merge(other._payload[d])
            elif not self._ctx.contains(d):
                self._put(key, d, other._payload[d].copy() if self._HAS_PAYLOAD else None)
        # 3. Everything either side has seen is now seen.
        self._ctx.merge(octx)

    def _drop(self, d: Dot) -> None:
        key = self._index.pop(d)
        dots = self._entries[key]
        del dots[d[0]]
        if not dots:
            del self._entries[key]
        if self._HAS_PAYLOAD:
            del self._payload[d]

    def _put(self, key: K, d: Dot, payload: CRDT | None) -> None:
        dots = self._entries.setdefault(key, {})
        old = dots.get(d[0])
        if old is not None:
            # Two live dots of one replica on one key cannot arise from valid
            # histories; keep the newer so the store stays well-formed.
            if old > d[1]:
                return
            self._drop((d[0], old))
            dots = self._entries.setdefault(key, {})
        dots[d[0]] = d[1]
        self._index[d] = key
        if payload is not None:
            self._payload[d] = payload

    # -- delta mutators ---------------------------------------------------------

    def _delta_add(self, replica: str, key: K, payload: CRDT | None) -> Self:
        """A delta that adds `key` with a fresh dot and retires its observed dots."""
        dot = self._ctx.next_dot(replica)
        delta = type(self)._empty_like(self)
        delta._ctx.cloud = {dot, *self._dots_of(key)}
        delta._ctx.compact()
        delta._put(key, dot, payload)
        self.merge(delta)
        return delta

    def _delta_remove(self, key: K) -> Self:
        """A delta that retires every observed dot of `key`."""
        delta = type(self)._empty_like(self)
        delta._ctx.cloud = set(self._dots_of(key))
        delta._ctx.compact()
        self.merge(delta)
        return delta

    def _dots_of(self, key: K) -> list[Dot]:
        return [(r, c) for r, c in self._entries.get(key, {}).items()]

    @classmethod
    def _empty_like(cls, proto: Self) -> Self:
        return cls()

    # -- shared plumbing ------------------------------------------------------

    @property
    def context(self) -> CausalContext:
        """The causal context (read-only by convention)."""
        return self._ctx

    def _copy_into(self, c: Self) -> Self:
        c._ctx = self._ctx.copy()
        c._entries = {k: dict(v) for k, v in self._entries.items()}
        c._index = dict(self._index)
        c._payload = {d: p.copy() for d, p in self._payload.items()}
        return c

    def max_timestamp(self) -> int:
        return max((p.max_timestamp() for p in self._payload.values()), default=0)

    def copy(self) -> Self:
        return self._copy_into(type(self)._empty_like(self))

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return (
            self._entries == other._entries
            and self._ctx == other._ctx
            and self._payload == other._payload
        )

    __hash__ = None  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    # Wire layout: [replicas, vv, cloud, entries] where replica ids are indices
    # into `replicas`, vv and cloud are flat [ridx, n, ...] lists, and entries is
    # flat [key, ndots, (ridx, counter[, payload]) * ndots, ...], or for a key
    # with a single dot [key, -1 - ridx, counter[, payload]].

    def _wire_parts(self, sort_key: Callable[[K], Any]) -> list[Any]:
        names: set[str] = set(self._ctx.vv)
        names.update(r for r, _ in self._ctx.cloud)
        for dots in self._entries.values():
            names.update(dots)
        replicas = sorted(names)
        ix = {r: i for i, r in enumerate(replicas)}
        vv: list[int] = []
        for r in sorted(self._ctx.vv):
            vv += (ix[r], self._ctx.vv[r])
        cloud: list[int] = []
        for r, c in sorted(self._ctx.cloud):
            cloud += (ix[r], c)
        flat: list[Any] = []
        payload = self._HAS_PAYLOAD
        for key in sorted(self._entries, key=sort_key):
            dots = self._entries[key]
            if len(dots) == 1:
                # The common case, one dot: a negative header -1 - ridx stands for
                # "one dot, of this replica", one byte instead of two.
                ((r, c),) = dots.items()
                flat += (key, -1 - ix[r], c)
                if payload:
                    flat.append(self._payload[(r, c)].to_wire())
                continue
            flat += (key, len(dots))
            for r in sorted(dots):
                flat += (ix[r], dots[r])
                if payload:
                    flat.append(self._payload[(r, dots[r])].to_wire())
        return [replicas, vv, cloud, flat]

    def _load_wire(
        self,
        parts: list[Any],
        parse_key: Callable[[object, str], K],
        parse_payload: Callable[[object], CRDT] | None,
    ) -> None:
        what = type(self).__name__
        replicas_obj, vv_obj, cloud_obj, flat_obj = parts
        replicas = [expect_replica(r, f"{what} replica") for r in expect_list(replicas_obj, what)]
        if len(set(replicas)) != len(replicas):
            raise DecodeError(f"{what}: duplicate replica id")
        nrep = len(replicas)

        def rep(obj: object) -> str:
            i = expect_uint(obj, f"{what} replica index")
            if i >= nrep:
                raise DecodeError(f"{what}: replica index out of range")
            return replicas[i]

        vv_flat = expect_list(vv_obj, f"{what} vv")
        cloud_flat = expect_list(cloud_obj, f"{what} cloud")
        if len(vv_flat) % 2 or len(cloud_flat) % 2:
            raise DecodeError(f"{what}: odd-length vector")
        ctx = self._ctx
        for i in range(0, len(vv_flat), 2):
            r = rep(vv_flat[i])
            if r in ctx.vv:
                raise DecodeError(f"{what}: duplicate vv entry")
            ctx.vv[r] = expect_uint(vv_flat[i + 1], f"{what} vv counter")
        for i in range(0, len(cloud_flat), 2):
            c = expect_uint(cloud_flat[i + 1], f"{what} cloud counter")
            if c == 0:
                raise DecodeError(f"{what}: dot counters start at 1")
            ctx.cloud.add((rep(cloud_flat[i]), c))
        ctx.vv = {r: n for r, n in ctx.vv.items() if n}
        ctx.compact()

        flat = expect_list(flat_obj, f"{what} entries")
        i, n = 0, len(flat)

        def take() -> Any:
            nonlocal i
            if i >= n:
                raise DecodeError(f"{what}: truncated entries")
            i += 1
            return flat[i - 1]

        while i < n:
            key = parse_key(take(), f"{what} key")
            if key in self._entries:
                raise DecodeError(f"{what}: duplicate key")
            header = take()
            single: str | None = None
            if type(header) is int and header < 0:
                single, count = rep(-1 - header), 1
            else:
                count = expect_uint(header, f"{what} dot count")
                if count == 0:
                    raise DecodeError(f"{what}: an entry holds at least one dot")
            dots: dict[str, int] = {}
            for _ in range(count):
                r = single if single is not None else rep(take())
                c = expect_uint(take(), f"{what} dot counter")
                d = (r, c)
                if r in dots or d in self._index or c == 0:
                    raise DecodeError(f"{what}: duplicate dot")
                if not ctx.contains(d):
                    raise DecodeError(f"{what}: held dot missing from the causal context")
                dots[r] = c
                self._index[d] = key
                if parse_payload is not None:
                    self._payload[d] = parse_payload(take())
            self._entries[key] = dots


class ORSet(_DotStore[Element]):
    """Add-wins observed-remove set of str, int or bytes elements (ORSWOT style)."""

    TYPE_TAG = 5
    __slots__ = ()

    def add(self, replica: str, element: Element) -> ORSet:
        if type(element) not in (str, int, bytes):
            raise TypeError("ORSet elements are str, int or bytes")
        return self._delta_add(replica, element, None)

    def remove(self, replica: str, element: Element) -> ORSet:
        return self._delta_remove(element)

    @property
    def value(self) -> frozenset[Element]:
        return frozenset(self._entries)

    def to_wire(self) -> list[Any]:
        return self._wire_parts(element_sort_key)

    @classmethod
    def _from_wire(cls, obj: Any) -> Self:
        s = cls()
        s._load_wire(expect_list(obj, "ORSet", 4), expect_element, None)
        return s

    def __iter__(self) -> Iterator[Element]:
        return iter(self._entries)

    def __repr__(self) -> str:
        return f"ORSet({sorted(self._entries, key=element_sort_key)!r})"


def _type_by_tag(tag: int) -> type[CRDT]:
    from .codec import TYPES

    t = TYPES.get(tag)
    if t is None:
        raise DecodeError(f"unknown CRDT type tag {tag}")
    return t


class ORMap(_DotStore[str]):
    """Add-wins map of string keys to CRDT values of one type.

    An update is an add: it takes a fresh dot whose payload is the key's whole
    joined value after the update, and retires the dots it observed. A remove
    retires the observed dots, so a concurrent update survives it (add wins)
    while the state removed does not come back (reset-remove semantics).
    """

    TYPE_TAG = 6
    __slots__ = ("value_type",)
    _HAS_PAYLOAD = True

    def __init__(self, value_type: type[CRDT] | None = None) -> None:
        super().__init__()
        from .registers import LWWRegister

        self.value_type: type[CRDT] = value_type if value_type is not None else LWWRegister

    @classmethod
    def _empty_like(cls, proto: Self) -> Self:
        return cls(proto.value_type)

    def update(self, replica: str, key: str, mutate: Callable[[Any], object]) -> ORMap:
        """Apply `mutate` to the key's value (created empty if absent); returns the delta."""
        if type(key) is not str:
            raise TypeError("ORMap keys are strings")
        current = self.get(key)
        if current is None:
            current = self.value_type()
        mutate(current)
        return self._delta_add(replica, key, current)

    def remove(self, replica: str, key: str) -> ORMap:
        return self._delta_remove(key)

    def get(self, key: str) -> Any:
        """An independent copy of the key's joined value, or None."""
        dots = self._entries.get(key)
        if not dots:
            return None
        joined: CRDT | None = None
        for r in sorted(dots):
            p = self._payload[(r, dots[r])]
            if joined is None:
                joined = p.copy()
            else:
                joined.merge(p)
        return joined

    def merge(self, other: Self) -> None:
        if type(other) is type(self) and other.value_type is not self.value_type:
            raise TypeError("cannot merge ORMaps of different value types")
        super().merge(other)

    def keys(self) -> list[str]:
        return sorted(self._entries)

    @property
    def value(self) -> dict[str, Any]:
        return {k: self.get(k).value for k in self._entries}

    def to_wire(self) -> list[Any]:
        return [self.value_type.TYPE_TAG, *self._wire_parts(lambda k: k)]

    @classmethod
    def _from_wire(cls, obj: Any) -> Self:
        tag, *parts = expect_list(obj, "ORMap", 5)
        vt = _type_by_tag(expect_uint(tag, "ORMap value type"))
        if vt is ORMap:
            # Nested maps would need a value type of their own on the wire.
            raise DecodeError("ORMap of ORMap is not supported")
        m = cls(vt)
        m._load_wire(parts, expect_key, vt.from_wire)
        return m

    def __repr__(self) -> str:
        return f"ORMap[{self.value_type.__name__}]({self.value!r})"
