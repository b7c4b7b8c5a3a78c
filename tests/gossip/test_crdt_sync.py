"""Anti-entropy of causal CRDTs by context digest (GossipConfig.crdt_digest_sync).

After a partition the two halves hold different ORSets. With digest sync each
side sends its context digest and gets back just what it lacks; without it,
each anti-entropy exchange ships the whole state both ways.
"""

from __future__ import annotations

import random

import msgpack

from crdt import GCounter, ORSet, encode
from gossip.config import GossipConfig
from gossip.core import GossipNode
from gossip.wire import MsgType
from sim.network import SimNetwork

from .helpers import KEY

ITEMS = 3000


def _healed(digest_sync: bool, seed: int = 3) -> tuple[SimNetwork, int]:
    """Bytes sent from the heal of a partition until every ORSet agrees."""
    cfg = GossipConfig(crdt_digest_sync=digest_sync)
    net = SimNetwork(seed, config=cfg, keyring=KEY)
    names = [f"node{i}" for i in range(4)]
    for i, name in enumerate(names):
        net.add_node(name, join=["node0"] if i else None)
        net.nodes[name].node.register_crdt("models", ORSet())
    net.run_for(3)
    first = net.nodes["node0"].node
    models = first.crdt("models")
    assert isinstance(models, ORSet)
    delta = ORSet()
    for i in range(ITEMS):
        delta.merge(models.add(first.name, f"m{i}"))
    first.update_crdt("models", delta, net.now)
    assert net.run_until_true(net.converged, 10)
    net.partition({"node0", "node1"}, {"node2", "node3"})
    for k, name in enumerate(names):
        node = net.nodes[name].node
        s = node.crdt("models")
        assert isinstance(s, ORSet)
        node.update_crdt("models", s.add(node.name, f"new-{name}"), net.now)
        node.update_crdt("models", s.remove(node.name, f"m{k}"), net.now)
    net.run_for(4)  # every push retransmit is spent inside the partition
    assert not net.converged()
    net.heal()
    before = sum(net.bytes_sent.values())
    assert net.run_until_true(net.converged, 60)
    return net, sum(net.bytes_sent.values()) - before


def test_digest_sync_converges_to_the_join_and_sends_less() -> None:
    on, sent_on = _healed(True)
    off, sent_off = _healed(False)
    want = frozenset([f"m{i}" for i in range(4, ITEMS)] + [f"new-node{i}" for i in range(4)])
    for net in (on, off):
        assert all(sn.node.crdt("models").value == want for sn in net.live())
    assert sent_on * 3 < sent_off, (sent_on, sent_off)


def test_a_bad_digest_is_dropped_whole_and_counted() -> None:
    def node(name: str, port: int) -> GossipNode:
        n = GossipNode(
            name, ("10.0.0.1", port), rng=random.Random(port), now=0.0, generation=1, keyring=KEY
        )
        n.register_crdt("models", ORSet())
        n.register_crdt("count", GCounter())
        return n

    a, b = node("a", 7000), node("b", 7001)

    def send(digests: tuple[tuple[str, bytes], ...]) -> None:
        b.take_outgoing()
        x = ORSet()
        msg = b._msg(
            MsgType.PUSH, crdts=(("models", encode(x.add("b", "x"))),), crdt_digests=digests
        )
        b._send(a.addr, msg, 0.1)
        for out in b.take_outgoing():
            a.receive_datagram(out.data, b.addr, 0.1)

    good = msgpack.packb(ORSet().context_digest().to_wire())
    for digests in (
        (("models", b"\xc1garbage"),),  # not msgpack
        (("models", msgpack.packb([1, 2])),),  # not a digest
        (("count", good),),  # not a causal CRDT
        (("unknown", good),),  # not registered here
    ):
        before = a.counters["dropped_bad_payload"]
        send(digests)
        assert a.counters["dropped_bad_payload"] == before + 1, digests
        assert a.crdt("models").value == frozenset()  # nothing half-applied
    a.take_outgoing()
    send((("models", good),))  # an empty digest: "I hold nothing"
    assert a.crdt("models").value == frozenset({"x"})
    # The digest is answered with what a holds and it lacks: a PUSH of x.
    answers = [o for o in a.take_outgoing() if o.dst == b.addr]
    assert answers
    for o in answers:
        b.receive_datagram(o.data, a.addr, 0.2)
    assert b.crdt("models").value == frozenset({"x"})
