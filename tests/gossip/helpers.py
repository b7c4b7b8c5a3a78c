"""Helpers for driving gossip cores without sockets."""

from __future__ import annotations

import random

from gossip.config import GossipConfig
from gossip.core import Datagram, GossipNode, StreamFrame
from gossip.crypto import Keyring
from gossip.wire import KeyUpdate, NodeDelta
from sim.network import LinkModel, SimNetwork

KEY = Keyring.generate(random.Random(42))


def cluster(
    n: int,
    seed: int = 1,
    link: LinkModel | None = None,
    config: GossipConfig | None = None,
    keyring: Keyring | None = KEY,
    settle: float = 20.0,
) -> SimNetwork:
    """n nodes joined through node0, run until every node sees every other."""
    net = SimNetwork(seed, link=link, config=config, keyring=keyring)
    net.add_node("node0")
    for i in range(1, n):
        net.add_node(f"node{i}", join=["node0"])
    ok = net.run_until_true(
        lambda: all(len(sn.node.live_members()) == n for sn in net.live()), settle, 0.05
    )
    assert ok, "cluster did not form"
    return net


def populate(node: GossipNode, members: int, value_bytes: int, now: float) -> None:
    """Give `node` a view of many members with sizeable state, without a network."""
    for i in range(members):
        name = f"member-{i:05d}"
        delta = NodeDelta(
            name,
            1,
            ("10.1.0.1", 10_000 + i),
            0,
            (KeyUpdate("blob", 1, "x" * value_bytes), KeyUpdate("zone", 2, f"z{i % 7}")),
            reset=True,
        )
        node.warm_start([delta], now)


def sizes(outgoing: list[Datagram | StreamFrame]) -> list[int]:
    return [len(o.data) for o in outgoing if isinstance(o, Datagram)]
