"""Validation helpers shared by every `from_wire`.

Every helper raises `DecodeError` and nothing else, so a decoder built from
them cannot leak a `TypeError` or `KeyError` to the gossip receive path.
"""

from __future__ import annotations

from typing import Any, Final

from .errors import DecodeError

#: Largest counter, HLC timestamp or dot counter accepted from the wire (uint64).
MAX_UINT: Final = 2**64 - 1
#: Replica ids are node names; long ones are a sign of garbage.
MAX_REPLICA_LEN: Final = 256
#: Nesting allowed inside an opaque user value (an LWW value).
MAX_VALUE_DEPTH: Final = 32

Element = str | int | bytes


def expect_list(obj: object, what: str, length: int | None = None) -> list[Any]:
    if not isinstance(obj, list):
        raise DecodeError(f"{what}: expected an array, got {type(obj).__name__}")
    if length is not None and len(obj) != length:
        raise DecodeError(f"{what}: expected {length} items, got {len(obj)}")
    return obj


def expect_dict(obj: object, what: str) -> dict[Any, Any]:
    if not isinstance(obj, dict):
        raise DecodeError(f"{what}: expected a map, got {type(obj).__name__}")
    return obj


def expect_uint(obj: object, what: str) -> int:
    # bool is an int subclass; a peer sending True for a counter is garbage.
    if type(obj) is not int or obj < 0 or obj > MAX_UINT:
        raise DecodeError(f"{what}: expected an unsigned 64-bit integer")
    return obj


def expect_replica(obj: object, what: str) -> str:
    if type(obj) is not str or not obj or len(obj) > MAX_REPLICA_LEN:
        raise DecodeError(f"{what}: expected a replica id (1..{MAX_REPLICA_LEN} chars)")
    return obj


def expect_key(obj: object, what: str) -> str:
    if type(obj) is not str:
        raise DecodeError(f"{what}: expected a string key")
    return obj


def expect_element(obj: object, what: str) -> Element:
    if type(obj) not in (str, int, bytes):
        raise DecodeError(f"{what}: expected a str, int or bytes element")
    assert isinstance(obj, str | int | bytes)
    return obj


def expect_plain(obj: object, what: str) -> object:
    """Accept only msgpack-native plain data, nested at most MAX_VALUE_DEPTH."""
    stack: list[tuple[object, int]] = [(obj, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_VALUE_DEPTH:
            raise DecodeError(f"{what}: value nested deeper than {MAX_VALUE_DEPTH}")
        if item is None or type(item) in (bool, int, float, str, bytes):
            continue
        if type(item) is list:
            stack.extend((x, depth + 1) for x in item)
        elif type(item) is dict:
            for k, v in item.items():
                if type(k) is not str:
                    raise DecodeError(f"{what}: map keys in values must be strings")
                stack.append((v, depth + 1))
        else:
            raise DecodeError(f"{what}: {type(item).__name__} is not plain data")
    return obj


def element_sort_key(e: Element) -> tuple[int, Any]:
    """Total order over mixed element types, for deterministic encoding."""
    if isinstance(e, int):
        return (0, e)
    if isinstance(e, str):
        return (1, e)
    return (2, e)
