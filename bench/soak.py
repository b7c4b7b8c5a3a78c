"""Soak: 5 daemons, continuous traffic, and churn (a node killed and restarted every 30 s).

    .venv/bin/python bench/soak.py                   # 10 minutes
    .venv/bin/python bench/soak.py --minutes 2 --json

n0 carries no model and is never killed: it is the entry node and the one
whose memory is watched over the whole run.  n1..n4 serve `mlp`; every
`--churn` seconds one of them (in turn) is SIGKILLed and restarted
`--down` seconds later with the same --data-dir (so a new generation).

Clients (threads) send KServe v2 infer requests, half through n0 (which
forwards) and half to a random node.  Every request must end as one of:
served (200), a clear error (an HTTP status with a JSON `error` message), or
a refused connection to a node that is down at that moment.  A request that
hangs past its timeout, or fails any other way, is a violation.

Reported: outcomes, memory (RSS) of every daemon sampled every 10 s, member
deaths that were not of a node that was down (false deaths), and latency.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import say  # noqa: E402
from node.localcluster import LocalCluster  # noqa: E402

N = 5
BODY = {"inputs": [{"name": "input", "shape": [1, 256], "datatype": "FP32", "data": [0.1] * 256}]}


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Cluster:
    """The soak's five daemons (node.localcluster.LocalCluster), with when each
    was down, for telling false deaths from true ones."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.local = LocalCluster(tmp, common=("--log-json", "--drain-timeout", "1"))
        self.http: dict[int, str] = {}
        self.down_since: dict[int, float] = {}
        self.down_windows: list[tuple[str, float, float]] = []  # (name, from, to)
        self.lock = threading.Lock()

    @property
    def procs(self) -> dict[int, subprocess.Popen[str]]:
        return {int(name[1:]): n.proc for name, n in self.local.nodes.items()}

    def start(self, i: int) -> None:
        # A restart keeps its HTTP port, as a real host would; same data dir.
        extra = ["--http", self.http[i]] if i in self.http else []
        models = ["mlp=builtin:mlp"] if i else []
        node = self.local.start(f"n{i}", models=models, join=["n0"] if i else [], extra=extra)
        with self.lock:
            self.http[i] = node.http
            if i in self.down_since:
                self.down_windows.append((f"n{i}", self.down_since.pop(i), time.time()))

    def kill(self, i: int) -> None:
        with self.lock:
            self.down_since[i] = time.time()
        self.local.kill(f"n{i}")

    def is_down(self, i: int) -> bool:
        with self.lock:
            return i in self.down_since

    def stop(self) -> None:
        self.local.stop_all()

    def deaths(self) -> list[tuple[str, str, float]]:
        out = []
        for i in range(N):
            path = self.tmp / f"n{i}.log"
            if not path.exists():
                continue
            for line in path.read_text(errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("event") == "member-dead":
                    out.append((f"n{i}", rec["member"], float(rec["time"])))
        return out


def client_loop(
    c: Cluster, stop: threading.Event, rng: random.Random, via_entry: bool, out: dict[str, Any]
) -> None:
    with httpx.Client(timeout=30) as http:
        while not stop.is_set():
            i = 0 if via_entry else rng.randrange(N)
            was_down = c.is_down(i)
            t = time.perf_counter()
            try:
                r = http.post(f"http://{c.http[i]}/v2/models/mlp/infer", json=BODY)
            except httpx.ConnectError:
                key = "refused_down" if was_down or c.is_down(i) else "refused_up"
                out[key] = out.get(key, 0) + 1
                time.sleep(0.05)
                continue
            except httpx.TimeoutException:
                out["timeout"] = out.get("timeout", 0) + 1
                continue
            except httpx.HTTPError as e:
                # The node died mid-request (reset): clear to the client, if
                # it was the node that went down.
                key = "reset_down" if c.is_down(i) else f"error_{type(e).__name__}"
                out[key] = out.get(key, 0) + 1
                continue
            if r.status_code == 200:
                out["served"] = out.get("served", 0) + 1
                out.setdefault("latency", []).append(time.perf_counter() - t)
            else:
                try:
                    clear = bool(r.json().get("error"))
                except ValueError:
                    clear = False
                key = f"http_{r.status_code}" if clear else f"unclear_{r.status_code}"
                out[key] = out.get(key, 0) + 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--churn", type=float, default=30.0, help="seconds between kills")
    ap.add_argument("--down", type=float, default=5.0, help="seconds a killed node stays down")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="rumor-soak-") as tmp:
        c = Cluster(Path(tmp))
        stop = threading.Event()
        outs: list[dict[str, Any]] = []
        threads = []
        memory: list[dict[str, int]] = []
        try:
            for i in range(N):
                c.start(i)
            deadline = time.time() + 60
            while time.time() < deadline:
                try:
                    if httpx.get(f"http://{c.http[0]}/v2/models/mlp/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            time.sleep(2)
            t0 = time.time()
            for k in range(args.clients):
                out: dict[str, Any] = {}
                outs.append(out)
                th = threading.Thread(
                    target=client_loop,
                    args=(c, stop, random.Random(args.seed + k), k % 2 == 0, out),
                )
                th.start()
                threads.append(th)
            end = t0 + args.minutes * 60
            next_kill, next_sample, victim = t0 + args.churn, t0, 1
            restart_at: dict[int, float] = {}
            while time.time() < end:
                now = time.time()
                if now >= next_sample:
                    memory.append({f"n{i}": rss_kib(p.pid) for i, p in c.procs.items()
                                   if p.poll() is None} | {"t": int(now - t0)})  # fmt: skip
                    next_sample += 10
                if now >= next_kill:
                    say(f"kill n{victim}")
                    c.kill(victim)
                    restart_at[victim] = now + args.down
                    victim = victim % (N - 1) + 1
                    next_kill += args.churn
                for i, when in list(restart_at.items()):
                    if now >= when:
                        say(f"restart n{i}")
                        c.start(i)
                        del restart_at[i]
                time.sleep(0.1)
        finally:
            stop.set()
            for th in threads:
                th.join(60)
            c.stop()
        wall = time.time() - t0
        totals: dict[str, int] = {}
        latency: list[float] = []
        for out in outs:
            latency += out.pop("latency", [])
            for k, v in out.items():
                totals[k] = totals.get(k, 0) + v
        # A death is false unless its member was down then (plus detection slack).
        windows = c.down_windows + [(f"n{i}", s, time.time()) for i, s in c.down_since.items()]
        false = [
            d for d in c.deaths()
            if not any(d[1] == name and a <= d[2] <= b + 10 for name, a, b in windows)
        ]  # fmt: skip
        n0 = [m["n0"] for m in memory if "n0" in m]
        report = {
            "minutes": args.minutes,
            "kills": len(c.down_windows) + len(c.down_since),
            "requests": sum(totals.values()),
            "outcomes": totals,
            "violations": sum(
                v
                for k, v in totals.items()
                if k.startswith(("unclear_", "error_", "refused_up")) or k == "timeout"
            ),
            "served_per_s": round(totals.get("served", 0) / wall, 1),
            "latency_p50_ms": round(statistics.median(latency) * 1e3, 2) if latency else None,
            "latency_p99_ms": round(sorted(latency)[int(len(latency) * 0.99)] * 1e3, 2)
            if latency
            else None,
            "false_deaths": len(false),
            "false_death_examples": false[:5],
            "n0_rss_kib_first_last_max": [n0[0], n0[-1], max(n0)] if n0 else None,
            "n0_rss_growth_second_half_kib": (n0[-1] - n0[len(n0) // 2]) if n0 else None,
            "memory_samples": memory,
        }
    print(json.dumps(report, indent=None if args.json else 1))
    return 0 if report["violations"] == 0 and report["false_deaths"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
