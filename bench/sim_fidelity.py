"""Does `rumor sim` predict what real daemons do?  Loopback against the simulator.

    .venv/bin/python bench/sim_fidelity.py                  # N = 10 and 40
    .venv/bin/python bench/sim_fidelity.py --nodes 10 --trials 10 --json

1. Calibrate on 5 real daemons only: the CPU the cluster spends per gossip
   message delivered (all daemons' CPU ticks over a burst of changes, less the
   idle rate and less the HTTP cost of the PUTs, measured with PUTs that change
   nothing) becomes the host model's service time per message, on this
   machine's cores shared by every node; the first hop's delay (the first
   peer's event time minus the origin's own `local-update` time) less that
   service time becomes the link latency.
2. Measure N real daemons on loopback: `--trials` tag changes (each peer's
   own event time minus the origin's), and `--kills` SIGKILLs (each peer's
   `member-dead` event minus the kill).
3. Run the same scenario through the simulator (`sim.runner.run_scenario`, as
   `rumor sim --scenario` does), over `--seeds` seeds, with the calibrated
   model, and compare: dissemination p50 (over every peer of every change),
   max (median over changes of the slowest peer) and detection (slowest
   observer, median over kills).  The target is within ±20%.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import cpu_ticks, say  # noqa: E402
from bench.serf_compare import RumorCluster  # noqa: E402
from sim.runner import run_scenario  # noqa: E402
from sim.scenario import Event, Scenario  # noqa: E402


def wait_quiet(c: RumorCluster, quiet_s: float, limit: float = 180) -> None:
    t0, since, seen = time.time(), time.time(), -1
    while time.time() - since < quiet_s and time.time() - t0 < limit:
        c.poll_events()
        noisy = sum(ev.kind in ("suspect", "dead") for evs in c.events.values() for ev in evs)
        if noisy != seen:
            seen, since = noisy, time.time()
        time.sleep(0.3)


def counter(c: RumorCluster, i: int, key: str) -> float:
    import re

    text = httpx.get(f"{c.http(i)}/metrics", timeout=5).text
    m = re.search(rf'counter="{key}"\}} ([0-9.e+]+)', text)
    return float(m.group(1)) if m else 0.0


def calibrate(tmp: Path, changes: int, say: Any, n: int = 5) -> dict[str, float]:
    """CPU per delivered gossip message and one-hop delay, on a small cluster.

    All daemons' CPU is counted (receiving and forwarding both cost), less the
    idle rate and less the HTTP cost of the PUTs themselves (measured with
    PUTs that change nothing)."""
    c = RumorCluster(n, tmp / "cal")
    c.work.mkdir()
    try:
        c.start(0.2, 3)
        c.wait_converged(60)
        wait_quiet(c, 2)
        pids = [p.pid for p in c.procs.values()]
        hz = os.sysconf("SC_CLK_TCK")

        def cpu() -> float:
            return sum(cpu_ticks(p) for p in pids) / hz

        def delivered() -> float:
            return sum(counter(c, i, "datagrams_in") for i in range(n))

        t0, k0, m0 = time.time(), cpu(), delivered()
        time.sleep(5)
        idle_cpu = (cpu() - k0) / (time.time() - t0)
        idle_msgs = (delivered() - m0) / (time.time() - t0)

        def burst(change: bool) -> tuple[float, float, float]:
            t0, k0, m0 = time.time(), cpu(), delivered()
            with httpx.Client() as client:
                for k in range(changes):
                    value = str(k) if change else "same"
                    client.put(f"{c.http(0)}/v1/node/tags", json={"k": value}, timeout=5)
            time.sleep(1.0)
            took = time.time() - t0
            return took, cpu() - k0 - idle_cpu * took, delivered() - m0 - idle_msgs * took

        httpx.put(f"{c.http(0)}/v1/node/tags", json={"k": "same"}, timeout=5)
        say(f"calibration: {changes} PUTs that change nothing, then {changes} that do (N={n})")
        _, cpu_noop, _ = burst(False)
        mark = time.time()
        _, cpu_change, msgs = burst(True)
        per_msg = (cpu_change - cpu_noop) / max(1.0, msgs)
        c.poll_events()
        own = sorted(ev.t for ev in c.events.get("r0", []) if ev.kind == "update" and ev.t >= mark)
        firsts = []
        for t in own:
            later = [
                ev.t
                for p, evs in c.events.items()
                if p != "r0"
                for ev in evs
                if ev.kind == "update" and ev.member == "r0" and t <= ev.t < t + 0.5
            ]
            if later:
                firsts.append(min(later) - t)
        firsts.sort()
        return {
            "nodes": n,
            "cpu_per_message_us": round(per_msg * 1e6, 1),
            "hop_p50_ms": round(statistics.median(firsts) * 1e3, 3),
            "hop_p90_ms": round(firsts[int(len(firsts) * 0.9)] * 1e3, 3),
            "messages": int(msgs),
        }
    finally:
        c.stop()


def measure(n: int, tmp: Path, trials: int, kills: int, rng: random.Random, say: Any) -> dict:
    c = RumorCluster(n, tmp / f"n{n}")
    c.work.mkdir()
    try:
        say(f"loopback N={n}: starting")
        c.start(0.2, 3)
        if not c.wait_converged(180):
            raise RuntimeError(f"N={n} did not converge")
        wait_quiet(c, 5)
        delays, maxima = [], []
        for k in range(trials):
            origin = rng.randrange(1, n)
            node = c.node_name(origin)
            t0 = time.time()
            httpx.put(f"{c.http(origin)}/v1/node/tags", json={"trial": str(k)}, timeout=5)
            got = c.wait_events("update", node, t0, timeout=10, key="tag:trial")
            own = c.first_event(node, "update", node, t0, "tag:trial")
            if own >= 0 and got:
                d = [t - own for t in got.values()]
                delays += d
                maxima.append(max(d))
            time.sleep(0.7)
        det = []
        victims = rng.sample(range(1, n), kills)
        for v in victims:
            name = c.node_name(v)
            t0 = time.time()
            c.kill(name)
            got = c.wait_events("dead", name, t0, timeout=30)
            if got:
                det.append(max(got.values()) - t0)
            time.sleep(3.0)
        return {
            "p50_s": statistics.median(delays),
            "max_s": statistics.median(maxima),
            "detection_s": statistics.median(det) if det else None,
            "trials": len(maxima),
            "kills": len(det),
        }
    finally:
        c.stop()


def simulate(
    n: int, cpu_us: float, trials: int, kills: int, seeds: int, latency_ms: float = 0.05
) -> dict:
    delays, maxima, det = [], [], []
    for seed in range(1, seeds + 1):
        events = [Event(2.0 + 1.0 * k, "update", {}) for k in range(trials)]
        t = 3.0 + trials
        for _ in range(kills):
            events.append(Event(t, "kill", {}))
            t += 6.0
        scn = Scenario(
            nodes=n, seed=seed, duration=t + 6, latency_ms=latency_ms, jitter_ms=latency_ms,
            cores=os.cpu_count() or 2, cpu_us=cpu_us, updates_every=0, events=tuple(events),
        )  # fmt: skip
        r = run_scenario(scn)
        maxima += [u["max_s"] for u in r["dissemination"]["per_update"]]
        delays.append(r["dissemination"]["p50_s"])
        if "failure_detection" in r:
            det.append(r["failure_detection"]["max_s"])
    return {
        "p50_s": statistics.median(delays),
        "max_s": statistics.median(maxima),
        "detection_s": statistics.median(det) if det else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", default="10,40")
    ap.add_argument("--trials", type=int, default=20, help="tag changes per N")
    ap.add_argument("--kills", type=int, default=3, help="SIGKILLs per N")
    ap.add_argument("--seeds", type=int, default=5, help="simulator seeds per N")
    ap.add_argument("--calibration-changes", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.nodes.split(",") if x]

    rng = random.Random(args.seed)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores",
    }
    with tempfile.TemporaryDirectory(prefix="rumor-fidelity-") as tmp:
        cal = calibrate(Path(tmp), args.calibration_changes, say)
        cal["service_us"] = cal["cpu_per_message_us"]
        cal["latency_ms"] = round(max(0.01, cal["hop_p50_ms"] - cal["service_us"] / 1000), 3)
        report["calibration"] = cal
        say(f"calibration: {cal}")
        rows = []
        for n in sizes:
            real = measure(n, Path(tmp), args.trials, args.kills, rng, say)
            say(f"simulating N={n}")
            sim = simulate(
                n, cal["service_us"], args.trials, args.kills, args.seeds, cal["latency_ms"]
            )
            row: dict[str, Any] = {"nodes": n, "loopback": {}, "sim": {}, "sim_over_loopback": {}}
            for key in ("p50_s", "max_s", "detection_s"):
                row["loopback"][key] = round(real[key], 4)
                row["sim"][key] = round(sim[key], 4)
                row["sim_over_loopback"][key] = round(sim[key] / real[key], 3)
            row["sim"]["model"] = {
                "cores": os.cpu_count(),
                "service_us": cal["service_us"],
                "latency_ms": cal["latency_ms"],
            }
            row["within_20pct"] = all(0.8 <= v <= 1.2 for v in row["sim_over_loopback"].values())
            rows.append(row)
            say(f"N={n}: {row['sim_over_loopback']}")
        report["rows"] = rows
    print(json.dumps(report, indent=None if args.json else 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
