"""Each CRDT against a few-line model of what its type means (issue #21, item 3).

The law tests show that replicas converge; these show *what* they converge
to. A history runs as in `histories`, while every replica also keeps its
causal history (the ids of the operations it has seen, directly or through a
sync). After all deltas are delivered, in any order and with duplicates, the
value must be what the model computes from the operations alone:

- counters: the sum of every increment (minus every decrement);
- LWW: the greatest (ts, replica) wins; on a tie a removal beats a write,
  then the greater encoded value wins;
- ORSet / ORMap keys: add wins: a key is present iff some add (update) of it
  is in the causal history of no remove of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from .histories import KINDS, REPLICAS, Kind, history, join_all


@dataclass(frozen=True)
class Op:
    id: int
    replica: str
    args: tuple[Any, ...]
    seen: frozenset[int]  # the ids in the replica's causal history when it ran


def run_with_history(kind: Kind, steps: list[tuple[Any, ...]]) -> tuple[list[Op], list[Any]]:
    replicas = {r: kind.make() for r in REPLICAS}
    known: dict[str, set[int]] = {r: set() for r in REPLICAS}
    ops: list[Op] = []
    deltas: list[Any] = []
    for step in steps:
        if step[0] == "op":
            _, r, args = step
            ops.append(Op(len(ops), r, args, frozenset(known[r])))
            known[r].add(len(ops) - 1)
            deltas.append(kind.apply(replicas[r], r, args))
        else:
            _, src, dst = step
            replicas[dst].merge(replicas[src])
            known[dst] |= known[src]
    return ops, deltas


def _packed(value: Any) -> bytes:
    out: bytes = msgpack.packb(value, use_bin_type=True)
    return out


def model_counter(ops: list[Op]) -> int:
    return sum(-op.args[1] if op.args[0] == "dec" else op.args[1] for op in ops)


def model_register(ops: list[Op]) -> Any:
    if not ops:
        return None
    best = max(ops, key=lambda op: (op.args[1], op.replica, _packed(op.args[0])))
    return best.args[0]


def model_lwwmap(ops: list[Op]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in {op.args[1] for op in ops}:
        writes = [op for op in ops if op.args[1] == key]
        best = max(
            writes,
            key=lambda op: (
                op.args[3],
                op.replica,
                op.args[0] == "remove",
                b"" if op.args[0] == "remove" else _packed(op.args[2]),
            ),
        )
        if best.args[0] == "set":
            out[key] = best.args[2]
    return out


def model_add_wins(ops: list[Op], key_of: int) -> frozenset[Any]:
    """Keys with an add that no remove of the same key had in its causal history."""
    removes = [op for op in ops if op.args[0] == "remove"]
    present = set()
    for op in ops:
        if op.args[0] == "remove":
            continue
        key = op.args[key_of]
        if not any(r.args[key_of] == key and op.id in r.seen for r in removes):
            present.add(key)
    return frozenset(present)


def model_value(name: str, ops: list[Op]) -> Any:
    if name in ("GCounter", "PNCounter"):
        return model_counter(ops)
    if name == "LWWRegister":
        return model_register(ops)
    if name == "LWWMap":
        return model_lwwmap(ops)
    if name == "ORSet":
        return model_add_wins(ops, key_of=1)
    return model_add_wins(ops, key_of=1)  # ORMap: the model covers its keys


@pytest.mark.parametrize("name", sorted(KINDS))
@given(data=st.data())
def test_value_after_any_delivery_order_matches_the_model(name: str, data: st.DataObject) -> None:
    kind = KINDS[name]
    ops, deltas = run_with_history(kind, data.draw(history(kind)))
    dupes = data.draw(st.lists(st.sampled_from(deltas), max_size=6)) if deltas else []
    delivered = join_all(kind, data.draw(st.permutations(deltas + dupes)))
    value = delivered.value
    if name.startswith("ORMap"):
        value = frozenset(value)
    assert value == model_value(name, ops)


def test_the_add_wins_model_tracks_causality() -> None:
    # a adds x; b removes x without having seen the add: the add survives.
    concurrent = [Op(0, "a", ("add", "x"), frozenset()), Op(1, "b", ("remove", "x"), frozenset())]
    assert model_add_wins(concurrent, key_of=1) == frozenset({"x"})
    # Once the remove has seen the add, the add is gone.
    observed = [concurrent[0], Op(1, "b", ("remove", "x"), frozenset({0}))]
    assert model_add_wins(observed, key_of=1) == frozenset()
