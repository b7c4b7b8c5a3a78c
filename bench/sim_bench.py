"""Simulator speed: simulated seconds per wall second, 200 ms interval, fanout 3.

Warm-started clusters (every node already knows every other), encrypted as in
production, one update every 5 s; setup time is reported apart.

    python bench/sim_bench.py [--sizes 100,1000] [--duration 60] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from sim.runner import run_scenario
from sim.scenario import Scenario


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="100,1000")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        for encrypt in (True, False):
            r = run_scenario(Scenario(nodes=n, duration=args.duration, seed=1, encrypt=encrypt))
            row = {
                "nodes": n,
                "encrypt": encrypt,
                "sim_seconds": r["sim_seconds"],
                "run_wall_seconds": round(r["wall_seconds"] - r["setup_wall_seconds"], 2),
                "setup_wall_seconds": r["setup_wall_seconds"],
                "sim_per_wall": r["sim_per_wall"],
                "bytes_per_node_per_s": r["bytes_per_node_per_s"],
                "converged": r["converged"],
            }
            rows.append(row)
            if not args.json:
                print(json.dumps(row), flush=True)
    if args.json:
        print(json.dumps({"date": time.strftime("%Y-%m-%d"), "results": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
