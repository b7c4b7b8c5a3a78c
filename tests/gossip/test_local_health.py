"""Failure detection as a fleet runs it (issue #20): one stall must not slow
every later detection, and a small cluster must not wait for confirmations it
cannot gather. Mechanisms, not durations."""

from __future__ import annotations

import random

import pytest

from gossip.config import GossipConfig
from gossip.core import GossipNode
from gossip.wire import Status
from sim.network import SimNetwork


def test_local_health_recovers_after_a_stall_without_probe_acks() -> None:
    """A model loading at start stalls the process once. Lifeguard lowers local
    health on successful probes, which ring heartbeats rarely make; before the
    decay, health stayed up and every suspicion took (1 + health) times longer."""
    cfg = GossipConfig()
    node = GossipNode(
        "a", ("127.0.0.1", 1), rng=random.Random(1), now=0.0, generation=1, config=cfg
    )
    t = 0.0
    for _ in range(20):  # on time
        t = node.next_deadline()
        node.tick(t)
    t += 3.0
    node.tick(t)  # a 3 s stall: our own lateness, not the network's
    assert node.counters["local_stalls"] == 1 and node.local_health == 2
    stalled_at = t
    ticks = 0
    while node.local_health and ticks < 1000:
        t = node.next_deadline()
        node.tick(t)
        ticks += 1
    # Back to 0 by on-time ticks alone: local_health_decay (1 s) per step.
    assert node.local_health == 0 and node.counters["probes"] == 0
    assert t - stalled_at <= 2 * cfg.local_health_decay + 2 * cfg.interval * cfg.heartbeat_every


def test_late_ticks_keep_health_up_while_the_host_stays_busy() -> None:
    cfg = GossipConfig()
    node = GossipNode(
        "a", ("127.0.0.1", 1), rng=random.Random(1), now=0.0, generation=1, config=cfg
    )
    t = 0.0
    for _ in range(40):  # every tick 0.2 s late: a busy host
        t = node.next_deadline() + 0.2
        node.tick(t)
    assert node.local_health >= 1 and node.counters["late_ticks"] >= 10


def _suspicion_timeout(n: int, confirmations: int) -> float:
    net = SimNetwork(1)
    net.add_node("node0")
    for i in range(1, n):
        net.add_node(f"node{i}", join=["node0"])
    assert net.run_until_true(lambda: all(len(s.node.live_members()) == n for s in net.live()), 10)
    node = net.nodes["node0"].node
    m = node.members["node1"]
    m.suspectors = frozenset({"node0", *(f"node{i}" for i in range(2, 2 + confirmations))})
    m.suspicion_start = 0.0
    node._update_suspicion_deadline(m)
    return m.suspicion_deadline


def test_a_small_cluster_needs_only_the_confirmations_it_can_gather() -> None:
    cfg = GossipConfig()
    # 3 nodes: besides the suspect and its accuser, one member can confirm.
    assert _suspicion_timeout(3, 0) == pytest.approx(cfg.suspicion_max)
    assert _suspicion_timeout(3, 1) == pytest.approx(cfg.suspicion_min)
    # 10 nodes: three confirmations bring it to the minimum, as Lifeguard says.
    assert _suspicion_timeout(10, 1) > _suspicion_timeout(10, 3) == pytest.approx(cfg.suspicion_min)


def test_detection_in_a_3_node_cluster_waits_for_no_absent_confirmation() -> None:
    net = SimNetwork(2)
    net.add_node("node0")
    for i in (1, 2):
        net.add_node(f"node{i}", join=["node0"])
    assert net.run_until_true(lambda: all(len(s.node.live_members()) == 3 for s in net.live()), 10)
    net.run_for(5)
    net.crash("node2")
    t0 = net.now
    assert net.run_until_true(
        lambda: all(net.status_of(o, "node2") == Status.DEAD for o in ("node0", "node1")), 10
    )
    cfg = GossipConfig()
    # Silence (2 heartbeat periods), a probe, then the minimum suspicion: well
    # under the maximum suspicion timeout alone.
    assert net.now - t0 < cfg.suspicion_max
