"""`rumor demo`, the main job behind `make demo`.

It starts a local cluster of real `rumor node` processes with the built-in
models, measures how fast a change spreads, drives inference traffic into
every node (each request is routed to a ready replica), kills a node with
SIGKILL while traffic flows, restarts it, and shuts everything down cleanly.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from .commands import spawn_node

LLM = "chat"
PAYLOADS = {
    "mlp": {
        "inputs": [{"name": "input", "shape": [1, 256], "datatype": "FP32", "data": [0.25] * 256}]
    },
    "transformer": {
        "inputs": [
            {"name": "input", "shape": [1, 32], "datatype": "INT64", "data": list(range(32))}
        ]
    },
}


def wait_until(
    cond: Callable[[], bool],
    timeout: float,
    step: float = 0.01,
    errors: tuple[type[Exception], ...] = (httpx.HTTPError,),
) -> float | None:
    """Seconds until `cond()` held (an `errors` exception counts as not yet),
    or None after `timeout`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if cond():
                return time.monotonic() - t0
        except errors:
            pass
        time.sleep(step)
    return None


def run_demo(args: argparse.Namespace) -> int:
    console = Console()
    rng = random.Random(args.seed)
    n = max(3, args.nodes)
    plan = {f"node{i}": [] for i in range(n)}
    plan["node0"].append("mlp=builtin:mlp")
    plan["node1"].append("transformer=builtin:transformer")
    plan["node1"].append(f"{LLM}=builtin:llm,size=small")
    plan["node2"].append("mlp=builtin:mlp")
    procs: dict[str, subprocess.Popen[str]] = {}
    bound: dict[str, dict[str, str]] = {}
    client = httpx.Client(timeout=10)
    figures: list[tuple[str, str]] = []
    data_dir = tempfile.mkdtemp(prefix="rumor-demo-")

    def start(name: str) -> None:
        join = [bound[o]["gossip"] for o in bound if o != name and procs[o].poll() is None][:2]
        procs[name], bound[name] = spawn_node(
            name, join, plan[name], ["--data-dir", os.path.join(data_dir, name)]
        )

    def view(name: str) -> dict[str, Any]:
        return client.get(f"http://{bound[name]['http']}/v1/cluster").json()

    def status(observer: str, member: str) -> str | None:
        return next((m["status"] for m in view(observer)["members"] if m["name"] == member), None)

    console.rule("[bold]rumor demo: a local cluster of real daemons")
    try:
        with console.status("starting daemons and loading models..."):
            for name in plan:
                start(name)
            formed = wait_until(
                lambda: all(
                    sum(m["status"] == "alive" for m in view(o)["members"]) == n for o in plan
                ),
                30,
            )
            ready = wait_until(
                lambda: all(
                    client.get(f"http://{bound[o]['http']}/v2/models/{m}/ready").status_code == 200
                    for o in plan
                    for m in [*PAYLOADS, LLM]
                ),
                90,
            )
        if formed is None or ready is None:
            console.print("[red]the cluster did not form[/red]")
            return 1
        for name, b in bound.items():
            console.print(
                f"  {name}: http://{b['http']}  gossip {b['gossip']}  "
                f"models: {', '.join(plan[name]) or '-'}"
            )
        console.print(f"  cluster page (any node serves it): http://{bound['node0']['http']}/ui")
        figures.append(("cluster formed (all see all)", f"{formed:.2f} s"))

        # 1. Convergence: one node's tag change, observed by every other node.
        stamp = str(time.time())
        client.put(f"http://{bound['node1']['http']}/v1/node/tags", json={"demo": stamp})
        spread = wait_until(
            lambda: all(
                next(m for m in view(o)["members"] if m["name"] == "node1")["tags"].get("demo")
                == stamp
                for o in plan
                if o != "node1"
            ),
            10,
        )
        figures.append(
            (
                "tag change seen by every node",
                "never" if spread is None else f"{spread * 1000:.0f} ms (polled)",
            )
        )

        # 2. Traffic into every node; each request is routed to a ready replica.
        latencies: list[float] = []
        served: Counter[str] = Counter()
        forwarded = failures = 0
        with Progress(
            TextColumn("routing requests"),
            BarColumn(),
            MofNCompleteColumn(),
            console=console,
            transient=True,
        ) as progress:
            task = progress.add_task("traffic", total=args.requests)
            for _ in range(args.requests):
                entry = rng.choice(list(plan))
                model = rng.choice(list(PAYLOADS))
                t0 = time.perf_counter()
                r = client.post(
                    f"http://{bound[entry]['http']}/v2/models/{model}/infer", json=PAYLOADS[model]
                )
                latencies.append(time.perf_counter() - t0)
                if r.status_code == 200:
                    by = r.headers["x-rumor-served-by"]
                    served[by] += 1
                    forwarded += by != entry
                else:
                    failures += 1
                progress.advance(task)
        lat = sorted(latencies)
        figures.append(("requests served / failed", f"{sum(served.values())} / {failures}"))
        figures.append(("served by", ", ".join(f"{k}: {v}" for k, v in sorted(served.items()))))
        figures.append(("forwarded to another node", f"{forwarded / max(1, len(lat)):.0%}"))
        figures.append(
            (
                "latency p50 / p99",
                f"{statistics.median(lat) * 1000:.1f} / "
                f"{lat[int(0.99 * (len(lat) - 1))] * 1000:.1f} ms",
            )
        )

        # 3. An LLM: a chat completion streamed through node0, which does not
        #    hold the model (node1 does), token by token as node1 generates it.
        console.print(f"  streaming a chat completion from {LLM!r} through node0 (held by node1):")
        t0 = time.perf_counter()
        first = None
        pieces = 0
        with client.stream(
            "POST",
            f"http://{bound['node0']['http']}/v1/chat/completions",
            json={
                "model": LLM,
                "messages": [{"role": "user", "content": "Tell me about gossip."}],
                "max_tokens": 48,
                "stream": True,
                "seed": args.seed,
            },
        ) as r:
            served_by = r.headers.get("x-rumor-served-by", "?")
            console.print("  [dim]>[/dim] ", end="")
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                import json

                for choice in json.loads(line[6:]).get("choices", []):
                    text = (choice.get("delta") or {}).get("content") or ""
                    if text and first is None:
                        first = time.perf_counter() - t0
                    pieces += bool(text)
                    console.print(repr(text)[1:-1], end="", markup=False, highlight=False)
        console.print()
        took = time.perf_counter() - t0
        figures.append(
            (
                f"LLM stream through node0 (served by {served_by})",
                f"first token {1000 * (first or took):.0f} ms, {pieces} chunks in {took:.2f} s "
                "(random weights: the text is noise)",
            )
        )

        # 4. SIGKILL a replica while requests keep flowing; then restart it.
        victim = "node2"
        os.killpg(procs[victim].pid, signal.SIGKILL)
        procs[victim].wait(10)
        killed_at = time.monotonic()
        during = {"ok": 0, "failed": 0}
        observers = [o for o in plan if o != victim]
        detected = None
        while time.monotonic() - killed_at < 20:
            r = client.post(
                f"http://{bound['node1']['http']}/v2/models/mlp/infer", json=PAYLOADS["mlp"]
            )
            during["ok" if r.status_code == 200 else "failed"] += 1
            if all(status(o, victim) == "dead" for o in observers):
                detected = time.monotonic() - killed_at
                break
            time.sleep(0.02)
        figures.append(
            (
                "SIGKILLed node declared dead by all",
                "not within 20 s" if detected is None else f"{detected:.2f} s",
            )
        )
        figures.append(
            (
                "mlp requests during the failure",
                f"{during['ok']} ok, {during['failed']} failed (another replica was live)",
            )
        )
        gen_before = next(m["generation"] for m in view("node0")["members"] if m["name"] == victim)
        t0 = time.monotonic()
        start(victim)
        back = wait_until(lambda: all(status(o, victim) == "alive" for o in observers), 20)
        gen_after = next(m["generation"] for m in view("node0")["members"] if m["name"] == victim)
        figures.append(
            (
                "restarted node alive everywhere",
                "not within 20 s"
                if back is None
                else f"{time.monotonic() - t0:.2f} s (generation {gen_before} -> {gen_after})",
            )
        )

        table = Table(title="measured on this machine")
        table.add_column("what")
        table.add_column("figure", justify="right")
        for k, v in figures:
            table.add_row(k, v)
        console.print(table)
        ok = detected is not None and back is not None and failures == 0
    finally:
        client.close()
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
    left = [name for name, p in procs.items() if p.poll() is None]
    console.print("all daemons stopped cleanly" if not left else f"[red]left running: {left}")
    return 0 if ok and not left else 1
