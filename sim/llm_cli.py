"""`rumor sim llm`: the grid of policies x workloads x loads x staleness, as a
table, JSON (`{"results": [...]}`, fields fixed by `LLMResult.to_json`) and a
plot of hit rate and TTFT against staleness."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_llm_parser(rest: Any) -> None:
    from .llm import POLICIES

    p = rest.add_parser(
        "llm",
        help="prefix-cache-aware LLM routing: every node a router, on gossiped state",
        description="Serve an agent or chat workload on simulated LLM nodes, each node a "
        "router running node.cluster's policies on stale gossiped load and prefix summaries, "
        "against one central router that knows every cache and queue.",
    )
    p.add_argument("--policies", default=",".join(POLICIES), help="comma-separated (default: all)")
    p.add_argument("--workload", default="agent,chat", help="agent, chat or both (default)")
    p.add_argument("--nodes", type=int, default=16, dest="l_nodes", help="serving nodes (16)")
    p.add_argument("--load", default="0.8", help="comma-separated loads (default 0.8)")
    p.add_argument(
        "--staleness",
        default="0,0.2,0.5,1,2,5",
        help="seconds a router's view lags each publication (comma-separated; 'gossip' draws "
        "the delay from the real gossip core's measured dissemination)",
    )
    p.add_argument("--sessions", type=int, default=400, help="agent sessions per cell (400)")
    p.add_argument("--requests", type=int, default=6_000, help="chat requests per cell (6000)")
    p.add_argument("--seed", type=int, default=1, dest="l_seed")
    p.add_argument("--json", action="store_true", dest="l_json")
    p.add_argument("--plot", metavar="OUT.png", dest="l_plot")
    p.set_defaults(func=run_llm_command)


def _fail(message: str) -> int:
    print(f"rumor sim llm: error: {message}", file=sys.stderr)
    return 2


def run_llm_command(args: argparse.Namespace) -> int:
    from .llm import PLAN, POLICIES, simulate_llm

    try:
        policies = [p for p in args.policies.split(",") if p]
        for p in policies:
            if p not in PLAN:
                raise ValueError(f"--policies: unknown policy {p!r} (have {', '.join(POLICIES)})")
        workloads = [w for w in args.workload.split(",") if w]
        if not workloads or any(w not in ("agent", "chat") for w in workloads):
            raise ValueError("--workload: agent, chat or agent,chat")
        loads = [float(x) for x in args.load.split(",")]
        stale: list[float | str] = [
            x if x == "gossip" else float(x) for x in args.staleness.split(",") if x
        ]
        if not all(0 < x < 2 for x in loads):
            raise ValueError("--load: each value must be within (0, 2)")
        if any(isinstance(x, float) and x < 0 for x in stale) or not stale:
            raise ValueError("--staleness: seconds >= 0, or 'gossip'")
        if args.l_nodes < 2 or args.sessions < 10 or args.requests < 100:
            raise ValueError("--nodes >= 2, --sessions >= 10, --requests >= 100")
    except ValueError as e:
        return _fail(str(e))
    delays = None
    if "gossip" in stale:
        from .prefix_gossip import gossip_delays

        delays = gossip_delays(nodes=args.l_nodes, seed=args.l_seed)
    results = []
    for w in workloads:
        for ld in loads:
            for p in policies:
                # The central router's view is fresh: one cell, whatever the staleness.
                cells = [stale[0]] if PLAN[p][1] else stale
                for st in cells:
                    r = simulate_llm(
                        p, w, nodes=args.l_nodes, load=ld, staleness_s=st,
                        sessions=args.sessions, requests=args.requests, seed=args.l_seed,
                        gossip_delays=delays,
                    )  # fmt: skip
                    results.append(r.to_json())
    if args.l_plot:
        plot_llm(results, args.l_plot)
    if args.l_json:
        print(json.dumps({"results": results}))
        return 0
    print("| workload | load | policy | staleness s | TTFT mean / p99 s | e2e s | hit rate |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for x in results:
        print(
            f"| {x['workload']} | {x['load']} | {x['policy']} | {x['staleness_s']} "
            f"| {x['ttft_mean_s']:.3f} / {x['ttft_p99_s']:.3f} | {x['e2e_mean_s']:.3f} "
            f"| {x['hit_rate']:.3f} |"
        )
    return 0


def plot_llm(results: list[dict[str, Any]], out: str) -> None:
    """Per workload and load: hit rate and mean TTFT against staleness, per
    policy; the central router (fresh by definition) as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(x["workload"], x["load"]) for x in results})
    fig, axes = plt.subplots(2, len(groups), figsize=(5.5 * len(groups), 7.5), squeeze=False)
    for col, (w, ld) in enumerate(groups):
        hit_ax, ttft_ax = axes[0][col], axes[1][col]
        rows = [x for x in results if x["workload"] == w and x["load"] == ld]
        for policy in dict.fromkeys(x["policy"] for x in rows):
            pts = sorted((x["staleness_s"], x) for x in rows if x["policy"] == policy)
            xs = [s for s, _ in pts]
            if policy == "central_cache_aware":
                for ax, key in ((hit_ax, "hit_rate"), (ttft_ax, "ttft_mean_s")):
                    ax.axhline(pts[0][1][key], linestyle="--", color="black", label=policy)
                continue
            hit_ax.plot(xs, [x["hit_rate"] for _, x in pts], marker="o", label=policy)
            ttft_ax.plot(xs, [x["ttft_mean_s"] for _, x in pts], marker="o", label=policy)
        hit_ax.set_title(f"{w}, load {ld}, {rows[0]['nodes']} nodes")
        hit_ax.set_ylabel("prefix-cache hit rate")
        hit_ax.set_ylim(0, 1.02)
        ttft_ax.set_ylabel("mean TTFT (s)")
        ttft_ax.set_yscale("log")
        ttft_ax.set_xlabel("routing state staleness (s)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize="small")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(out, dpi=100)
    plt.close(fig)
