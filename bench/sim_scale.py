"""The simulator at scale: setup time, speed and memory per simulated node.

Runs `rumor sim`'s default scenario (warm start, encrypted, one update every
5 s, 200 ms interval, fanout 3) at each size, one size per child process so
that memory is measured alone, and reports: setup wall and CPU seconds,
the run's CPU seconds, simulated seconds per wall second without and with
setup, and resident memory per node after setup. It imports the tree it
sits in, so a copy of it in an exported older tree measures that tree. A
size that cannot finish within `--mem-gb` of address space or `--limit-s`
seconds reports how far its warm start got.

    flock /work/bench.lock .venv/bin/python bench/sim_scale.py \
        [--sizes 100,1000,10000] [--duration 60] [--mem-gb 14] [--limit-s 600] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(n: int, duration: float, mem_gb: float) -> None:
    """One size, in this process; prints one JSON line (and progress lines)."""
    limit = int(mem_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import compiled_build
    import gossip.core
    import sim.network
    from sim.runner import run_scenario
    from sim.scenario import Scenario

    base = rss_mb()
    at_setup: dict[str, float] = {}
    started = time.perf_counter()
    cpu0 = time.process_time()
    original = sim.network.bootstrap

    def bootstrap(*args: object, **kw: object) -> sim.network.SimNetwork:
        def progress(done: int) -> None:
            if done % max(1, n // 20) == 0:
                print(
                    json.dumps(
                        {
                            "progress": done,
                            "s": round(time.perf_counter() - started, 1),
                            "rss_mb": round(rss_mb()),
                        }
                    ),
                    flush=True,
                )

        net = original(*args, progress=progress, **kw)  # type: ignore[arg-type]
        at_setup["rss_mb"] = rss_mb() - base
        at_setup["cpu_s"] = time.process_time() - cpu0
        return net

    sim.runner.bootstrap = bootstrap  # type: ignore[attr-defined]
    r = run_scenario(Scenario(nodes=n, duration=duration))
    cpu = time.process_time() - cpu0
    run_wall = r["wall_seconds"] - r["setup_wall_seconds"]
    print(
        json.dumps(
            {
                "nodes": n,
                "compiled": compiled_build.is_compiled(gossip.core),
                "setup_wall_s": r["setup_wall_seconds"],
                "run_wall_s": round(run_wall, 2),
                # CPU seconds of this process: less moved than wall time by
                # other jobs on a shared machine (the run's includes the
                # runner's analysis after it, well under 1%).
                "setup_cpu_s": round(at_setup["cpu_s"], 2),
                "run_cpu_s": round(cpu - at_setup["cpu_s"], 2),
                "sim_s": r["sim_seconds"],
                "speed_run": round(r["sim_seconds"] / run_wall, 2),
                "speed_with_setup": round(r["sim_seconds"] / r["wall_seconds"], 2),
                "rss_mb_after_setup": round(at_setup["rss_mb"]),
                "kb_per_node": round(at_setup["rss_mb"] * 1024 / n, 1),
                "messages": r["messages"],
                "converged": r["converged"],
                "trace_hash": r["trace_hash"],
            }
        ),
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--mem-gb", type=float, default=14.0)
    ap.add_argument("--limit-s", type=float, default=600.0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.duration, args.mem_gb)
        return 0
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        cmd = [sys.executable, __file__, "--child", str(n), "--duration", str(args.duration)]
        cmd += ["--mem-gb", str(args.mem_gb)]
        try:
            out = subprocess.run(
                cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.limit_s
            )
            lines, err, rc = out.stdout.splitlines(), out.stderr, out.returncode
        except subprocess.TimeoutExpired as e:
            raw = e.stdout or b""
            lines = (raw.decode() if isinstance(raw, bytes) else raw).splitlines()
            err, rc = f"stopped after {args.limit_s:g} s", -1
        records = [json.loads(x) for x in lines if x.startswith("{")]
        done = [x for x in records if "nodes" in x]
        if done:
            row = done[-1]
        else:
            last = ([x for x in records if "progress" in x] or [{}])[-1]
            why = err.strip().splitlines()[-1] if err.strip() else f"exit {rc}"
            row = {"nodes": n, "failed": why, "warm_started": last.get("progress", 0), **last}
        rows.append(row)
        if not args.json:
            print(json.dumps(row), flush=True)
    if args.json:
        print(json.dumps({"date": time.strftime("%Y-%m-%d"), "results": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
