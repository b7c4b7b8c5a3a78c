"""Failure detection as a fleet runs it: every daemon holds a model, and a load
generator drives a stated request rate through the cluster while nodes are
SIGKILLed. Idle and loaded, against HashiCorp Serf in the same run.

    .venv/bin/python bench/detection_fleet.py --nodes 3,10,40 --json out.json

For each N: Serf agents (lan profile); rumor daemons holding `mlp=builtin:mlp`,
idle; and the same under load: `wrk` first measures the cluster's capacity
(closed loop, every node an entry point), then paces its connections to
`--load` (0.7) of it for the whole kill phase. Each phase kills 3 members in
turn and reports the median, over kills, of the time until the last peer
declares the victim dead (Serf: less its measured event-coalescing delay, as
in bench/serf_compare.py, whose measurement this reuses). Also reported for
rumor: local health and late-tick/stall counters, the evidence for why
detection slows when the host is busy.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import ensure_tool, say  # noqa: E402
from bench.serf_compare import HOST, RumorCluster, SerfCluster, measure  # noqa: E402

MODEL = "mlp=builtin:mlp"
BODY = {"inputs": [{"name": "input", "shape": [1, 256], "datatype": "FP32", "data": [0.5] * 256}]}


class FleetCluster(RumorCluster):
    """rumor daemons that each hold a model (serf_compare's RumorCluster starts bare ones)."""

    def start(self, interval: float, fanout: int) -> None:
        env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        import os

        for i, node in enumerate(self.names()):
            cmd = [
                sys.executable, "-m", "node.cli", "node", "--name", node,
                "--gossip", f"{HOST}:{self.gossip_base + i}",
                "--http", f"{HOST}:{self.http_base + i}",
                "--interval", str(interval), "--fanout", str(fanout),
                "--model", MODEL, "--log-json", "--log-level", "debug",
            ]  # fmt: skip
            if i:
                cmd += ["--join", f"{HOST}:{self.gossip_base}"]
            with open(self.event_file(node), "wb") as err:
                self.procs[node] = subprocess.Popen(
                    cmd,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    env={**os.environ, **env},
                    start_new_session=True,
                    cwd=ROOT,
                )
            out = self.procs[node].stdout
            assert out is not None
            if not out.readline():
                raise RuntimeError(f"{node} did not start; see {self.event_file(node)}")

    def wait_models(self, timeout: float) -> bool:
        end = time.time() + timeout
        with httpx.Client() as client:
            while time.time() < end:
                v = self.view(client, 0)
                if (
                    v is not None
                    and sum(
                        (m.get("models") or {}).get("mlp", {}).get("state") == "ready"
                        for m in v["members"]
                    )
                    == self.n
                ):
                    return True
                time.sleep(0.3)
        return False

    def health(self) -> dict[str, Any]:
        """Local health and the lateness counters of every live daemon."""
        healths, late, stalls = [], 0.0, 0.0
        with httpx.Client() as client:
            for i in range(self.n):
                if not self.alive(self.node_name(i)):
                    continue
                v = self.view(client, i)
                if v is not None:
                    me = next(m for m in v["members"] if m["name"] == v["self"])
                    healths.append(me["evidence"]["local_health"])
                try:
                    text = client.get(f"{self.http(i)}/metrics", timeout=5).text
                except httpx.HTTPError:
                    continue
                late += _counter(text, "late_ticks")
                stalls += _counter(text, "local_stalls")
        return {"local_health": healths, "late_ticks": late, "local_stalls": stalls}


def _counter(text: str, name: str) -> float:
    m = re.search(rf'rumor_gossip_counter_total{{counter="{name}"}} ([0-9.e+]+)', text)
    return float(m.group(1)) if m else 0.0


def wrk_script(path: Path, pace_ms: float) -> Path:
    path.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = '{json.dumps(BODY)}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        + (f"function delay() return {pace_ms:.3f} end\n" if pace_ms > 0 else "")
    )
    return path


