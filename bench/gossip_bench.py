"""Gossip benchmark, in memory (sim.network runs the real, encrypted core).

1. Idle traffic: bytes sent per node per second with nothing changing, and
   under 10 changes per second cluster-wide (a random node rewrites a 100-byte
   key every 0.1 s), at N = 10, 40, 100 and 1,000. Each node carries
   `--state` bytes of its own state (4 KB by default), replicated everywhere.
2. The largest per-node state carried: one node writes a value of each size;
   it counts when every other node holds it within 10 s.
3. CPU time per gossip message: receive_datagram on real sealed datagrams.
4. Anti-entropy of a replicated ORSet after a partition heals, with context
   digests (GossipConfig.crdt_digest_sync, the default) and with whole
   states: bytes sent from the heal until every replica agrees.

    python bench/gossip_bench.py [--sizes 10,40,100,1000] [--json]
    python bench/gossip_bench.py --only crdt      # just part 4
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from crdt import ORSet
from gossip.config import GossipConfig
from gossip.core import Datagram, GossipNode
from gossip.crypto import Keyring
from sim.network import LinkModel, SimNetwork, bootstrap

KEY = Keyring.generate(random.Random(7))


def traffic(n: int, state_bytes: int, seconds: float = 20.0) -> dict[str, Any]:
    # Every node starts holding its own state and everyone else's (as after
    # joins), so the measurement is the steady state, not the join storm.
    net = bootstrap(
        n,
        seed=n,
        link=LinkModel(latency=0.001, jitter=0.001),
        keyring=KEY,
        state={"state": "s" * state_bytes},
    )
    assert net.converged(), "did not start converged"
    net.run_for(5)  # let retransmit queues drain

    def sent() -> int:
        return sum(net.bytes_sent.values())

    b0, w0 = sent(), time.process_time()
    net.run_for(seconds)
    idle = (sent() - b0) / seconds / n
    idle_cpu = time.process_time() - w0

    rng = random.Random(1)
    names = sorted(net.nodes)
    b0 = sent()
    end = net.now + seconds
    i = 0
    while net.now < end:
        sn = net.nodes[rng.choice(names)]
        i += 1
        sn.node.set_key("load", f"{i:08d}" + "x" * 92, net.now)
        net.flush(sn)
        net.run_for(0.1)
    busy = (sent() - b0) / seconds / n
    converged = net.run_until_true(net.converged, 10, 0.1)
    return {
        "nodes": n,
        "state_bytes_per_node": state_bytes,
        "idle_bytes_per_node_per_s": round(idle, 1),
        "changes_10_per_s_bytes_per_node_per_s": round(busy, 1),
        "converged_after": converged,
        "sim_seconds_per_cpu_second_idle": round(seconds / idle_cpu, 2),
    }


def detection(n: int, loss: float = 0.2, watch: float = 60.0) -> dict[str, Any]:
    """Time until every live peer declares a crashed node dead; false deaths
    over `watch` seconds at `loss` packet loss before the crash."""
    net = bootstrap(n, seed=100 + n, link=LinkModel(latency=0.001, jitter=0.001), keyring=KEY)
    net.run_for(3)
    net.link.loss = loss
    net.run_for(watch)
    false_deaths = sum(
        1 for sn in net.live() for _, e in sn.events if e.type.value == "member-dead"
    )
    suspicions = sum(
        1 for sn in net.live() for _, e in sn.events if e.type.value == "member-suspect"
    )
    net.link.loss = 0.0
    net.run_for(3)
    victim = f"node{n // 2}"
    net.crash(victim)
    t0 = net.now
    ok = net.run_until_true(
        lambda: all(
            net.status_of(sn.name, victim) is not None
            and net.status_of(sn.name, victim).name == "DEAD"
            for sn in net.live()
        ),
        30,
        0.01,
    )
    return {
        "nodes": n,
        "detected_by_all_s": round(net.now - t0, 2) if ok else None,
        f"false_deaths_at_{int(loss * 100)}pct_loss_over_{int(watch)}s": false_deaths,
        "suspicions_refuted": suspicions,
    }


def heartbeat_in_state(n: int, seconds: float = 10.0) -> float:
    """The alternative design, measured with the same machinery: every node
    bumps a heartbeat key in its gossiped record every round (chitchat-style)."""
    net = bootstrap(n, seed=200 + n, link=LinkModel(latency=0.001), keyring=KEY)
    net.run_for(2)
    b0 = sum(net.bytes_sent.values())
    end = net.now + seconds
    beat = 0
    while net.now < end:
        beat += 1
        for sn in net.nodes.values():
            sn.node.set_key("heartbeat", beat, net.now)
            net.flush(sn)
        net.run_for(net.config.interval)
    return round((sum(net.bytes_sent.values()) - b0) / seconds / n, 1)


def largest_state() -> dict[str, Any]:
    out = {}
    for size in (4_096, 65_536, 1_048_576, 4_000_000):
        net = SimNetwork(11, keyring=KEY)
        for i in range(5):
            net.add_node(f"n{i}", join=["n0"] if i else None)
        net.run_for(3)
        blob = "b" * size
        writer = net.nodes["n1"]
        writer.node.set_key("blob", blob, net.now)
        net.flush(writer)
        t0 = net.now
        ok = net.run_until_true(
            lambda blob=blob, net=net: all(
                (r := sn.node.record("n1")) is not None and r.get("blob") == blob
                for sn in net.live()
            ),
            10,
            0.01,
        )
        out[size] = round(net.now - t0, 3) if ok else None
    return out


def cpu_per_message(count: int = 3000) -> dict[str, float]:
    def pair() -> tuple[GossipNode, GossipNode]:
        a = GossipNode("a", ("10.0.0.1", 1), rng=random.Random(1), now=0, generation=1, keyring=KEY)
        b = GossipNode("b", ("10.0.0.2", 1), rng=random.Random(2), now=0, generation=1, keyring=KEY)
        return a, b

    a, b = pair()
    a.join([b.addr], 0)
    for o in a.take_outgoing():
        b.receive_datagram(o.data, a.addr, 0.01)
    for o in b.take_outgoing():
        a.receive_datagram(o.data, b.addr, 0.02)
    results = {}
    # Heartbeats (the idle steady state) and pushes (a 100-byte change each).
    hb: list[bytes] = []
    push: list[bytes] = []
    t = 1.0
    for i in range(count):
        t += 0.2
        a.tick(t)
        hb += [o.data for o in a.take_outgoing() if isinstance(o, Datagram)]
        a.set_key("k", "v" * 100 + str(i), t)
        push += [o.data for o in a.take_outgoing() if isinstance(o, Datagram)]
    for label, batch in (("heartbeat_or_round", hb), ("push_100B_change", push)):
        start = time.perf_counter()
        for d in batch:
            b.receive_datagram(d, a.addr, t)
        b.take_outgoing()
        elapsed = time.perf_counter() - start
        results[f"{label}_us"] = round(elapsed / max(1, len(batch)) * 1e6, 1)
    return results


def crdt_heal(n: int, items: int, changes: int, digest_sync: bool, seed: int = 1) -> dict[str, Any]:
    """An ORSet of `items` elements on `n` nodes; during a partition into two
    halves each node adds and removes `changes` elements; bytes and seconds
    from the heal until every replica holds the same set."""
    net = SimNetwork(seed, config=GossipConfig(crdt_digest_sync=digest_sync), keyring=KEY)
    names = [f"node{i}" for i in range(n)]
    for i, name in enumerate(names):
        net.add_node(name, join=["node0"] if i else None)
        net.nodes[name].node.register_crdt("models", ORSet())
    net.run_for(5)
    first = net.nodes["node0"].node
    models = first.crdt("models")
    assert isinstance(models, ORSet)
    delta = ORSet()
    for i in range(items):
        delta.merge(models.add(first.name, f"model-{i:06d}"))
    first.update_crdt("models", delta, net.now)
    if not net.run_until_true(net.converged, 60):
        raise SystemExit("the ORSet did not spread before the partition")
    net.partition(set(names[: n // 2]), set(names[n // 2 :]))
    for k, name in enumerate(names):
        node = net.nodes[name].node
        s = node.crdt("models")
        assert isinstance(s, ORSet)
        for j in range(changes):
            node.update_crdt("models", s.add(node.name, f"{name}-new-{j}"), net.now)
            node.update_crdt("models", s.remove(node.name, f"model-{k * changes + j:06d}"), net.now)
    net.run_for(5)  # the pushes' retransmits are spent inside the partition
    net.heal()
    before, start = sum(net.bytes_sent.values()), net.now
    ok = net.run_until_true(net.converged, 120)
    return {
        "nodes": n,
        "items": items,
        "changes_per_node": changes,
        "digest_sync": digest_sync,
        "converged": ok,
        "seconds": round(net.now - start, 2),
        "bytes_after_heal": sum(net.bytes_sent.values()) - before,
    }


def crdt_anti_entropy() -> list[dict[str, Any]]:
    rows = []
    for n, items in ((4, 1000), (10, 10_000), (10, 100_000)):
        on = crdt_heal(n, items, 5, True)
        off = crdt_heal(n, items, 5, False)
        rows.append(
            {
                **on,
                "bytes_whole_states": off["bytes_after_heal"],
                "seconds_whole_states": off["seconds"],
                "bytes_ratio": round(on["bytes_after_heal"] / off["bytes_after_heal"], 4),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="10,40,100,1000")
    ap.add_argument("--state", type=int, default=4096, help="own state per node, bytes")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--only", choices=["crdt"], help="run one part")
    args = ap.parse_args()
    if args.only == "crdt":
        crdt_anti_entropy()
        return 0
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        state = args.state
        rows.append(traffic(n, state, args.seconds))
        if not args.json:
            print(json.dumps(rows[-1]), flush=True)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "traffic": rows,
        "detection": [detection(n) for n in (10, 40, 100)],
        "heartbeats_in_state_bytes_per_node_per_s": {
            n: heartbeat_in_state(n) for n in (10, 40, 100)
        },
        "largest_state_seconds_to_all": largest_state(),
        "cpu_per_message": cpu_per_message(),
        "crdt_anti_entropy": crdt_anti_entropy(),
    }
    print(
        json.dumps(
            result if args.json else {k: v for k, v in result.items() if k != "traffic"}, indent=1
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
