"""Routing on real daemons: skewed clients, the forward hop, and cluster scaling.

    .venv/bin/python bench/routing_daemons.py            # about 5 minutes
    .venv/bin/python bench/routing_daemons.py --seconds 5 --json

Load comes from `wrk` (Debian's package; installed with apt when missing and
root), a C load generator, so the client takes little of the CPU the daemons
share. Every daemon serves the built-in `mlp` unless said otherwise.

1. skew: 5 nodes; every request enters at n0. p50/p99 and throughput with the
   daemon's router set to rumor, round_robin and random (`--router`).
2. hop: n0 without the model forwards to n1. p50 latency at one connection
   and throughput at 16 connections, direct to n1 against through n0.
3. scaling: 1..5 nodes, one wrk per node; cluster throughput T(n), fitted to
   T(n) = C n / (1 + alpha (n - 1)) (least squares on n/T = 1/C + (alpha/C)(n-1)).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
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
from node.localcluster import LocalCluster  # noqa: E402

BODY = {"inputs": [{"name": "input", "shape": [1, 256], "datatype": "FP32", "data": [0.1] * 256}]}


class Cluster:
    """Daemons n0..n(k-1) on loopback (node.localcluster.LocalCluster), each
    serving `mlp` or not, all with the same router; ready when constructed."""

    def __init__(self, models: list[bool], router: str = "rumor") -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="rumor-routing-cluster-"))
        self.local = LocalCluster(
            self.workdir, common=("--router", router, "--log-level", "warning"), data_dirs=False
        )
        self.http: list[str] = []
        try:
            for i, has_model in enumerate(models):
                node = self.local.start(
                    f"n{i}",
                    models=["mlp=builtin:mlp"] if has_model else [],
                    join=["n0"] if i else [],
                )
                self.http.append(node.http)
            want = sum(models)
            deadline = time.time() + 60
            while time.time() < deadline:
                views = [httpx.get(f"http://{h}/v1/cluster", timeout=5).json() for h in self.http]
                ready = [
                    sum(m["models"].get("mlp", {}).get("state") == "ready" for m in v["members"])
                    for v in views
                ]
                if all(r == want for r in ready) and all(
                    len(v["members"]) == len(models) for v in views
                ):
                    break
                time.sleep(0.2)
            else:
                raise RuntimeError("cluster did not become ready")
            time.sleep(1.0)
        except BaseException:
            self.stop()
            raise

    def url(self, i: int) -> str:
        return f"http://{self.http[i]}/v2/models/mlp/infer"

    def stop(self) -> None:
        try:
            self.local.stop_all(grace=15)
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _ms(text: str) -> float:
    m = re.match(r"([0-9.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v


def wrk(wrk_bin: str, script: Path, url: str, conns: int, seconds: float) -> subprocess.Popen[str]:
    cmd = [wrk_bin, "-t", "1", "-c", str(conns), "-d", f"{max(1, round(seconds))}s", "--latency"]
    cmd += ["-s", str(script), url]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def parse(out: str) -> dict[str, Any]:
    r: dict[str, Any] = {}
    m = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    r["rps"] = float(m.group(1)) if m else 0.0
    for q in ("50", "90", "99"):
        m = re.search(rf"^\s+{q}%\s+(\S+)", out, re.M)
        r[f"p{q}_ms"] = round(_ms(m.group(1)), 3) if m else None
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    r["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"(\d+) requests in", out)
    r["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", out)
    r["socket_errors"] = m.group(1).strip() if m else ""
    return r


def run_one(wrk_bin: str, script: Path, url: str, conns: int, seconds: float) -> dict[str, Any]:
    p = wrk(wrk_bin, script, url, conns, seconds)
    out, _ = p.communicate(timeout=seconds + 60)
    return parse(out)


def served_by(c: Cluster) -> dict[str, int]:
    """Requests each node served locally (its request histogram's count)."""
    out = {}
    for i, h in enumerate(c.http):
        text = httpx.get(f"http://{h}/metrics", timeout=5).text
        m = re.search(
            r'rumor_request_duration_seconds_count\{model="mlp",served="local"\} ([0-9.e+]+)', text
        )
        out[f"n{i}"] = int(float(m.group(1))) if m else 0
    return out


def routing_counts(c: Cluster) -> dict[str, int]:
    total: dict[str, int] = {}
    for h in c.http:
        text = httpx.get(f"http://{h}/metrics", timeout=5).text
        for k, v in re.findall(r'rumor_routing_total\{outcome="(\w+)"\} ([0-9.e+]+)', text):
            total[k] = total.get(k, 0) + int(float(v))
    return total


def fit_usl(points: list[tuple[int, float]]) -> dict[str, float]:
    """T(n) = C n / (1 + alpha (n-1)): n/T is linear in (n-1)."""
    xs = [n - 1 for n, _ in points]
    ys = [n / t for n, t in points]
    k = len(xs)
    mx, my = sum(xs) / k, sum(ys) / k
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    a = my - b * mx
    c = 1 / a
    alpha = b * c
    pred = [c * n / (1 + alpha * (n - 1)) for n, _ in points]
    err = max(abs(p - t) / t for p, (_, t) in zip(pred, points, strict=True))
    return {"C_rps": round(c, 1), "alpha": round(alpha, 4), "max_rel_error": round(err, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=15.0, help="per measurement")
    ap.add_argument("--conns", type=int, default=32, help="connections for the skew runs")
    ap.add_argument("--max-nodes", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--torch-threads",
        default="1",
        help="OMP_NUM_THREADS for every daemon (default 1: on 2 cores, several daemons' "
        "spinning OpenMP pools starve each other; 'auto' leaves torch's default)",
    )
    args = ap.parse_args(argv)
    wrk_bin = ensure_tool("wrk", "wrk")
    if args.torch_threads != "auto":
        os.environ["OMP_NUM_THREADS"] = args.torch_threads

    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores",
        "seconds": args.seconds,
        "torch_threads": args.torch_threads,
    }
    with tempfile.TemporaryDirectory(prefix="rumor-routing-") as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            f"wrk.body = '{json.dumps(BODY)}'\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
        # 1. skew
        skew = {}
        for router, busy in (("rumor", 0), ("rumor", 4), ("round_robin", 0), ("random", 0)):
            label = router + (f"_busy_queue_{busy}" if busy else "")
            say(f"skew: 5 nodes, every request into n0, {label}")
            if busy:
                os.environ["RUMOR_BUSY_QUEUE"] = str(busy)
            try:
                c = Cluster([True] * 5, router)
            finally:
                os.environ.pop("RUMOR_BUSY_QUEUE", None)
            try:
                run_one(wrk_bin, script, c.url(0), args.conns, 2)  # warm up
                skew[label] = run_one(wrk_bin, script, c.url(0), args.conns, args.seconds)
                skew[label]["served_by"] = served_by(c)
                skew[label]["routing"] = routing_counts(c)
            finally:
                c.stop()
        report["skew"] = skew
        # 2. hop
        say("hop: n0 (no model) forwards to n1")
        c = Cluster([False, True])
        try:
            run_one(wrk_bin, script, c.url(1), 4, 2)
            hop = {
                "direct_c1": run_one(wrk_bin, script, c.url(1), 1, args.seconds),
                "forwarded_c1": run_one(wrk_bin, script, c.url(0), 1, args.seconds),
                "direct_c16": run_one(wrk_bin, script, c.url(1), 16, args.seconds),
                "forwarded_c16": run_one(wrk_bin, script, c.url(0), 16, args.seconds),
            }
        finally:
            c.stop()
        hop["added_p50_ms"] = round(hop["forwarded_c1"]["p50_ms"] - hop["direct_c1"]["p50_ms"], 3)
        hop["throughput_ratio"] = round(hop["forwarded_c16"]["rps"] / hop["direct_c16"]["rps"], 3)
        report["hop"] = hop
        # 3. scaling
        points = []
        scaling = []
        for n in range(1, args.max_nodes + 1):
            say(f"scaling: {n} node(s)")
            c = Cluster([True] * n)
            try:
                for i in range(n):
                    run_one(wrk_bin, script, c.url(i), 2, 1)
                procs = [wrk(wrk_bin, script, c.url(i), 8, args.seconds) for i in range(n)]
                outs = [parse(p.communicate(timeout=args.seconds + 60)[0]) for p in procs]
            finally:
                c.stop()
            total = sum(o["rps"] for o in outs)
            points.append((n, total))
            scaling.append(
                {"nodes": n, "rps": round(total, 1), "non_2xx": sum(o["non_2xx"] for o in outs)}
            )
        report["scaling"] = scaling
        report["usl_fit"] = fit_usl(points)
    if args.json:
        print(json.dumps(report))
    else:
        print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
