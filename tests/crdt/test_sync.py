"""Version-vector sync for causal CRDTs: `a.merge(b.delta_since(a.context_digest()))`
equals the full merge `a ⊔ b`, with the digest and the answer through the wire."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdt import (
    ContextDigest,
    DecodeError,
    ORMap,
    ORSet,
    decode,
    encode,
    unpack_limited,
)

from .histories import KINDS, Kind, history, join_all, run
from .test_codec_fuzz import PRIMITIVES

CAUSAL = ["ORSet", "ORMap[LWWRegister]", "ORMap[GCounter]"]


def sync_through_wire(a: Any, b: Any) -> Any:
    """Ask `b` for what `a` lacks, as two peers would; returns the decoded answer."""
    syn = msgpack.packb(a.context_digest().to_wire(), use_bin_type=True)
    digest = ContextDigest.from_wire(unpack_limited(syn))
    assert digest == a.context_digest()
    return decode(encode(b.delta_since(digest)))


def states(kind: Kind, data: st.DataObject) -> list[Any]:
    """Replica states from a history, plus joins of random subsets of its deltas
    (out-of-order delivery: contexts with clouds)."""
    r = run(kind, data.draw(history(kind)))
    out = list(r.replicas.values())
    for _ in range(2):
        subset = data.draw(st.lists(st.sampled_from(r.deltas), max_size=8)) if r.deltas else []
        out.append(join_all(kind, subset))
    return out


@pytest.mark.parametrize("name", CAUSAL)
@given(data=st.data())
def test_delta_since_joins_to_the_full_merge(name: str, data: st.DataObject) -> None:
    kind = KINDS[name]
    pool = states(kind, data)
    a = data.draw(st.sampled_from(pool)).copy()
    b = data.draw(st.sampled_from(pool))
    third = data.draw(st.sampled_from(pool))

    delta = sync_through_wire(a, b)
    full = a.copy()
    full.merge(b)
    synced = a.copy()
    synced.merge(delta)
    assert synced == full
    assert encode(synced) == encode(full)
    # It is a delta of b (b already includes it), so forwarding it is safe:
    # a third replica joining it never moves past what joining b gives.
    assert join_all(kind, [b, delta]) == b
    assert join_all(kind, [third, delta, b]) == join_all(kind, [third, b])
    # Least: it holds no entry the asker has already seen.
    assert not [d for d in delta._index if a.context.contains(d)]


@pytest.mark.parametrize("name", CAUSAL)
@given(data=st.data())
def test_in_sync_replicas_exchange_an_empty_delta(name: str, data: st.DataObject) -> None:
    kind = KINDS[name]
    r = run(kind, data.draw(history(kind)))
    full = join_all(kind, list(r.replicas.values()))
    delta = full.delta_since(full.copy().context_digest())
    assert len(delta) == 0 and delta.context.dot_count() == 0


def test_delta_since_sends_only_the_change() -> None:
    a = ORSet()
    for i in range(1000):
        a.add("a", f"e{i}")
    b = a.copy()
    b.remove("b", "e5")
    b.add("b", "new")
    delta = b.delta_since(a.context_digest())
    assert delta.value == frozenset({"new"})
    assert len(encode(delta)) < 40 < len(encode(b)) // 100
    a.merge(delta)
    assert a == b


def test_a_replica_far_behind_gets_the_full_state() -> None:
    a, b = ORSet(), ORSet()
    a.add("w", "x")
    b.merge(a)
    for i in range(10_000):
        b.remove("w", f"e{i - 1}")
        b.add("w", f"e{i}")
    delta = b.delta_since(a.context_digest())
    # 10,000 unseen dots, one held: the answer is b itself, not a huge cloud.
    assert delta == b
    a.merge(delta)
    assert a == b


def test_ormap_delta_carries_values() -> None:
    a = ORMap()
    a.update("a", "k", lambda reg: reg.set("a", "v1", 1))
    b = a.copy()
    b.update("b", "k", lambda reg: reg.set("b", "v2", 2))
    delta = sync_through_wire(a, b)
    a.merge(delta)
    assert a == b and a.value == {"k": "v2"}


@given(data=st.data())
def test_digest_round_trips(data: st.DataObject) -> None:
    for s in states(KINDS["ORSet"], data):
        dg = s.context_digest()
        assert ContextDigest.from_wire(dg.to_wire()) == dg


@given(payload=PRIMITIVES)
def test_digest_from_random_structures_raises_only_decode_error(payload: Any) -> None:
    try:
        dg = ContextDigest.from_wire(payload)
    except DecodeError:
        return
    assert ContextDigest.from_wire(dg.to_wire()) == dg


@pytest.mark.parametrize(
    "wire,reason",
    [
        ([["a"], [0, 1], [], [[0, 1, 2]]], "held dot"),  # held (a, 2) never seen
        ([["a"], [0, 1], [[0, 3, 1], [0, 5, 1]], []], "out of order"),
        ([["a"], [0, 1], [[0, 3, 0]], []], "empty"),
        ([["a"], [0, 1], [[0, 3, 1, 1, 1]], []], "touch"),  # runs 3 and 4: not maximal
        ([["a"], [0, 1], [[0, 3, 2**40]], []], "out of range"),
        ([["a", "a"], [], [], []], "duplicate"),
        ([["a"], [0, 0], [], []], "zero"),
    ],
)
def test_malformed_digests_are_named(wire: Any, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        ContextDigest.from_wire(wire)