def run_wrk(wrk: str, script: Path, urls: list[str], conns: int, seconds: float) -> float:
    """Requests per second through all `urls` (one wrk each)."""
    procs = [
        subprocess.Popen(
            [
                wrk,
                "-t",
                "1",
                "-c",
                str(conns),
                "-d",
                f"{max(1, round(seconds))}s",
                "-s",
                str(script),
                f"{u}/v2/models/mlp/infer",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for u in urls
    ]
    total = 0.0
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 60)
        m = re.search(r"Requests/sec:\s+([0-9.]+)", out)
        total += float(m.group(1)) if m else 0.0
    return total


def fleet(
    n: int, args: argparse.Namespace, tmp: Path, tcpdump: str, wrk: str, loaded: bool
) -> dict:
    rng = random.Random(args.seed * 1000 + n + (1 if loaded else 0))
    c = FleetCluster(n, tmp / ("loaded" if loaded else "idle"))
    c.work.mkdir()
    label = f"rumor+model N={n} {'loaded' if loaded else 'idle'}"
    load: subprocess.Popen[str] | list[subprocess.Popen[str]] | None = None
    try:
        say(f"{label}: starting")
        c.start(args.interval, args.fanout)
        if not (c.wait_converged(240) and c.wait_models(240)):
            raise RuntimeError(f"{label}: did not converge")
        extra: dict[str, Any] = {}
        urls = [c.http(i) for i in range(n)]
        if loaded:
            conns = args.conns
            script = wrk_script(c.work / "max.lua", 0)
            run_wrk(wrk, script, urls, conns, 2)  # warm up
            capacity = run_wrk(wrk, script, urls, conns, args.calibrate)
            # Pace each connection so the whole cluster sees `load` x capacity
            # (closed loop with think time: rate = conns / (latency + delay)).
            target = args.load * capacity
            per_conn = target / (conns * len(urls))
            pace_ms = max(0.0, 1000.0 / per_conn - 1000.0 / (capacity / (conns * len(urls))))
            paced = wrk_script(c.work / "paced.lua", pace_ms)
            achieved = run_wrk(wrk, paced, urls, conns, 3)
            extra = {
                "capacity_rps": round(capacity, 1),
                "target_rps": round(target, 1),
                "pace_ms": round(pace_ms, 2),
                "achieved_rps_calibration": round(achieved, 1),
            }
            say(f"{label}: capacity {capacity:.0f} req/s, pacing to {target:.0f} ({achieved:.0f})")
            duration = 60 + 30 * 3  # the kill phase, generously
            load = [
                subprocess.Popen(
                    [
                        wrk,
                        "-t",
                        "1",
                        "-c",
                        str(conns),
                        "-d",
                        f"{duration}s",
                        "-s",
                        str(paced),
                        f"{u}/v2/models/mlp/infer",
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                for u in urls
            ]
            time.sleep(3)
        before = c.health()
        out = measure(
            c,
            set_tag=c.set_tag,
            tcpdump=tcpdump,
            idle_s=2,
            trials=0,
            rng=rng,
            settle_s=args.settle,
            kills=min(3, n - 2),
        )
        out.update(extra)
        out["health_before_kills"] = before
        out["health_after_kills"] = c.health()
        out["system"] = "rumor+model" + (" loaded" if loaded else " idle")
        return out
    finally:
        for p in load or []:
            p.kill()
            p.wait(10)
        c.stop()


def bare(n: int, args: argparse.Namespace, tmp: Path, tcpdump: str) -> dict:
    """rumor daemons that hold no model: the figure bench/serf_compare.py measures."""
    rng = random.Random(args.seed * 1000 + n + 3)
    c = RumorCluster(n, tmp / "bare")
    c.work.mkdir()
    try:
        say(f"rumor N={n} bare: starting")
        c.start(args.interval, args.fanout)
        if not c.wait_converged(240):
            raise RuntimeError(f"rumor N={n} bare did not converge")
        out = measure(
            c, set_tag=c.set_tag, tcpdump=tcpdump, idle_s=2, trials=0, rng=rng,
            settle_s=args.settle, kills=min(3, n - 2),
        )  # fmt: skip
        out["system"] = "rumor bare"
        return out
    finally:
        c.stop()


def serf(n: int, args: argparse.Namespace, tmp: Path, serf_bin: str, tcpdump: str) -> dict:
    rng = random.Random(args.seed * 1000 + n + 7)
    s = SerfCluster(n, tmp / "serf")
    s.work.mkdir()
    try:
        say(f"serf N={n}: starting")
        s.start(serf_bin)
        if not s.wait_converged(serf_bin, 120):
            raise RuntimeError(f"serf N={n} did not converge")
        # One tag change first: it measures Serf's event-coalescing delay,
        # which its detection figure is corrected by.
        return measure(
            s,
            set_tag=lambda i, v: s.set_tag(i, v, serf_bin),
            tcpdump=tcpdump,
            idle_s=2,
            trials=2,
            rng=rng,
            settle_s=args.settle,
            kills=min(3, n - 2),
        )
    finally:
        s.stop()


def detection(r: dict[str, Any]) -> float | None:
    fd = r.get("failure_detection") or {}
    less = fd.get("less_event_delay")
    return (less or fd).get("max_s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", default="3,10,40")
    ap.add_argument("--interval", type=float, default=0.2)
    ap.add_argument("--fanout", type=int, default=3)
    ap.add_argument("--load", type=float, default=0.7, help="fraction of measured capacity")
    ap.add_argument("--conns", type=int, default=4, help="wrk connections per entry node")
    ap.add_argument("--calibrate", type=float, default=8.0, help="capacity run, s")
    ap.add_argument("--settle", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", metavar="OUT", help="also write the results here")
    args = ap.parse_args(argv)
    serf_bin = ensure_tool("serf", "serf")
    tcpdump = ensure_tool("tcpdump", "tcpdump")
    wrk = ensure_tool("wrk", "wrk")
    results: list[dict[str, Any]] = []
    for n in [int(x) for x in args.nodes.split(",")]:
        with tempfile.TemporaryDirectory(prefix=f"fleet{n}-") as tmp:
            row: dict[str, Any] = {"nodes": n}
            row["serf"] = serf(n, args, Path(tmp), serf_bin, tcpdump)
            row["bare"] = bare(n, args, Path(tmp), tcpdump)
            row["idle"] = fleet(n, args, Path(tmp), tcpdump, wrk, loaded=False)
            row["loaded"] = fleet(n, args, Path(tmp), tcpdump, wrk, loaded=True)
            s, b, i, ld = (detection(row[k]) for k in ("serf", "bare", "idle", "loaded"))
            row["summary"] = {
                "serf_s": s,
                "bare_s": b,
                "idle_over_bare": round(i / b, 3) if i and b else None,
                "idle_s": i,
                "loaded_s": ld,
                "idle_over_serf": round(i / s, 3) if i and s else None,
                "loaded_over_serf": round(ld / s, 3) if ld and s else None,
                "loaded_over_idle": round(ld / i, 3) if ld and i else None,
                "false_deaths": {
                    k: row[k].get("false_deaths") for k in ("serf", "bare", "idle", "loaded")
                },
            }
            say(f"N={n}: {json.dumps(row['summary'])}")
            results.append(row)
    print(json.dumps({"results": results}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results}, indent=1))
    print(
        "| N | Serf | rumor, no model | rumor, models, idle | rumor, models, loaded "
        "| idle/no model | loaded/idle | idle/Serf | loaded/Serf |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in results:
        s = row["summary"]
        print(
            f"| {row['nodes']} | {s['serf_s']} | {s['bare_s']} | {s['idle_s']} | {s['loaded_s']} "
            f"| {s['idle_over_bare']} | {s['loaded_over_idle']} | {s['idle_over_serf']} "
            f"| {s['loaded_over_serf']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
