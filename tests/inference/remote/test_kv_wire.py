"""Decoding vLLM's KV event payloads: real captures, both encodings, hostile bytes."""

from __future__ import annotations

import contextlib
from pathlib import Path

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference.remote.kv_wire import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVEventDecodeError,
    decode_event_batch,
    normalise_hash,
)
from tests.fakes.fake_kv import cleared, encode_batch, removed, stored

DATA = Path(__file__).parent / "data"


def test_real_vllm_0_32_payloads() -> None:
    """Captured from vLLM 0.32.0 on CPU (bench/real_vllm.py): a map-encoded event in an
    array batch, u64 int hashes, block size 32."""
    frames = msgpack.unpackb((DATA / "vllm-0.32.0-kv-events.msgpack").read_bytes())
    assert [seq for seq, _ in frames] == [0, 1]
    batch = decode_event_batch(frames[0][1])
    assert batch.data_parallel_rank == 0 and batch.unknown_events == 0
    (event,) = batch.events
    assert isinstance(event, BlockStored)
    assert event.block_size == 32 and len(event.block_hashes) == 5
    assert event.token_ids is not None and len(event.token_ids) == 5 * 32
    assert event.parent_block_hash is None and event.medium == "GPU" and event.group_idx == 0
    assert not event.lora and not event.extra_keys
    assert max(event.block_hashes) >= 2**63  # unsigned 64-bit values survive


@pytest.mark.parametrize("encoding", ["map", "array"])
def test_both_encodings(encoding: str) -> None:
    payload = encode_batch([
        stored([11, 12], None, list(range(32)), 16, encoding=encoding),
        removed([11], encoding=encoding),
        cleared(encoding),
    ], ts=5.0)
    batch = decode_event_batch(payload)
    assert batch.ts == 5.0
    s, r, c = batch.events
    assert isinstance(s, BlockStored) and s.block_hashes == (11, 12)
    assert s.token_ids == tuple(range(32)) and s.block_size == 16
    assert isinstance(r, BlockRemoved) and r.block_hashes == (11,)
    assert isinstance(c, AllBlocksCleared)


def test_map_batch_envelope_and_unknown_fields() -> None:
    """vLLM main drops array_like from the envelope too; newer fields are ignored."""
    payload = msgpack.packb({
        "ts": 1.0,
        "events": [
            {"type": "BlockStored", "block_hashes": [b"\x01" * 32], "parent_block_hash": None,
             "token_ids": [1, 2], "block_size": 2, "lora_id": None, "medium": "GPU",
             "cache_salt": "x", "kv_cache_spec_sliding_window": None},
            {"type": "SomethingNew", "x": 1},
        ],
        "data_parallel_rank": 3,
    })
    batch = decode_event_batch(payload)
    assert batch.data_parallel_rank == 3 and batch.unknown_events == 1
    (event,) = batch.events
    assert isinstance(event, BlockStored)
    # bytes hashes become vLLM's own int form: big-endian, low 64 bits
    assert event.block_hashes == (int.from_bytes(b"\x01" * 8, "big"),)


def test_hash_forms() -> None:
    assert normalise_hash(-1) == 2**64 - 1  # Python hash() on old vLLM is signed
    assert normalise_hash(b"\x00" * 24 + (5).to_bytes(8, "big")) == 5
    for bad in (b"", b"x" * 65, 2**64, 1.5, "ab", None):
        with pytest.raises(KVEventDecodeError):
            normalise_hash(bad)


def test_extra_keys_and_lora_are_flagged() -> None:
    payload = encode_batch([
        stored([1], None, list(range(16)), lora_id=7),
        stored([2], None, list(range(16)), extra_keys=[["salt"]]),
    ])
    a, b = decode_event_batch(payload).events
    assert isinstance(a, BlockStored) and a.lora
    assert isinstance(b, BlockStored) and b.extra_keys


@pytest.mark.parametrize("payload", [
    b"", b"\xc1", b"\x93", msgpack.packb(5), msgpack.packb([1.0]), msgpack.packb([1.0, 5]),
    msgpack.packb(["x", []]), msgpack.packb([1.0, [5]]), msgpack.packb([1.0, [[]]]),
    msgpack.packb([1.0, [["BlockStored", "no list"]]]),
    msgpack.packb([1.0, [["BlockStored", [1], None, [1, 2], -3, None]]]),
    msgpack.packb([1.0, [{"type": 5}]]), msgpack.packb([1.0, [], "rank"]),
    msgpack.packb([1.0, [["BlockRemoved", [1.5]]]]),
])
def test_malformed_payloads(payload: bytes) -> None:
    with pytest.raises(KVEventDecodeError):
        decode_event_batch(payload)


@given(st.binary(max_size=300))
def test_random_bytes_never_raise_anything_else(data: bytes) -> None:
    with contextlib.suppress(KVEventDecodeError):
        decode_event_batch(data)


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=5)
    | st.binary(max_size=40) | st.sampled_from(["BlockStored", "BlockRemoved", "AllBlocksCleared"]),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(
        st.sampled_from(["type", "block_hashes", "token_ids", "block_size", "events", "ts",
                         "parent_block_hash", "medium", "extra_keys"]), inner, max_size=5),
    max_leaves=30,
)


@given(st.lists(_values, max_size=4))
def test_structured_garbage_never_raises_anything_else(items: list[object]) -> None:
    with contextlib.suppress(KVEventDecodeError):
        decode_event_batch(msgpack.packb([1.0, items]))
