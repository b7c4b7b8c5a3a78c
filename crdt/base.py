"""The contract every rumor CRDT implements.

Each type is a join-semilattice with delta mutators (Almeida, Shoker and
Baquero, "Delta State Replicated Data Types", 2018): a mutator changes the
replica in place and returns a delta of the same type, and a delta joins
exactly like a full state.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Self

from .errors import DecodeError

#: Every concrete type by its wire tag, filled as each is defined (a value
#: nested in another, an ORMap's, is decoded by its tag through this).
TYPES: dict[int, type[CRDT]] = {}


class CRDT(ABC):
    #: Stable wire tag; never reuse a retired one.
    TYPE_TAG: ClassVar[int]
    __slots__ = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        tag = cls.__dict__.get("TYPE_TAG")
        if tag is not None:
            if tag in TYPES and TYPES[tag] is not cls:
                raise TypeError(f"CRDT type tag {tag} is taken by {TYPES[tag].__name__}")
            TYPES[tag] = cls

    @abstractmethod
    def merge(self, other: Self) -> None:
        """Join `other` into `self`, in place."""

    @abstractmethod
    def copy(self) -> Self:
        """An independent copy."""

    @property
    @abstractmethod
    def value(self) -> Any:
        """The plain Python value (an int, a frozenset, a dict...)."""

    def max_timestamp(self) -> int:
        """The greatest HLC timestamp this state holds (0 for untimed types):
        what a receiver checks against its clock before it merges."""
        return 0

    @abstractmethod
    def to_wire(self) -> Any:
        """msgpack-ready primitives; canonical, so equal states encode equally."""

    @classmethod
    def from_wire(cls, obj: Any) -> Self:
        """Rebuild from wire primitives; raises `DecodeError` for anything malformed."""
        try:
            return cls._from_wire(obj)
        except DecodeError:
            raise
        except (TypeError, ValueError, KeyError, IndexError, OverflowError, RecursionError) as e:
            # A validation hole must still look like a remote error, not a crash.
            raise DecodeError(f"{cls.__name__}: malformed wire state ({e})") from e

    @classmethod
    @abstractmethod
    def _from_wire(cls, obj: Any) -> Self: ...

    def _check_same_type(self, other: object) -> None:
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
