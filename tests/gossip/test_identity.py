"""Identity, clocks and the envelope across restarts and faults (issue #13,
items 1, 3, 6 and 8): every replica converges whatever happened to a node's
disk or clock, and no nonce repeats under the cluster key."""

from __future__ import annotations

import random

import pytest

from crdt import LWWMap, hlc_wall_ms
from gossip.config import GossipConfig
from gossip.core import GossipNode, StreamFrame
from gossip.crypto import DATAGRAM, STREAM, Keyring, Opener, Sealer
from gossip.errors import RemoteProtocolError
from gossip.status import next_generation
from gossip.wire import Message, MsgType, Status, decode_message, encode_message
from sim.network import SimNetwork

KEY = Keyring.generate(random.Random(1))


def _cluster(n: int, seed: int = 1) -> SimNetwork:
    net = SimNetwork(seed)
    net.add_node("node0")
    for i in range(1, n):
        net.add_node(f"node{i}", join=["node0"])
    assert net.run_until_true(
        lambda: all(len(sn.node.live_members()) == n for sn in net.live()), 10
    )
    return net


# ---------------------------------------------------------------- 1. generations


def test_next_generation_rises_whatever_happened_to_the_disk() -> None:
    wall = 1_767_225_600.0
    assert next_generation(None, wall) == int(wall * 1000)  # no disk, or wiped
    assert next_generation(5, wall) == int(wall * 1000)  # an old small counter
    future = int(wall * 1000) + 10**9  # saved when the clock ran far ahead
    assert next_generation(future, wall) == future + 1


def test_a_restart_at_a_lower_generation_moves_above_and_converges() -> None:
    """The reproduction from the issue, in the simulator: node1 restarted once,
    then again with its generation gone back (a wiped disk, a clock set back).
    Its peers must not keep its old identity alive, and its news must arrive."""
    net = _cluster(3)
    net.crash("node1")
    net.restart("node1", join=["node0"])  # generation 2
    assert net.run_until_true(lambda: net.nodes["node0"].node.members["node1"].generation == 2, 10)
    net.run_for(2)
    net.crash("node1")
    fresh = net.restart("node1", join=["node0"], generation=1)  # backwards
    net.run_for(0.5)
    net.local("node1", lambda node, now: node.set_key("tag:zone", "eu", now))

    def everyone_sees_it() -> bool:
        for sn in net.live():
            rec = sn.node.record("node1")
            if sn.name != "node1" and (rec is None or rec.get("tag:zone") != "eu"):
                return False
        return True

    assert net.run_until_true(everyone_sees_it, 10), "node1's change never arrived"
    assert fresh.generation > 2 and fresh.counters["generation_moves"] >= 1
    for sn in net.live():
        m = sn.node.members["node1"]
        assert m.generation == fresh.generation and m.status == Status.ALIVE


def test_an_ack_from_another_generation_is_not_credited() -> None:
    a = GossipNode("a", ("127.0.0.1", 1), rng=random.Random(1), now=0.0, generation=1)
    b = GossipNode("b", ("127.0.0.1", 2), rng=random.Random(2), now=0.0, generation=5)
    a.join([b.addr], 0.0)
    for out in a.take_outgoing():
        b.receive_datagram(out.data, a.addr, 0.01)
    for out in b.take_outgoing():
        a.receive_datagram(out.data, b.addr, 0.02)
    assert a.members["b"].generation == 5
    # b falls silent; a probes it (generation 5) and an older process of b's
    # name (generation 3, at the same address) answers the ping.
    ping = None
    t = 0.02
    while ping is None and t < 10:
        t += 0.05
        a.tick(t)
        for out in a.take_outgoing():
            msg = decode_message(Opener(None).open(out.data)[0], 65536)
            if out.dst == b.addr and msg.type == MsgType.PING:
                ping = msg
    assert ping is not None and ping.target_gen == 5
    old_b = GossipNode("b", ("127.0.0.1", 2), rng=random.Random(3), now=t, generation=3)
    ack = Message(MsgType.ACK, "b", 3, ("127.0.0.1", 2), seq=ping.seq)
    a.receive_datagram(Sealer(None, random.Random(4)).seal(encode_message(ack)), b.addr, t)
    assert a.counters["acks_other_generation"] == 1
    assert a.evidence("b", t + 0.01)["probing"]  # still waiting for generation 5
    # ...and the stale process is told its name is held at 5, so it moves above.
    for out in a.take_outgoing():
        if out.dst == b.addr:
            old_b.receive_datagram(out.data, a.addr, t + 0.02)
    assert old_b.generation == 6 and old_b.counters["generation_moves"] == 1


# ---------------------------------------------------------------- 3. clocks


def _lww_cluster(n: int, seed: int = 2) -> SimNetwork:
    net = _cluster(n, seed)
    for sn in net.nodes.values():
        sn.node.register_crdt("targets", LWWMap())
    return net


def _write(net: SimNetwork, name: str, value: int) -> None:
    def change(node: GossipNode, now: float) -> None:
        targets = node.crdt("targets")
        assert isinstance(targets, LWWMap)
        node.update_crdt("targets", targets.set(name, "m", value, node.timestamp(now)), now)

    net.local(name, change)


