"""Decoding vLLM's KV-cache event batches (the ZMQ publisher's payloads), pure.

The publisher (`vllm/distributed/kv_events.py`, `ZmqEventPublisher`) sends
multipart messages `(topic, seq, payload)`: `seq` an 8-byte big-endian
unsigned counter from 0, `payload` a msgspec-msgpack `EventBatch(ts, events,
data_parallel_rank)` whose events are tagged structs:

    BlockStored(block_hashes, parent_block_hash, token_ids, block_size, lora_id,
                medium, lora_name, extra_keys, group_idx, kv_cache_spec_kind,
                kv_cache_spec_sliding_window)
    BlockRemoved(block_hashes, medium, group_idx)
    AllBlocksCleared()

Two encodings are in the field, and a daemon may front either during an engine
rollout, so both are read:

- up to vLLM 0.23 every struct is `array_like`: a batch is `[ts, events]` or
  `[ts, events, dp_rank]`, an event `["BlockStored", hashes, parent, ...]`
  with trailing defaults omitted (`omit_defaults`);
- after vLLM PR #42892 (2026-06) events are maps with the tag under "type",
  `{"type": "BlockStored", "block_hashes": [...], ...}`; the batch envelope
  is an array in released versions and a map on vLLM main, so both are read.

Block hashes are `bytes` (sha256 or xxhash digests, vLLM's default since
0.11) or `int` (`VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES`, or Python `hash()` on
older releases, which may be negative). Both are normalised to the unsigned
64-bit int vLLM itself derives from bytes (`maybe_convert_block_hash`: the
big-endian value masked to 64 bits), so one engine hash has one key whatever
the setting.

Errors: anything structurally wrong raises `KVEventDecodeError` (a
`ValueError`), never anything else; an event with an unknown tag (a newer
vLLM) is skipped and counted, not an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

_MASK64 = (1 << 64) - 1
#: The longest hash digest accepted as bytes (sha256 is 32, xxh3-128 is 16).
MAX_HASH_BYTES = 64
#: A payload larger than this is refused before decoding (vLLM batches one
#: engine step's events: kilobytes, rarely a megabyte).
MAX_PAYLOAD_BYTES = 64 << 20

# Field order of the array-like encodings, after the tag (vLLM 0.23's structs).
_STORED_FIELDS = (
    "block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium",
    "lora_name", "extra_keys", "group_idx", "kv_cache_spec_kind",
    "kv_cache_spec_sliding_window",
)
_REMOVED_FIELDS = ("block_hashes", "medium", "group_idx")
_BATCH_FIELDS = ("ts", "events", "data_parallel_rank")


class KVEventDecodeError(ValueError):
    """A payload that is not a KV event batch (the engine's fault, or a stranger's)."""


@dataclass(frozen=True)
class BlockStored:
    """Full blocks the engine cached: `block_hashes[i]` holds
    `token_ids[i*block_size:(i+1)*block_size]`; the first block's parent is
    `parent_block_hash` (None: the sequence's first block)."""

    block_hashes: tuple[int, ...]
    parent_block_hash: int | None
    token_ids: tuple[int, ...] | None  # None: not plain ints (e.g. SGLang's EAGLE bigrams)
    block_size: int
    lora: bool  # lora_id or lora_name set: the hash covers the adapter too
    extra_keys: bool  # some block hashed extra keys (multimodal, cache_salt, LoRA)
    medium: str | None  # "GPU" (or None on old engines); "CPU" etc. for offloaded copies
    group_idx: int | None  # KV-cache group (hybrid models have several)


@dataclass(frozen=True)
class BlockRemoved:
    block_hashes: tuple[int, ...]
    medium: str | None
    group_idx: int | None


@dataclass(frozen=True)
class AllBlocksCleared:
    pass


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass(frozen=True)
class EventBatch:
    ts: float
    events: tuple[KVEvent, ...]
    data_parallel_rank: int | None
    unknown_events: int  # events with a tag this decoder does not know (skipped)


def normalise_hash(value: object) -> int:
    """An engine block hash (bytes or int) as vLLM's unsigned 64-bit form."""
    if isinstance(value, bytes):
        if not 0 < len(value) <= MAX_HASH_BYTES:
            raise KVEventDecodeError(f"a block hash of {len(value)} bytes")
        return int.from_bytes(value, "big") & _MASK64
    if type(value) is int:
        if not -(1 << 63) <= value <= _MASK64:
            raise KVEventDecodeError("a block hash out of the 64-bit range")
        return value & _MASK64
    raise KVEventDecodeError(f"a block hash of type {type(value).__name__}")


def decode_event_batch(payload: bytes) -> EventBatch:
    """Decode one payload; raises KVEventDecodeError for anything malformed."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise KVEventDecodeError("payload is not bytes")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise KVEventDecodeError(f"payload of {len(payload)} bytes is over the limit")
    try:
        # msgpack bounds every container by the payload's own length; ext types
        # (which vLLM never sends) come back as ExtType and fail the checks below.
        raw = msgpack.unpackb(payload, raw=False, strict_map_key=False, use_list=True)
    except Exception as e:  # msgpack raises several types (ValueError, ExtraData, ...)
        raise KVEventDecodeError(f"not msgpack: {e}") from None
    fields = _fields(raw, _BATCH_FIELDS, "batch")
    ts = fields.get("ts")
    if not isinstance(ts, int | float) or isinstance(ts, bool):
        raise KVEventDecodeError("batch ts is not a number")
    events_raw = fields.get("events")
    if not isinstance(events_raw, list):
        raise KVEventDecodeError("batch events is not a list")
    rank = _opt_int(fields.get("data_parallel_rank"), "data_parallel_rank")
    events: list[KVEvent] = []
    unknown = 0
    for item in events_raw:
        event = _decode_event(item)
        if event is None:
            unknown += 1
        else:
            events.append(event)
    return EventBatch(float(ts), tuple(events), rank, unknown)


def _decode_event(item: Any) -> KVEvent | None:
    tag: Any
    body: Any
    if isinstance(item, list):
        if not item or not isinstance(item[0], str):
            raise KVEventDecodeError("an event array without a tag")
        tag, body = item[0], item[1:]
    elif isinstance(item, dict):
        tag = item.get("type")
        if not isinstance(tag, str):
            raise KVEventDecodeError("an event map without a string 'type'")
        body = item
    else:
        raise KVEventDecodeError(f"an event of type {type(item).__name__}")
    if tag == "BlockStored":
        f = _fields(body, _STORED_FIELDS, tag)
        hashes = _hashes(f.get("block_hashes"))
        parent = f.get("parent_block_hash")
        block_size = f.get("block_size")
        if type(block_size) is not int or block_size <= 0:
            raise KVEventDecodeError("BlockStored.block_size is not a positive int")
        tokens = f.get("token_ids")
        if not isinstance(tokens, list):
            raise KVEventDecodeError("BlockStored.token_ids is not a list")
        plain = all(type(t) is int for t in tokens)
        extra = f.get("extra_keys")
        if extra is not None and not isinstance(extra, list):
            raise KVEventDecodeError("BlockStored.extra_keys is not a list")
        return BlockStored(
            block_hashes=hashes,
            parent_block_hash=None if parent is None else normalise_hash(parent),
            token_ids=tuple(tokens) if plain else None,
            block_size=block_size,
            lora=f.get("lora_id") is not None or f.get("lora_name") is not None,
            extra_keys=extra is not None and any(k is not None for k in extra),
            medium=_opt_str(f.get("medium"), "medium"),
            group_idx=_opt_int(f.get("group_idx"), "group_idx"),
        )
    if tag == "BlockRemoved":
        f = _fields(body, _REMOVED_FIELDS, tag)
        return BlockRemoved(
            block_hashes=_hashes(f.get("block_hashes")),
            medium=_opt_str(f.get("medium"), "medium"),
            group_idx=_opt_int(f.get("group_idx"), "group_idx"),
        )
    if tag == "AllBlocksCleared":
        return AllBlocksCleared()
    return None  # a newer event type: skipped, counted by the caller


def _fields(body: Any, names: Sequence[str], what: str) -> Mapping[str, Any]:
    """A struct's fields by name, from its array form (positional, trailing
    defaults omitted) or its map form (extra keys ignored)."""
    if isinstance(body, dict):
        return body
    if isinstance(body, list):
        # Longer arrays come from newer engines with fields appended: ignored.
        return dict(zip(names, body, strict=False))
    raise KVEventDecodeError(f"{what} is neither an array nor a map")


def _hashes(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise KVEventDecodeError("block_hashes is not a list")
    return tuple(normalise_hash(h) for h in value)


def _opt_int(value: Any, name: str) -> int | None:
    if value is None or type(value) is int:
        return value
    raise KVEventDecodeError(f"{name} is not an int")


def _opt_str(value: Any, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise KVEventDecodeError(f"{name} is not a string")
