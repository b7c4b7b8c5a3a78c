"""GossipNode.set_keys: several keys of a node's record as one change (one
push carries them all), all or nothing against the state limit."""

from __future__ import annotations

import pytest

from gossip.config import GossipConfig
from gossip.errors import StateTooLarge
from gossip.wire import MsgType, decode_message

from .helpers import KEY, cluster


def _pushes(out: list) -> list:  # type: ignore[type-arg]
    from gossip.crypto import Opener

    opener = Opener(KEY)
    msgs = [decode_message(opener.open(o.data)[0], 1 << 20) for o in out]
    return [m for m in msgs if m.type == MsgType.PUSH]


def test_one_push_carries_every_key_of_the_change() -> None:
    net = cluster(8)
    node = net.nodes["node0"].node
    node.take_outgoing()
    node.set_keys({"a": 1, "b": "two", "c": [3]}, net.now)
    pushes = _pushes(node.take_outgoing())
    assert pushes, "the change is pushed at once"
    assert len(pushes) == node.config.eager_fanout  # one push to each eager peer
    for m in pushes:
        (delta,) = [d for d in m.deltas if d.name == "node0"]
        assert {u.key for u in delta.updates} == {"a", "b", "c"}
    net.run_for(1.0)
    for sn in net.live():
        rec = sn.node.record("node0")
        assert rec is not None and rec.get("a") == 1 and rec.get("c") == [3]


def test_keys_one_at_a_time_push_once_each() -> None:
    net = cluster(8)
    node = net.nodes["node0"].node
    node.take_outgoing()
    for k in ("a", "b", "c"):
        node.set_key(k, 1, net.now)
    assert len(_pushes(node.take_outgoing())) == 3 * node.config.eager_fanout


def test_set_keys_is_all_or_nothing_at_the_state_limit() -> None:
    net = cluster(2, config=GossipConfig(max_node_state=4096))
    node = net.nodes["node0"].node
    node.set_keys({"small": "x"}, net.now)
    version = node.own.max_version
    with pytest.raises(StateTooLarge):
        node.set_keys({"big": "y" * 5000, "other": "z"}, net.now)
    assert node.own.get("big") is None and node.own.get("other") is None
    assert node.own.max_version == version
    node.set_keys({}, net.now)  # nothing to do
    assert node.own.max_version == version
