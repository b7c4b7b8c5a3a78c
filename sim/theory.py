"""Epidemic theory check: the real core, configured as the textbook protocols.

- push: every informed node pushes to one random peer per round, forever
  (fanout 1, no eager forwarding, no anti-entropy). Expected rounds to inform
  all N nodes: log2 N + ln N (Pittel 1987; Karp et al. 2000).
- push-pull: every node exchanges digests with one random peer per round and
  both sides take what they lack (fanout 1, anti-entropy every round with a
  digest covering all N). Expected: log3 N + O(ln ln N) (Karp et al. 2000).

Rounds are aligned (every node ticks at the same instants) and latency is
1 ms against a 200 ms round, as the models assume.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from gossip.config import GossipConfig

from .network import LinkModel, bootstrap

INTERVAL = 0.2


def _config(mode: str, n: int) -> GossipConfig:
    common = dict(interval=INTERVAL, fanout=1, eager_push=False, heartbeat_every=0)
    if mode == "push":
        return GossipConfig(**common, anti_entropy_every=0, retransmit_mult=10_000)
    return GossipConfig(
        **common,
        anti_entropy_every=1,
        anti_entropy_full=True,
        retransmit_mult=0,
        digest_window=n + 1,
    )


def rounds_to_inform_all(n: int, mode: str, seed: int) -> int:
    net = bootstrap(n, seed, link=LinkModel(latency=0.001), config=_config(mode, n))
    # Align every node's rounds on one grid, then write just before a round.
    grid = net.now + INTERVAL
    for sn in net.nodes.values():
        sn.node.align_rounds(grid)
        sn.next_tick = float("inf")
        net.flush(sn)
    writer = net.nodes["node0"]
    writer.node.set_key("rumor", 1, net.now)
    net.flush(writer)
    informed = {"node0"}
    for r in range(1, 10 * n):
        net.run_until(grid + (r - 1) * INTERVAL + INTERVAL / 2)
        for sn in net.nodes.values():
            if sn.name not in informed:
                rec = sn.node.record("node0")
                if rec is not None and rec.get("rumor") == 1:
                    informed.add(sn.name)
        if len(informed) == n:
            return r
    raise RuntimeError(f"{mode} did not inform all {n} nodes")


def theory_table(sizes: list[int], seeds: int) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        push = [rounds_to_inform_all(n, "push", s) for s in range(seeds)]
        pp = [rounds_to_inform_all(n, "push-pull", s) for s in range(seeds)]
        rows.append(
            {
                "nodes": n,
                "push_rounds_mean": round(statistics.fmean(push), 2),
                "push_rounds_max": max(push),
                "push_bound": round(math.log2(n) + math.log(n), 2),
                "push_pull_rounds_mean": round(statistics.fmean(pp), 2),
                "push_pull_rounds_max": max(pp),
                "push_pull_bound_log3": round(math.log(n, 3), 2),
                "push_pull_bound_log3_plus_lnln": round(math.log(n, 3) + math.log(math.log(n)), 2),
                "seeds": seeds,
            }
        )
    return rows
