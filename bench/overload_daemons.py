"""Does an overloaded host make the failure detector kill live daemons?

    .venv/bin/python bench/overload_daemons.py              # N = 100
    .venv/bin/python bench/overload_daemons.py --nodes 60 --json

N rumor daemons on this machine, booted one after another, then each given 4
KB of tags 50 ms apart: every 4 KB record is pulled by every other node over
TCP (N(N-1) transfers), which on 2 cores saturates the CPU for tens of
seconds. Counts, from the daemons' own logs, the suspicion and death events
in each phase (boot, the tag writes, the `--after` s that follow) plus a few
detector counters from a sample of nodes. Every daemon stays alive
throughout, so every death is a false one.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import gossip_counters, say  # noqa: E402
from bench.serf_compare import RumorCluster  # noqa: E402

COUNTERS = ("late_ticks", "local_stalls", "suspicions_extended", "probe_failures", "refutations")


def verdicts(c: RumorCluster, since: float, until: float) -> dict[str, int]:
    c.poll_events()
    kinds = collections.Counter(
        ev.kind for evs in c.events.values() for ev in evs if since <= ev.t < until
    )
    return {"suspicions": kinds["suspect"], "deaths": kinds["dead"]}


def sample_counters(c: RumorCluster, every: int = 10) -> dict[str, int]:
    total: collections.Counter[str] = collections.Counter()
    for i in range(0, c.n, every):
        try:
            counters = gossip_counters(httpx.get(f"{c.http(i)}/metrics", timeout=10).text)
        except httpx.HTTPError:
            continue
        for key in COUNTERS:
            total[key] += int(counters.get(key, 0))
    return {k: total[k] for k in COUNTERS}


def run(n: int, after: float, tmp: Path) -> dict[str, Any]:
    c = RumorCluster(n, tmp / "cluster")
    c.work.mkdir()
    try:
        say(f"booting {n} daemons")
        t0 = time.time()
        c.start(0.2, 3)
        if not c.wait_converged(300):
            raise RuntimeError(f"{n} daemons did not converge")
        t1 = time.time()
        time.sleep(5)
        say(f"4 KB of tags on each of {n} daemons, 50 ms apart")
        t2 = time.time()
        c.load_state()
        t3 = time.time()
        say(f"watching for {after:.0f} s")
        time.sleep(after)
        t4 = time.time()
        return {
            "nodes": n,
            "boot": {"seconds": round(t1 - t0, 1), **verdicts(c, t0, t2)},
            "tags": {"seconds": round(t3 - t2, 1), **verdicts(c, t2, t3)},
            "after": {"seconds": round(t4 - t3, 1), **verdicts(c, t3, t4)},
            "counters_every_10th_node": sample_counters(c),
        }
    finally:
        c.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--after", type=float, default=30.0, help="seconds watched after the tags")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rumor-overload-") as tmp:
        report = {"date": time.strftime("%Y-%m-%d"), **run(args.nodes, args.after, Path(tmp))}
    print(json.dumps(report, indent=None if args.json else 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
