"""What gossiping prefix summaries costs, on the real gossip core (simulated network).

    flock /work/bench.lock .venv/bin/python bench/prefix_gossip_cost.py --json   # ~2 minutes

For each cluster size, the regimes of sim/prefix_gossip.py: idle (nothing
changes), idle with a full summary per node, busy (every node rewrites its
LLM's load figures every 0.2 s, as a serving daemon does) and busy with a
summary whose engine stores and evicts `--churn` blocks per second. Bytes are
every datagram and stream frame sent, per node per second; delays are from a
summary write to each peer applying it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import say  # noqa: E402
from sim.prefix_gossip import measure  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", default="16,40")
    ap.add_argument("--churn", default="100,1000", help="blocks stored (and evicted) per second")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = []
    for n in (int(x) for x in args.nodes.split(",")):
        cells = [("idle", 0.0), ("idle_summary", 0.0), ("busy", 0.0)]
        cells += [("busy_summary", float(c)) for c in args.churn.split(",")]
        for regime, churn in cells:
            say(f"{n} nodes, {regime}, churn {churn:g}/s")
            rows.append(measure(regime, nodes=n, seconds=args.seconds, churn_per_s=churn).to_json())
    if args.json:
        print(json.dumps({"results": rows}))
        return 0
    print("| nodes | regime | churn blocks/s | B/node/s | summary B/node | delay p50 / p99 ms |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in rows:
        delay = (
            f"{r['delay_p50_s'] * 1000:.1f} / {r['delay_p99_s'] * 1000:.1f}"
            if r["delay_p50_s"] is not None
            else "-"
        )
        print(
            f"| {r['nodes']} | {r['regime']} | {r['churn_hashes_per_s']:g} "
            f"| {r['bytes_per_node_per_s']:,.0f} | {r['summary_bytes_per_node']:,} | {delay} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
