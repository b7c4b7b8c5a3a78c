"""The versioned wire envelope for CRDT payloads.

    envelope = msgpack array [version, type_tag, payload]

`version` is `WIRE_VERSION` (2); `type_tag` names the type (see `TYPES`);
`payload` is the type's `to_wire()`. Decoding sets explicit msgpack limits on
every length and on the total size, rejects ext types, and validates the whole
payload before building anything, so it either returns a complete value or
raises `DecodeError`, and never applies partial state.
"""

from __future__ import annotations

from typing import Any, Final

import msgpack

from . import causal, counters, registers  # noqa: F401  (each type registers its tag)
from .base import CRDT, TYPES
from .errors import DecodeError

#: 2: columnar LWWMap, ORSet and ORMap payloads (issue #23); 1 is rejected.
WIRE_VERSION: Final = 2
#: Default cap on one encoded CRDT (bulk sync frames are bounded by this too).
DEFAULT_MAX_BYTES: Final = 16 * 1024 * 1024

__all__ = ["DEFAULT_MAX_BYTES", "TYPES", "WIRE_VERSION", "decode", "encode", "unpack_limited"]


def encode(value: CRDT) -> bytes:
    if type(value).TYPE_TAG not in TYPES:
        raise TypeError(f"{type(value).__name__} is not a registered CRDT")
    out: bytes = msgpack.packb([WIRE_VERSION, value.TYPE_TAG, value.to_wire()], use_bin_type=True)
    return out


def _reject_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack ext type {code} is not allowed")


def unpack_limited(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """msgpack-decode untrusted bytes with every limit set; raises only DecodeError."""
    # A tuple, not `bytes | bytearray | memoryview`: compiled, the union is
    # built anew on every call (0.2 us a message).
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError("expected bytes")
    if len(data) > max_bytes:
        raise DecodeError(f"payload of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    n = len(data)
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            ext_hook=_reject_ext,
            timestamp=0,
            # No container or string can hold more items than there are bytes.
            max_str_len=n,
            max_bin_len=n,
            max_array_len=n,
            max_map_len=n,
            max_ext_len=0,
        )
    except DecodeError:
        raise
    except Exception as e:  # msgpack raises ValueError, TypeError, StackError, ExtraData...
        raise DecodeError(f"malformed msgpack: {type(e).__name__}: {e}") from None


def decode(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> CRDT:
    obj = unpack_limited(data, max_bytes)
    if not isinstance(obj, list) or len(obj) != 3:
        raise DecodeError("envelope: expected [version, type, payload]")
    version, tag, payload = obj
    if version != WIRE_VERSION or type(version) is not int:
        raise DecodeError(f"envelope: unsupported version {version!r}")
    if type(tag) is not int or tag not in TYPES:
        raise DecodeError(f"envelope: unknown type tag {tag!r}")
    return TYPES[tag].from_wire(payload)
