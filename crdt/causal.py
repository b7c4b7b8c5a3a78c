"""Causal CRDTs: the add-wins ORSet and ORMap, built on one dot store.

See `dotstore` for the design (dots, causal contexts, no tombstones),
`context` for incremental context joins and the digests of version-vector
sync, and `dotstore_wire` for the columnar wire form.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Final, Self

from ._wire import Element, element_sort_key, expect_list, expect_uint
from .base import CRDT, TYPES
from .context import CausalContext as CausalContext
from .context import ContextDigest as ContextDigest
from .dotstore import DotStore
from .dotstore_wire import load_store, store_to_wire
from .errors import DecodeError

_ELEMENT_TYPES: Final = frozenset((str, int, bytes))
_KEY_TYPES: Final = frozenset((str,))


class ORSet(DotStore[Element]):
    """Add-wins observed-remove set of str, int or bytes elements (ORSWOT style)."""

    TYPE_TAG = 5
    __slots__ = ()

    def add(self, replica: str, element: Element) -> ORSet:
        if type(element) not in (str, int, bytes):
            raise TypeError("ORSet elements are str, int or bytes")
        return self._delta_add(replica, element, None)

    def remove(self, replica: str, element: Element) -> ORSet:
        return self._retire(element)

    @property
    def value(self) -> frozenset[Element]:
        return frozenset(self._single).union(self._multi)

    def to_wire(self) -> list[Any]:
        return store_to_wire(self, element_sort_key)

    @classmethod
    def _from_wire(cls, obj: Any) -> Self:
        s = cls()
        load_store(s, expect_list(obj, "ORSet"), _ELEMENT_TYPES, None)
        return s

    def __iter__(self) -> Iterator[Element]:
        yield from self._single
        yield from self._multi

    def __repr__(self) -> str:
        return f"ORSet({sorted(self.value, key=element_sort_key)!r})"


def _identity(key: str) -> str:
    return key


def _type_by_tag(tag: int) -> type[CRDT]:
    t = TYPES.get(tag)
    if t is None:
        raise DecodeError(f"unknown CRDT type tag {tag}")
    return t


class ORMap(DotStore[str]):
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
        return self._retire(key)

    def get(self, key: str) -> Any:
        """An independent copy of the key's joined value, or None."""
        dots = sorted(self._dots_of(key))
        if not dots:
            return None
        joined = self._payload[dots[0]].copy()
        for d in dots[1:]:
            joined.merge(self._payload[d])
        return joined

    def merge(self, other: Self) -> None:
        if type(other) is type(self) and other.value_type is not self.value_type:
            raise TypeError("cannot merge ORMaps of different value types")
        super().merge(other)

    def keys(self) -> list[str]:
        return sorted([*self._single, *self._multi])

    @property
    def value(self) -> dict[str, Any]:
        out = {k: self._payload[d].value for k, d in self._single.items()}
        for k in self._multi:
            out[k] = self.get(k).value
        return out

    def to_wire(self) -> list[Any]:
        return [self.value_type.TYPE_TAG, *store_to_wire(self, _identity)]

    @classmethod
    def _from_wire(cls, obj: Any) -> Self:
        tag, *parts = expect_list(obj, "ORMap")
        vt = _type_by_tag(expect_uint(tag, "ORMap value type"))
        if vt is ORMap:
            # Nested maps would need a value type of their own on the wire.
            raise DecodeError("ORMap of ORMap is not supported")
        m = cls(vt)
        load_store(m, parts, _KEY_TYPES, vt.from_wire)
        return m

    def __repr__(self) -> str:
        return f"ORMap[{self.value_type.__name__}]({self.value!r})"