def test_merged_timestamps_feed_the_clock_so_a_later_write_wins() -> None:
    # node1's clock runs 2 s fast (within the bound): its write carries a
    # timestamp 2 s ahead. node2 writes half a second later, by real time:
    # its clock has seen node1's timestamp, so its write must win everywhere.
    net = _lww_cluster(3)
    net.set_clock("node1", 2.0)
    net.run_for(1)
    _write(net, "node1", 1)
    net.run_for(0.5)
    seen = net.nodes["node2"].node.crdt("targets")
    assert isinstance(seen, LWWMap) and seen.get("m") == 1
    assert net.nodes["node2"].node.hlc.last >= seen.max_timestamp()
    _write(net, "node2", 2)
    assert net.run_until_true(
        lambda: all(sn.node.crdt("targets").value == {"m": 2} for sn in net.live()), 5
    )


def test_a_timestamp_beyond_the_drift_bound_is_refused_and_the_fast_node_knows() -> None:
    net = _lww_cluster(4)
    net.set_clock("node3", 3600.0)  # an hour fast
    net.run_for(3)
    fast = net.nodes["node3"].node
    assert not fast.clock_healthy(net.local_time("node3"))
    offset, peers = fast.clock_offset(net.local_time("node3"))
    assert peers >= 2 and offset is not None and abs(offset - 3600) < 1
    healthy = net.nodes["node0"].node
    assert healthy.clock_healthy(net.now)
    _write(net, "node3", 99)  # written regardless (the daemon refuses it first)
    net.run_for(2)
    _write(net, "node1", 1)
    net.run_for(3)
    for name in ("node0", "node1", "node2"):
        node = net.nodes[name].node
        assert node.crdt("targets").value == {"m": 1}, name
        assert hlc_wall_ms(node.hlc.last) / 1000 < net.now + 1_767_225_600.0 + 60
    assert (
        sum(net.nodes[n].node.counters["dropped_clock_drift"] for n in ("node0", "node1", "node2"))
        > 0
    )


# ---------------------------------------------------------------- 6. nonces


class _SameLow32(random.Random):
    """Draws whose low 32 bits are equal across instances, higher bits not: the
    collision a 32-bit salt made likely (1.2 % at 10,000 generations)."""

    def __init__(self, tag: int) -> None:
        super().__init__(tag)
        self.tag = tag

    def getrandbits(self, k: int) -> int:
        return ((self.tag << 32) | 0xDEADBEEF) & ((1 << k) - 1)


def test_two_generations_whose_salts_share_32_bits_reuse_no_keystream() -> None:
    s1, s2 = Sealer(KEY, _SameLow32(1)), Sealer(KEY, _SameLow32(2))
    p1, p2 = b"a" * 64, b"b" * 64
    c1, c2 = s1.seal(p1), s2.seal(p2)
    body = slice(len(c1) - 16 - 64, len(c1) - 16)  # the ciphertext, without the tag
    xor_c = bytes(x ^ y for x, y in zip(c1[body], c2[body], strict=True))
    xor_p = bytes(x ^ y for x, y in zip(p1, p2, strict=True))
    assert xor_c != xor_p, "same key and nonce: the XOR of plaintexts leaks"
    opener = Opener(KEY)
    assert opener.open(c1)[0] == p1 and opener.open(c2)[0] == p2


def test_a_packet_moved_to_the_other_channel_does_not_open() -> None:
    sealed = Sealer(KEY, random.Random(1)).seal(b"x", DATAGRAM)
    opener = Opener(KEY)
    assert opener.open(sealed, DATAGRAM)[0] == b"x"
    with pytest.raises(RemoteProtocolError):
        opener.open(sealed, STREAM)


# ---------------------------------------------------------------- 8. replay window


def test_a_stream_frame_sealed_before_many_datagrams_is_not_a_replay() -> None:
    """A large record goes by TCP; while it is on its way the sender sends
    over a thousand datagrams to the receiver. The frame must still apply."""
    cfg = GossipConfig()
    a = GossipNode("a", ("127.0.0.1", 1), rng=random.Random(1), now=0.0, generation=1,
                   keyring=KEY, config=cfg)  # fmt: skip
    b = GossipNode("b", ("127.0.0.1", 2), rng=random.Random(2), now=0.0, generation=1,
                   keyring=KEY, config=cfg)  # fmt: skip
    a.join([b.addr], 0.0)
    for out in a.take_outgoing():
        b.receive_datagram(out.data, a.addr, 0.0)
    a.set_key("blob", "x" * 20_000, 0.1)  # too large for a datagram: announced
    for out in a.take_outgoing():
        b.receive_datagram(out.data, a.addr, 0.1) if not isinstance(out, StreamFrame) else None
    pull = [o for o in b.take_outgoing() if o.dst == a.addr]
    for out in pull:
        a.receive_datagram(out.data, b.addr, 0.2)
    frames = [o for o in a.take_outgoing() if isinstance(o, StreamFrame)]
    assert frames, "the record should travel as a stream frame"
    for i in range(1500):  # meanwhile: heartbeats and pushes, to b
        a.set_key("load", i, 0.3 + i * 1e-4)
        for out in a.take_outgoing():
            if out.dst == b.addr and not isinstance(out, StreamFrame):
                b.receive_datagram(out.data, a.addr, 0.3 + i * 1e-4)
    drops = b.counters["dropped_replay"]
    for f in frames:
        b.receive_stream(f.data, a.addr, 1.0)
    assert b.counters["dropped_replay"] == drops
    rec = b.record("a")
    assert rec is not None and rec.get("blob") == "x" * 20_000
