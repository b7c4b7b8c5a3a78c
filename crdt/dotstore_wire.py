"""Columnar wire form of a dot store (ORSet, ORMap), wire version 2.

    [replicas, vv, cloud, counts, gaps, keys, (payloads,) multi]

- `replicas`: sorted replica ids; everything else names them by index.
- `vv`: flat [ridx, n, ...]; `cloud`: runs (see `context.runs_wire`).
- Keys with one dot, sorted by dot: `counts[i]` is how many belong to
  replica i, `gaps` their counters as differences (each group from 0), `keys`
  the keys in the same order, `payloads` (ORMap) their values' wire forms.
  Sorted counters make the gaps one byte each, and a column is checked with
  one C-level pass (`set(map(type, col))`, `min`, `max`) instead of a call per
  field; the whole column set becomes dicts through `zip`, with no per-entry
  Python frame.
- `multi`: the rare keys with several dots, flat and sorted by key:
  [key, ndots, (ridx, counter(, payload)) * ndots, ...], ridx ascending.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from collections.abc import Callable
from itertools import accumulate, repeat
from operator import itemgetter, sub
from typing import Any, TypeVar

from ._wire import MAX_UINT, expect_list, expect_uint
from .base import CRDT
from .context import Dot, parse_replicas, replica_at
from .dotstore import DotStore
from .errors import DecodeError

K = TypeVar("K")
_first = itemgetter(0)
_second = itemgetter(1)


def store_to_wire(store: DotStore[Any], sort_key: Callable[[Any], Any]) -> list[Any]:
    ctx = store._ctx
    replicas = sorted(ctx.replicas())
    ix = {r: i for i, r in enumerate(replicas)}
    payloads = store._payload if store._HAS_PAYLOAD else None
    dots = sorted(store._single.values())
    keys = list(map(store._index.__getitem__, dots))
    per_replica = Counter(map(_first, dots))
    counts = [per_replica.get(r, 0) for r in replicas]
    counters = list(map(_second, dots))
    gaps = counters[:1]
    gaps += map(sub, counters[1:], counters)
    start = 0
    for n in counts:  # each replica's first counter counts from 0
        if n:
            gaps[start] = counters[start]
            start += n
    multi: list[Any] = []
    for key in sorted(store._multi, key=sort_key):
        held = store._multi[key]
        multi += (key, len(held))
        for r in sorted(held):
            multi += (ix[r], held[r])
            if payloads is not None:
                multi.append(payloads[(r, held[r])].to_wire())
    parts: list[Any] = [replicas, ctx.vv_wire(ix), ctx.cloud_wire(ix), counts, gaps, keys]
    if payloads is not None:
        parts.append([payloads[d].to_wire() for d in dots])
    parts.append(multi)
    return parts


def _uint_column(obj: object, what: str, low: int) -> list[int]:
    col = expect_list(obj, what)
    if col and (set(map(type, col)) != {int} or min(col) < low or max(col) > MAX_UINT):
        raise DecodeError(f"{what}: expected unsigned integers >= {low}")
    return col


def load_store(
    store: DotStore[K],
    parts: list[Any],
    key_types: frozenset[type],
    parse_payload: Callable[[object], CRDT] | None,
) -> None:
    """Fill an empty store from its wire parts; raises DecodeError."""
    what = type(store).__name__
    has_payload = parse_payload is not None
    if len(parts) != (8 if has_payload else 7):
        raise DecodeError(f"{what}: wrong number of parts")
    replicas = parse_replicas(parts[0], what)
    ctx = store._ctx
    ctx.load_wire(parts[1], parts[2], replicas, what)
    counts = _uint_column(parts[3], f"{what} counts", 0)
    gaps = _uint_column(parts[4], f"{what} gaps", 1)
    keys = expect_list(parts[5], f"{what} keys")
    if len(counts) != len(replicas) or sum(counts) != len(gaps) or len(keys) != len(gaps):
        raise DecodeError(f"{what}: columns disagree in length")
    if keys and not set(map(type, keys)) <= key_types:
        raise DecodeError(f"{what}: a key has the wrong type")
    dots: list[Dot] = []
    start = 0
    for r, n in zip(replicas, counts, strict=True):
        if not n:
            continue
        counters = list(accumulate(gaps[start : start + n]))
        start += n
        if counters[-1] > MAX_UINT:
            raise DecodeError(f"{what}: dot counter out of range")
        # Held dots must have been seen; past the vector that means the cloud.
        for c in counters[bisect_right(counters, ctx.vv.get(r, 0)) :]:
            if not ctx.contains((r, c)):
                raise DecodeError(f"{what}: held dot missing from the causal context")
        dots += zip(repeat(r, n), counters, strict=True)
    store._single = dict(zip(keys, dots, strict=True))
    if len(store._single) != len(keys):
        raise DecodeError(f"{what}: duplicate key")
    store._index = dict(zip(dots, keys, strict=True))
    if parse_payload is not None:
        values = expect_list(parts[6], f"{what} payloads")
        if len(values) != len(dots):
            raise DecodeError(f"{what}: columns disagree in length")
        store._payload = dict(zip(dots, map(parse_payload, values), strict=True))
    _load_multi(store, expect_list(parts[-1], f"{what} multi"), replicas, key_types, parse_payload)


def _load_multi(
    store: DotStore[K],
    flat: list[Any],
    replicas: list[str],
    key_types: frozenset[type],
    parse_payload: Callable[[object], CRDT] | None,
) -> None:
    what = type(store).__name__
    i, n = 0, len(flat)

    def take() -> Any:
        nonlocal i
        if i >= n:
            raise DecodeError(f"{what}: truncated entries")
        i += 1
        return flat[i - 1]

    while i < n:
        key = take()
        if type(key) not in key_types:
            raise DecodeError(f"{what}: a key has the wrong type")
        if key in store._single or key in store._multi:
            raise DecodeError(f"{what}: duplicate key")
        count = expect_uint(take(), f"{what} dot count")
        if count < 2:
            raise DecodeError(f"{what}: a multi-dot entry holds at least two dots")
        held: dict[str, int] = {}
        last = -1
        for _ in range(count):
            ridx = expect_uint(take(), f"{what} replica index")
            if ridx <= last:
                raise DecodeError(f"{what}: an entry's replicas are out of order")
            last = ridx
            d = (replica_at(replicas, ridx, what), expect_uint(take(), f"{what} dot counter"))
            if d[1] == 0 or d in store._index:
                raise DecodeError(f"{what}: duplicate dot")
            if not store._ctx.contains(d):
                raise DecodeError(f"{what}: held dot missing from the causal context")
            held[d[0]] = d[1]
            store._index[d] = key
            if parse_payload is not None:
                store._payload[d] = parse_payload(take())
        store._multi[key] = held
