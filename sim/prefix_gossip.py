"""What gossiping prefix summaries costs, measured on the real gossip core.

N `GossipNode`s on the simulated network (sim.network), each carrying a
daemon-like record (`http`, `models`, `load`, `device`, `inflight`). Once per
publish interval (0.2 s, at a random phase per node, as the daemon's publish
loop) each node republishes what changed. Four regimes:

* `idle`: nothing changes (what today's idle figure measures);
* `idle_summary`: the same, each node also holding a full prefix summary
  (node.cluster.prefix: MAX_FPS fingerprints, under 8 KB);
* `busy`: every publish rewrites the model's load figures (`models` and
  `load` keys), as a serving node's does, and no summary;
* `busy_summary`: the same plus `churn` block hashes stored and as many
  evicted per second through a SummaryPublisher, whose changed slot keys go
  out at most every SUMMARY_EVERY (1 s), as the daemon publishes them.

The bytes are every datagram and stream frame the nodes send; the delays
are from a node's write of a summary key to each peer applying it (what
`rumor sim llm --staleness gossip` samples).
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from typing import Any

from gossip.core import EventType, GossipNode
from node.cluster.prefix import KEY_PREFIX, SUMMARY_EVERY, SummaryPublisher

from .network import bootstrap

MODEL = "agent-9b"
INTERVAL = 0.2
KV_BLOCKS = 16_384  # as sim.llm_node.NodeModel


@dataclass
class GossipCost:
    regime: str
    nodes: int
    churn_per_s: float
    bytes_per_node_per_s: float
    summary_bytes_per_node: int  # encoded summary keys held per node (record size)
    delays_s: list[float]

    def to_json(self) -> dict[str, Any]:
        d = sorted(self.delays_s)

        def pct(q: float) -> float | None:
            return round(d[min(len(d) - 1, int(q * len(d)))], 4) if d else None

        return {
            "regime": self.regime,
            "nodes": self.nodes,
            "churn_hashes_per_s": self.churn_per_s,
            "bytes_per_node_per_s": round(self.bytes_per_node_per_s, 1),
            "summary_bytes_per_node": self.summary_bytes_per_node,
            "delay_p50_s": pct(0.5),
            "delay_p99_s": pct(0.99),
            "delay_mean_s": round(sum(d) / len(d), 4) if d else None,
        }


def _model_entry(rng: random.Random, busy: bool) -> dict[str, Any]:
    running = rng.randrange(0, 8) if busy else 0
    return {
        "state": "ready", "version": "1", "kind": "llm", "block_size": 16,
        "hash": "blake2b-64-chain-v1", "hash_salt": MODEL, "max_model_len": 32768,
        "max_batch": 64, "running": running, "waiting": 0,
        "kv_used": rng.randrange(0, KV_BLOCKS) if busy else 0, "kv_total": KV_BLOCKS,
        "prefix_queries": 0, "prefix_hits": 0, "tokens_per_s": 0.0,
    }  # fmt: skip


def measure(
    regime: str,
    nodes: int = 16,
    seconds: float = 20.0,
    churn_per_s: float = 200.0,
    seed: int = 1,
) -> GossipCost:
    """Bytes per node per second in one regime, over `seconds` after a warm-up."""
    rng = random.Random(f"{seed}/{regime}")
    with_summary = regime.endswith("summary")
    busy = regime.startswith("busy")
    record: dict[str, Any] = {
        "http": "10.0.0.1:8000",
        "models": {MODEL: _model_entry(rng, False)},
        "load": {"queue": 0, "in_flight": 0, "ewma_latency": 0.0, "throughput": 0.0},
        "device": {"type": "cuda", "name": "NVIDIA H100 80GB HBM3", "memory_total": 85e9},
        "inflight": {},
    }
    net = bootstrap(nodes, seed, state=record)
    names = sorted(net.nodes)
    pubs = {n: SummaryPublisher(MODEL, kv_blocks=KV_BLOCKS) for n in names}
    live: dict[str, list[int]] = {n: [] for n in names}
    if with_summary:
        for n in names:  # a full cache to start from (its summary at its level)
            live[n] = [rng.getrandbits(64) for _ in range(KV_BLOCKS)]
            pubs[n].stored(live[n])
            _publish(net, n, pubs[n], rng, busy=False)
    summary_bytes = 0
    if with_summary:
        own = net.nodes[names[0]].node.own
        summary_bytes = sum(e.size for k, e in own.entries.items() if k.startswith(KEY_PREFIX))
    net.run_for(2.0)
    phase = {n: rng.uniform(0, INTERVAL) for n in names}
    start = net.now
    sent0 = sum(net.bytes_sent.values())
    writes: list[tuple[str, str, float]] = []  # (writer, key, when)
    t = 0.0
    carry = {n: 0.0 for n in names}
    last = {n: -SUMMARY_EVERY for n in names}
    while t < seconds:
        t = round(t + 0.01, 6)
        net.run_until(start + t)
        for n in names:
            if (t - phase[n]) % INTERVAL >= 0.01 - 1e-9:
                continue
            if with_summary and busy:
                carry[n] += churn_per_s * INTERVAL
                k = int(carry[n])
                carry[n] -= k
                new = [rng.getrandbits(64) for _ in range(k)]
                old, live[n] = live[n][:k], live[n][k:] + new  # the oldest are evicted
                pubs[n].stored(new)
                pubs[n].removed(old)
            if busy or with_summary:
                # The summary's changes go out at most every SUMMARY_EVERY (node.prefixes).
                due = with_summary and t - last[n] >= SUMMARY_EVERY - 1e-9
                if due:
                    last[n] = t
                keys = _publish(net, n, pubs[n] if due else None, rng, busy)
                writes += [(n, k, net.now) for k in keys if k.startswith(KEY_PREFIX)]
    sent = sum(net.bytes_sent.values()) - sent0
    return GossipCost(
        regime, nodes, churn_per_s if busy and with_summary else 0.0,
        sent / seconds / nodes, summary_bytes, _delays(net, names, writes),
    )  # fmt: skip


def _publish(
    net: Any, name: str, pub: SummaryPublisher | None, rng: random.Random, busy: bool
) -> list[str]:
    """One publish-loop pass at `name`: the keys whose value changed."""
    values: dict[str, Any] = {}
    if busy:
        entry = _model_entry(rng, True)
        if pub is not None:
            entry["prefix"] = pub.header()
        values["models"] = {MODEL: entry}
        values["load"] = {"queue": entry["running"], "in_flight": 0, "ewma_latency": 0.0,
                          "throughput": 0.0}  # fmt: skip
    if pub is not None:
        values.update(pub.changes())
        if not busy:
            values["models"] = {MODEL: {**_model_entry(rng, False), "prefix": pub.header()}}

    def change(node: GossipNode, now: float) -> None:
        node.set_keys({k: v for k, v in values.items() if node.own.get(k) != v}, now)

    net.local(name, change)
    return list(values)


def _delays(net: Any, names: list[str], writes: list[tuple[str, str, float]]) -> list[float]:
    """For each summary write, the time until each peer applied that key."""
    applied: dict[tuple[str, str, str], list[float]] = {}
    for n in names:
        for t, ev in net.nodes[n].events:
            if ev.type == EventType.UPDATE:
                for k in ev.keys:
                    applied.setdefault((n, ev.member, k), []).append(t)
    out = []
    for writer, key, at in writes:
        for n in names:
            if n == writer:
                continue
            times = applied.get((n, writer, key), [])
            i = bisect.bisect_left(times, at - 1e-9)
            if i < len(times):
                out.append(times[i] - at)
    return out


def gossip_delays(nodes: int = 16, seed: int = 1, seconds: float = 10.0) -> list[float]:
    """Delays from a busy node's summary write to each peer applying it."""
    return measure("busy_summary", nodes=nodes, seconds=seconds, seed=seed).delays_s
