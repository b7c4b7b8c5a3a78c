"""Prefix-cache-aware routing on real daemons: an agent workload, scaled down.

    flock /work/bench.lock .venv/bin/python bench/prefix_daemons.py            # ~6 minutes
    flock /work/bench.lock .venv/bin/python bench/prefix_daemons.py --seconds 20 --json

N daemons (node.localcluster.LocalCluster), each holding the built-in LLM
(`builtin:llm`, size small by default) in its own engine process; every daemon
is a router. For each policy (`--router`: rumor, whose LLM policy is
rumor_prefix, then p2c and round_robin) a fresh cluster (cold caches) serves
the same workload for `--seconds` (after `--warmup` unmeasured seconds):

`--agents` concurrent agents, each running sessions back to back like the
Open-AutoGLM phone agent: a shared system prompt (about 1,100 tokens of the
built-in tokenizer), 3-6 steps, each step the whole conversation so far plus a
new observation (about 250 tokens), 8 generated tokens, then a pause of
0.2-0.5 s (the agent acting). Every request enters at a random daemon (a plain load
balancer in front), streamed with `stream_options.include_usage`.

Measured per policy: TTFT (to the first streamed chunk) mean and p99, e2e,
completion tokens per second, and the prefix hit rate twice: from each
request's `usage.prompt_tokens_details.cached_tokens`, and from the engines'
own `prefix_cache_queries/hits` counters (gossiped in each node's record).
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import gossip_counters, say  # noqa: E402
from node.localcluster import LocalCluster  # noqa: E402

MODEL = "agent"
WORDS = [
    "tap",
    "swipe",
    "screen",
    "button",
    "settings",
    "wifi",
    "open",
    "close",
    "back",
    "home",
    "scroll",
    "list",
    "item",
    "menu",
    "search",
    "type",
    "text",
    "field",
    "confirm",
    "cancel",
    "photo",
    "camera",
    "message",
    "send",
    "contact",
    "call",
    "app",
    "battery",
    "network",
    "toggle",
    "enable",
    "disable",
    "page",
    "next",
    "previous",
    "select",
    "option",
    "account",
]


def spec(size: str, kv_mib: int) -> str:
    return (
        f"{MODEL}=builtin:llm,size={size},kv_cache_bytes={kv_mib << 20},cpu_threads=1,"
        "max_num_batched_tokens=512"
    )


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


class Agents:
    """`n` agent loops against the cluster until `deadline`; results per request."""

    def __init__(self, urls: list[str], seed: int, think_s: tuple[float, float]) -> None:
        self.urls, self.seed, self.think_s = urls, seed, think_s
        self.system = "You are a phone agent. " + text(random.Random(seed), 285)
        self.rows: list[dict[str, Any]] = []
        self.errors = 0
        self.lock = threading.Lock()

    def run(self, n: int, seconds: float) -> float:
        deadline = time.monotonic() + seconds
        threads = [
            threading.Thread(target=self._agent, args=(i, deadline), daemon=True) for i in range(n)
        ]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.monotonic() - t0

    def _agent(self, i: int, deadline: float) -> None:
        rng = random.Random(f"{self.seed}/{i}")
        with httpx.Client(timeout=120) as http:
            while time.monotonic() < deadline:
                msgs = [{"role": "system", "content": self.system}]
                for _ in range(rng.randint(3, 6)):
                    if time.monotonic() >= deadline:
                        return
                    msgs.append({"role": "user", "content": "Screen: " + text(rng, 64)})
                    reply = self._step(http, rng.choice(self.urls), msgs)
                    if reply is None:
                        break
                    msgs.append({"role": "assistant", "content": reply})
                    time.sleep(rng.uniform(*self.think_s))

    def _step(self, http: httpx.Client, url: str, msgs: list[dict[str, str]]) -> str | None:
        body = {
            "model": MODEL, "messages": msgs, "max_tokens": 8, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True},
        }  # fmt: skip
        t0 = time.perf_counter()
        ttft = None
        parts: list[str] = []
        usage: dict[str, Any] = {}
        served = ""
        try:
            with http.stream("POST", url + "/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    r.read()
                    raise httpx.HTTPError(f"{r.status_code}: {r.text[:200]}")
                served = r.headers.get("x-rumor-served-by", "")
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    for c in chunk.get("choices", []):
                        parts.append(c.get("delta", {}).get("content") or "")
        except (httpx.HTTPError, ValueError) as e:
            with self.lock:
                self.errors += 1
            say(f"request failed: {e}")
            return None
        e2e = time.perf_counter() - t0
        details = usage.get("prompt_tokens_details") or {}
        with self.lock:
            self.rows.append(
                {
                    "ttft": ttft if ttft is not None else e2e, "e2e": e2e, "served_by": served,
                    "prompt": usage.get("prompt_tokens", 0),
                    "cached": details.get("cached_tokens", 0),
                    "completion": usage.get("completion_tokens", 0),
                }
            )  # fmt: skip
        return "".join(parts)


def engine_counters(c: LocalCluster, names: list[str]) -> tuple[int, int]:
    """(prefix_cache_queries, prefix_cache_hits) summed over the engines, each as
    its own node reports it."""
    q = h = 0
    for n in names:
        me = c.member(n, n) or {}
        entry = me.get("models", {}).get(MODEL, {})
        q += int(entry.get("prefix_queries", 0))
        h += int(entry.get("prefix_hits", 0))
    return q, h


def gossip_bytes(c: LocalCluster, names: list[str]) -> float:
    """Gossip bytes sent so far by all the daemons (their own counters)."""
    total = 0.0
    for n in names:
        text = httpx.get(c.url(n, "/metrics"), timeout=10).text
        total += gossip_counters(text).get("bytes_out", 0.0)
    return total


def idle_bytes(c: LocalCluster, names: list[str], seconds: float) -> float:
    """Gossip bytes per node per second over `seconds` of no requests."""
    b0, t0 = gossip_bytes(c, names), time.monotonic()
    time.sleep(seconds)
    return (gossip_bytes(c, names) - b0) / (time.monotonic() - t0) / len(names)


def run_policy(router: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    names = [f"n{i}" for i in range(args.nodes)]
    with LocalCluster(tmp / router) as c:
        extra = ["--router", router]
        c.start(names[0], models=[spec(args.size, args.kv_mib)], extra=extra)
        for n in names[1:]:
            c.start(n, models=[spec(args.size, args.kv_mib)], join=[names[0]], extra=extra)

        def ready() -> bool:
            return all(
                sum(
                    m["models"].get(MODEL, {}).get("state") == "ready" for m in c.view(n)["members"]
                )
                == len(names)
                for n in names
            )

        c.wait_for(ready, 180, "every engine ready")
        time.sleep(3.0)
        idle_empty = idle_bytes(c, names, args.idle)  # loaded engines, empty summaries
        agents = Agents([f"http://{c.http(n)}" for n in names], args.seed, (0.2, 0.5))
        agents.run(args.agents, args.warmup)  # fills the system prompt in the caches
        agents.rows.clear()
        time.sleep(0.5)
        q0, h0 = engine_counters(c, names)
        b0 = gossip_bytes(c, names)
        wall = agents.run(args.agents, args.seconds)
        b1 = gossip_bytes(c, names)
        time.sleep(0.6)  # the counters are gossiped once per interval
        q1, h1 = engine_counters(c, names)
        time.sleep(6.0)  # the engines' tokens/s (a 5 s window) settle at 0
        idle_full = idle_bytes(c, names, args.idle)  # the same, summaries full
    rows = agents.rows
    ttft = sorted(r["ttft"] for r in rows)
    served: dict[str, int] = {}
    for r in rows:
        served[r["served_by"]] = served.get(r["served_by"], 0) + 1
    prompt = sum(r["prompt"] for r in rows)
    return {
        "router": router, "nodes": args.nodes, "agents": args.agents, "requests": len(rows),
        "errors": agents.errors,
        "ttft_mean_s": round(statistics.fmean(ttft), 4) if ttft else None,
        "ttft_p99_s": round(ttft[int(0.99 * (len(ttft) - 1))], 4) if ttft else None,
        "e2e_mean_s": round(statistics.fmean(r["e2e"] for r in rows), 4) if rows else None,
        "throughput_tok_s": round(sum(r["completion"] for r in rows) / wall, 1),
        "requests_per_s": round(len(rows) / wall, 2),
        "hit_rate_usage": round(sum(r["cached"] for r in rows) / prompt, 4) if prompt else None,
        "hit_rate_engines": round((h1 - h0) / (q1 - q0), 4) if q1 > q0 else None,
        "prompt_tokens_mean": round(prompt / len(rows)) if rows else None,
        "gossip_busy_bytes_per_node_s": round((b1 - b0) / wall / len(names)),
        "gossip_idle_bytes_per_node_s": round(idle_full, 1),
        "gossip_idle_before_bytes_per_node_s": round(idle_empty, 1),
        "served_by": dict(sorted(served.items())),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--size", default="small", choices=["tiny", "small"])
    ap.add_argument("--kv-mib", type=int, default=64, help="KV pool per engine, MiB")
    ap.add_argument("--agents", type=int, default=4, help="concurrent agent loops")
    ap.add_argument("--seconds", type=float, default=60.0, help="measured seconds per policy")
    ap.add_argument("--warmup", type=float, default=8.0, help="unmeasured seconds first")
    ap.add_argument("--idle", type=float, default=10.0, help="idle seconds measured after")
    ap.add_argument("--routers", default="rumor,p2c,round_robin")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    # A SIGTERM (e.g. from `timeout`) unwinds the `with LocalCluster`, which
    # stops the daemons and their engines instead of orphaning them.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = []
    with tempfile.TemporaryDirectory(prefix="rumor-prefix-") as tmp:
        for router in args.routers.split(","):
            say(f"{router}: {args.nodes} daemons, {args.agents} agents, {args.seconds:g} s")
            results.append(run_policy(router, args, Path(tmp)))
            say(json.dumps(results[-1]))
    if args.json:
        print(json.dumps({"results": results}))
        return 0
    print("| router | requests | TTFT mean / p99 s | e2e s | tok/s | hit rate (usage / engines) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['router']} | {r['requests']} | {r['ttft_mean_s']} / {r['ttft_p99_s']} "
            f"| {r['e2e_mean_s']} | {r['throughput_tok_s']} "
            f"| {r['hit_rate_usage']} / {r['hit_rate_engines']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
