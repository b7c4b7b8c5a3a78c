"""Prefix summaries live and die with their node's membership: on real gossip
cores (the simulated network), a dead node's prefixes attract nothing, and a
node that restarts with an empty cache stops attracting its old prefixes
within one gossip interval."""

from __future__ import annotations

import random

from gossip.core import GossipNode
from node.cluster.candidates import CandidateBuilder, RouterState
from node.cluster.prefix import PrefixRequest, SummaryCache, SummaryPublisher
from node.cluster.routing import policy
from node.cluster.view import GossipView
from sim.network import SimNetwork, bootstrap

MODEL = "agent"
SCHEME = (16, "blake2b-64-chain-v1", MODEL)
INTERVAL = 0.2  # the gossip interval (GossipConfig's default) and the daemon's publish loop


def _publish(net: SimNetwork, name: str, pub: SummaryPublisher) -> None:
    """A daemon's publish-loop pass: the model's entry and the summary's slots."""
    pub.changes()
    entry = {
        "state": "ready", "kind": "llm", "block_size": 16, "hash": SCHEME[1],
        "hash_salt": MODEL, "prefix": pub.header(),
    }  # fmt: skip

    def write(node: GossipNode, now: float) -> None:
        node.set_keys({"models": {MODEL: entry}, **pub.published()}, now)

    net.local(name, write)


def _cached_at(observer: GossipNode, cache: SummaryCache, name: str, req: PrefixRequest) -> int:
    view = GossipView(observer, cache)
    if name not in view.ready_replicas(MODEL):
        return -1
    return CandidateBuilder(view, RouterState(), observer.name, 0.0, None, req, view)(
        name
    ).cached_tokens


def _setup() -> tuple[SimNetwork, PrefixRequest, SummaryCache]:
    net = bootstrap(4, seed=7)
    rng = random.Random(1)
    chain = [rng.getrandbits(64) for _ in range(200)]
    req = PrefixRequest(MODEL, 200 * 16 + 5, {SCHEME: chain})
    for i in range(4):
        pub = SummaryPublisher(MODEL, kv_blocks=4096)
        pub.stored(chain if i == 0 else chain[:10])  # node0 holds the whole prompt
        _publish(net, f"node{i}", pub)
    net.run_for(1.0)
    return net, req, SummaryCache()


def test_a_restarted_node_with_an_empty_cache_stops_attracting_its_prefixes() -> None:
    net, req, cache = _setup()
    observer = net.nodes["node1"].node
    assert _cached_at(observer, cache, "node0", req) == 200 * 16
    names = sorted(GossipView(observer).ready_replicas(MODEL))
    cand = CandidateBuilder(GossipView(observer, cache), RouterState(), "node1", 0.0, None, req,
                            GossipView(observer, cache))  # fmt: skip
    assert policy("rumor_prefix").choose(names, cand, random.Random(1), RouterState()) == "node0"

    net.crash("node0")
    net.run_for(0.05)
    net.restart("node0", join=["node1"])  # a new process: new generation, empty engine
    restarted = net.now
    _publish(net, "node0", SummaryPublisher(MODEL, kv_blocks=4096))
    forgot = None
    while net.now < restarted + 2.0:
        net.run_for(0.01)
        if _cached_at(observer, cache, "node0", req) == 0:
            forgot = net.now - restarted
            break
    assert forgot is not None and forgot <= INTERVAL
    # Routing now goes elsewhere: the others hold 10 blocks, node0 nothing.
    view = GossipView(observer, cache)
    cand = CandidateBuilder(view, RouterState(), "node1", 0.0, None, req, view)
    assert cand("node2").cached_tokens == 160 and cand("node0").cached_tokens == 0


def test_a_dead_nodes_prefixes_go_with_its_membership() -> None:
    net, req, cache = _setup()
    observer = net.nodes["node1"].node
    assert _cached_at(observer, cache, "node0", req) > 0
    net.crash("node0")
    dead_after = None
    t0 = net.now
    while net.now < t0 + 30.0:
        net.run_for(0.1)
        if _cached_at(observer, cache, "node0", req) == -1:  # no longer a candidate
            dead_after = net.now - t0
            break
    assert dead_after is not None and dead_after > 0.5  # the failure detector's doing
    # Once the record is collected, the router's decoded copy goes too.
    net.run_for(observer.config.dead_grace + 5.0)
    assert observer.record("node0") is None
    cache.forget(observer.members)
    assert all(k[0] != "node0" for k in cache._summaries)
