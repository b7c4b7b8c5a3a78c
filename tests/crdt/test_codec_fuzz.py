"""Hostile bytes: decoding raises nothing but DecodeError, and never half-applies."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdt import TYPES, WIRE_VERSION, DecodeError, decode, encode

from .histories import KINDS, history, run

KIND_NAMES = sorted(KINDS)


def _decode_or_reject(blob: bytes) -> None:
    try:
        value = decode(blob)
    except DecodeError:
        return
    # Anything accepted must be a complete, self-consistent value.
    assert decode(encode(value)) == value


@given(blob=st.binary(max_size=256))
def test_random_bytes_raise_only_decode_error(blob: bytes) -> None:
    _decode_or_reject(blob)


@pytest.mark.parametrize("name", KIND_NAMES)
@given(data=st.data())
def test_mutated_encodings_raise_only_decode_error(name: str, data: st.DataObject) -> None:
    kind = KINDS[name]
    state = run(kind, data.draw(history(kind, max_size=12))).replicas["a"]
    blob = bytearray(encode(state))
    for _ in range(data.draw(st.integers(1, 4))):
        how = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        pos = data.draw(st.integers(0, max(0, len(blob) - 1)))
        if how == "flip" and blob:
            blob[pos] ^= data.draw(st.integers(1, 255))
        elif how == "truncate":
            del blob[pos:]
        elif how == "insert":
            blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
        elif blob:
            del blob[pos]
    _decode_or_reject(bytes(blob))


PRIMITIVES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False),
        st.text(max_size=4),
        st.binary(max_size=4),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=30,
)


@pytest.mark.parametrize("tag", sorted(TYPES))
@given(payload=PRIMITIVES)
def test_from_wire_on_random_structures_raises_only_decode_error(tag: int, payload: Any) -> None:
    try:
        value = TYPES[tag].from_wire(payload)
    except DecodeError:
        return
    # Accepted structures rebuild to the same state through the codec.
    assert decode(encode(value)) == value


@given(payload=PRIMITIVES, tag=st.sampled_from(sorted(TYPES)))
def test_envelope_with_random_payload(payload: Any, tag: int) -> None:
    try:
        blob = msgpack.packb([WIRE_VERSION, tag, payload], use_bin_type=True)
    except (OverflowError, ValueError):
        return
    _decode_or_reject(blob)


@pytest.mark.parametrize(
    "blob,reason",
    [
        # Version 1 (the row-wise payloads before issue #23) is retired.
        (msgpack.packb([1, 1, {}]), "version"),
        (msgpack.packb([3, 1, {}]), "version"),
        (msgpack.packb([2, 99, {}]), "type tag"),
        (msgpack.packb([2, 1]), "envelope"),
        (msgpack.packb([2, 1, {"a": -1}]), "unsigned"),
        (msgpack.packb([2, 1, {"a": True}]), "unsigned"),
        (b"\xd6\xff\x00\x00\x00\x00", "ext"),
        (msgpack.packb([2, 1, {}]) + b"\x00", "ExtraData"),
        (b"\x91" * 5000 + b"\xc0", "msgpack"),
    ],
)
def test_specific_malformed_inputs_are_named(blob: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode(blob)


def test_size_limit_is_enforced() -> None:
    big = encode(run(KINDS["GCounter"], [("op", "a", ("inc", 1))]).replicas["a"])
    with pytest.raises(DecodeError, match="limit"):
        decode(big, max_bytes=len(big) - 1)


def test_orset_held_dot_outside_context_is_rejected() -> None:
    # [replicas, vv, cloud, counts, gaps, keys, multi]: dot (a, 5) held, never seen.
    with pytest.raises(DecodeError, match="causal context"):
        decode(msgpack.packb([2, 5, [["a"], [0, 1], [], [1], [5], ["x"], []]]))
    # The same held dot inside the cloud is fine.
    ok = decode(msgpack.packb([2, 5, [["a"], [0, 1], [[0, 5, 1]], [1], [5], ["x"], []]]))
    assert ok.value == frozenset({"x"})
