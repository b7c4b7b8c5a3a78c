"""`rumor sim`: plan a cluster by simulating the real protocol code."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from .scenario import Scenario, ScenarioError, load_scenario


def add_sim_parser(sub: Any) -> None:
    sim = sub.add_parser(
        "sim",
        help="simulate a cluster running the real gossip code, with faults",
        description="Run N real gossip cores on a virtual clock and a simulated network. "
        "Flags override the scenario file.",
    )
    sim.add_argument("--nodes", type=int, help="cluster size (default 10)")
    sim.add_argument("--seed", type=int, help="seed for everything (default 1)")
    sim.add_argument("--interval", type=float, help="gossip interval, s (default 0.2)")
    sim.add_argument("--fanout", type=int, help="gossip fanout (default 3)")
    sim.add_argument(
        "--gossip-opt",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="a gossip protocol setting, e.g. suspicion_max=4 (repeatable; any "
        "gossip.config.GossipConfig field; also a [gossip] table in the scenario)",
    )
    sim.add_argument("--loss", type=float, help="packet loss, 0..1 (default 0)")
    sim.add_argument("--latency-ms", type=float, help="one-way latency, ms (default 1)")
    sim.add_argument("--jitter-ms", type=float, help="extra uniform delay, ms (default 0.5)")
    sim.add_argument(
        "--cores",
        type=int,
        help="host CPU model: all nodes share this many cores (default 0: off)",
    )
    sim.add_argument(
        "--cpu-us", type=float, help="host CPU model: CPU per delivered message, microseconds"
    )
    sim.add_argument(
        "--send-us", type=float, help="host CPU model: CPU per message sent, microseconds"
    )
    sim.add_argument(
        "--call-us",
        type=float,
        help="host CPU model: CPU a local write costs after its sends, microseconds",
    )
    sim.add_argument(
        "--background",
        type=float,
        help="host CPU model: fraction of a core each node uses besides messages",
    )
    sim.add_argument(
        "--wake-us",
        type=float,
        help="host CPU model: how long an idle core takes to start a job, microseconds",
    )
    sim.add_argument("--duration", type=float, help="simulated seconds (default 60)")
    sim.add_argument("--kill-at", type=float, help="kill a random node at this time, s")
    sim.add_argument("--scenario", metavar="FILE.toml", help="a scenario: settings and events")
    sim.add_argument("--json", action="store_true", help="print exactly one JSON object")
    sim.add_argument("--plot", metavar="OUT.png", help="write a PNG: informed fraction, bytes")
    sim.set_defaults(func=run_sim_command)
    rest = sim.add_subparsers(dest="sim_command", metavar="{theory,routing,placement,llm}")
    theory = rest.add_parser("theory", help="measured rounds against the epidemic bounds")
    theory.add_argument("--sizes", default="100,1000", help="cluster sizes (default 100,1000)")
    theory.add_argument("--seeds", type=int, default=3, help="runs per size (default 3)")
    theory.add_argument("--json", action="store_true", dest="theory_json")
    theory.set_defaults(func=run_theory_command)
    routing = rest.add_parser("routing", help="router policies under stale load information")
    routing.add_argument(
        "--policies", default=",".join(_policies()), help="comma-separated (default: all)"
    )
    routing.add_argument("--nodes", type=int, default=100, dest="r_nodes")
    routing.add_argument("--routers", default="10,100", help="entry routers (default 10,100)")
    routing.add_argument(
        "--load", default="0.5,0.9,0.99", help="utilisation (default 0.5,0.9,0.99)"
    )
    routing.add_argument("--interval", default="0.2,1,2", help="gossip interval, s")
    routing.add_argument("--service-ms", type=float, default=100.0, help="mean service time")
    routing.add_argument("--requests", type=int, default=20_000, help="requests per cell")
    routing.add_argument(
        "--batch-max", type=int, default=1, help="requests a node serves at once (default 1)"
    )
    routing.add_argument(
        "--busy-queue",
        type=int,
        default=3,
        help="rumor's admission control: a node this deep answers busy (default 3)",
    )
    routing.add_argument("--retries", type=int, default=3, help="rumor's busy retries (default 3)")
    routing.add_argument("--seed", type=int, default=1, dest="r_seed")
    routing.add_argument("--json", action="store_true", dest="r_json")
    routing.add_argument("--plot", metavar="OUT.png", dest="r_plot")
    routing.set_defaults(func=run_routing_command)
    place = rest.add_parser("placement", help="how fast decentralized placement converges")
    place.add_argument("--nodes", type=int, default=20, dest="p_nodes")
    place.add_argument("--models", type=int, default=5)
    place.add_argument("--replicas", type=int, default=2)
    place.add_argument("--hold", type=float, default=2.0, help="placement hold before loading, s")
    place.add_argument("--seed", type=int, default=1, dest="p_seed")
    place.add_argument("--json", action="store_true", dest="p_json")
    place.set_defaults(func=run_placement_command)
    from .llm_cli import add_llm_parser

    add_llm_parser(rest)


def _fail(message: str) -> int:
    print(f"rumor sim: error: {message}", file=sys.stderr)
    return 2


def run_sim_command(args: argparse.Namespace) -> int:
    from .runner import Timeline, run_scenario

    try:
        scn = load_scenario(args.scenario) if args.scenario else Scenario()
        scn = scn.with_overrides(
            nodes=args.nodes,
            seed=args.seed,
            interval=args.interval,
            fanout=args.fanout,
            loss=args.loss,
            latency_ms=args.latency_ms,
            jitter_ms=args.jitter_ms,
            cores=args.cores,
            cpu_us=args.cpu_us,
            send_us=args.send_us,
            call_us=args.call_us,
            background=args.background,
            wake_us=args.wake_us,
            duration=args.duration,
        )
        if args.gossip_opt:
            from node.config import parse_pairs

            scn = scn.with_overrides(
                gossip={**scn.gossip, **parse_pairs(args.gossip_opt, "gossip_opt")}
            )
        if args.kill_at is not None:
            from .scenario import Event

            scn = scn.with_overrides(
                events=tuple(
                    sorted((*scn.events, Event(args.kill_at, "kill", {})), key=lambda e: e.at)
                )
            )
    except ScenarioError as e:
        return _fail(str(e))
    except TypeError as e:  # a wrongly typed override
        return _fail(str(e))

    timeline = Timeline() if args.plot else None
    progress, stop = _progress(scn)
    try:
        result = run_scenario(scn, progress=progress, timeline=timeline)
    finally:
        stop()
    if args.plot and timeline is not None:
        from .plot import plot_run

        plot_run(
            timeline,
            scn.nodes,
            args.plot,
            f"rumor sim: {scn.nodes} nodes, loss {scn.loss:g}, seed {scn.seed}",
        )
        result["plot"] = args.plot
    if args.json:
        print(json.dumps(result))
    else:
        _summary(result, scn)
    return 0


def _progress(scn: Scenario) -> tuple[Any, Any]:
    """A rich progress bar on stderr, shown only once a run has taken 2 s."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    state: dict[str, Any] = {"bar": None, "t0": time.perf_counter()}

    def update(fraction: float) -> None:
        if state["bar"] is None:
            if time.perf_counter() - state["t0"] < 2.0:
                return
            bar = Progress(
                TextColumn(f"simulating {scn.nodes} nodes"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            bar.start()
            state["bar"], state["task"] = bar, bar.add_task("sim", total=1.0)
        state["bar"].update(state["task"], completed=fraction)

    def stop() -> None:
        if state["bar"] is not None:
            state["bar"].stop()

    return update, stop


def _summary(r: dict[str, Any], scn: Scenario) -> None:
    from rich.console import Console
    from rich.table import Table

    d = r["dissemination"]
    t = Table(title=f"rumor sim: {r['nodes']} nodes, seed {r['seed']}", show_header=False)
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row(
        "simulated / wall",
        f"{r['sim_seconds']:g} s / {r['wall_seconds']:g} s ({r['sim_per_wall']}x)",
    )
    if d["updates"]:
        t.add_row("updates disseminated", f"{d['updates']} ({d['undelivered']} deliveries missing)")
        t.add_row(
            "dissemination p50 / p99 / max",
            f"{d['p50_s']} / {d['p99_s']} / {d['max_s']} s (max {d['rounds_max']} rounds)",
        )
    if "failure_detection" in r:
        fd = r["failure_detection"]
        t.add_row(
            "failure detection p50 / max",
            f"{fd['p50_s']} / {fd['max_s']} s ({fd['observers']} observers)",
        )
    t.add_row("false suspicions / deaths", f"{r['false_suspicions']} / {r['false_deaths']}")
    if r["convergence_after_heal_s"]:
        t.add_row(
            "convergence after heal",
            ", ".join("never" if x is None else f"{x} s" for x in r["convergence_after_heal_s"]),
        )
    t.add_row(
        "traffic",
        f"{r['bytes_per_node_per_s']:,} B/node/s, {r['messages_per_node_per_s']} msgs/node/s",
    )
    t.add_row("converged", "yes" if r["converged"] else "NO")
    t.add_row("trace hash", r["trace_hash"])
    Console().print(t)


def run_theory_command(args: argparse.Namespace) -> int:
    from .theory import theory_table

    try:
        sizes = [int(x) for x in args.sizes.split(",")]
    except ValueError:
        return _fail(f"--sizes: {args.sizes!r} is not a comma-separated list of integers")
    if any(n < 2 for n in sizes) or args.seeds < 1:
        return _fail("--sizes must be >= 2 and --seeds >= 1")
    rows = theory_table(sizes, args.seeds)
    if args.theory_json:
        print(json.dumps({"results": rows}))
        return 0
    print(
        "| N | push rounds (mean / max) | log2 N + ln N | push-pull rounds (mean / max) "
        "| log3 N | log3 N + ln ln N |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['nodes']:,} | {r['push_rounds_mean']} / {r['push_rounds_max']} "
            f"| {r['push_bound']} | {r['push_pull_rounds_mean']} / {r['push_pull_rounds_max']} "
            f"| {r['push_pull_bound_log3']} | {r['push_pull_bound_log3_plus_lnln']} |"
        )
    return 0


def run_placement_command(args: argparse.Namespace) -> int:
    from .placement import run_placement

    if args.p_nodes < 2 or args.models < 1 or not 1 <= args.replicas <= args.p_nodes:
        return _fail("--nodes >= 2, --models >= 1, 1 <= --replicas <= --nodes")
    if args.hold < 0:
        return _fail("--hold must be >= 0")
    r = run_placement(args.p_nodes, args.models, args.replicas, args.p_seed, hold_load=args.hold)
    if args.p_json:
        print(json.dumps(r))
        return 0
    a, c = r["after_change"], r["after_crash"]
    print(
        f"{r['nodes']} nodes, {r['models']} models x {r['replicas']} replicas, hold {args.hold} s\n"
        f"  after the change: views agree in {a['views_agree_s']} s, placed in {a['placed_s']} s\n"
        f"  after {c['crashed']} crashed: {c['replicas_moved']} replicas moved; views agree "
        f"in {c['views_agree_s']} s, placed in {c['placed_s']} s"
    )
    return 0


def _policies() -> tuple[str, ...]:
    from .routing import POLICIES

    return POLICIES


def run_routing_command(args: argparse.Namespace) -> int:
    from .routing import POLICIES, simulate

    try:
        policies = [p for p in args.policies.split(",") if p]
        for p in policies:
            if p not in POLICIES:
                raise ValueError(f"--policies: unknown policy {p!r} (have {', '.join(POLICIES)})")
        routers = [int(x) for x in args.routers.split(",")]
        loads = [float(x) for x in args.load.split(",")]
        intervals = [float(x) for x in args.interval.split(",")]
        if not all(0 < x < 1 for x in loads):
            raise ValueError("--load: each value must be within (0, 1)")
        if args.r_nodes < 2 or min(routers) < 1 or min(intervals) <= 0 or args.service_ms <= 0:
            raise ValueError("--nodes >= 2, --routers >= 1, --interval > 0, --service-ms > 0")
        if args.batch_max < 1 or args.busy_queue < 1 or args.retries < 0:
            raise ValueError("--batch-max >= 1, --busy-queue >= 1, --retries >= 0")
    except ValueError as e:
        return _fail(str(e))
    cells = [(p, r, ld, iv) for r in routers for ld in loads for iv in intervals for p in policies]
    progress, stop = _progress(Scenario(nodes=args.r_nodes))
    results = []
    try:
        for i, (p, r, ld, iv) in enumerate(cells):
            results.append(
                simulate(
                    p,
                    nodes=args.r_nodes,
                    routers=r,
                    load=ld,
                    interval_s=iv,
                    service_s=args.service_ms / 1000,
                    requests=args.requests,
                    batch_max=args.batch_max,
                    busy_queue=args.busy_queue,
                    retries=args.retries,
                    seed=args.r_seed,
                ).to_json()
            )
            progress((i + 1) / len(cells))
    finally:
        stop()
    if args.r_plot:
        _plot_routing(results, args.r_plot)
    if args.r_json:
        print(
            json.dumps(
                {
                    "service_s": args.service_ms / 1000,
                    "nodes": args.r_nodes,
                    "batch_max": args.batch_max,
                    "busy_queue": args.busy_queue,
                    "retries": args.retries,
                    "results": results,
                }
            )
        )
        return 0
    print("| routers | load | interval s | " + " | ".join(policies) + " |")
    print("|---:|---:|---:|" + "---:|" * len(policies))
    for r in routers:
        for ld in loads:
            for iv in intervals:
                row = [
                    x
                    for x in results
                    if x["routers"] == r and x["load"] == ld and x["interval_s"] == iv
                ]
                cells_txt = " | ".join(f"{x['mean_s'] * 1000:.0f} ms" for x in row)
                print(f"| {r} | {ld} | {iv} | {cells_txt} |")
    return 0


def _plot_routing(results: list[dict[str, Any]], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(x["routers"], x["load"]) for x in results})
    fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 3.6), squeeze=False)
    for ax, (r, ld) in zip(axes[0], groups, strict=True):
        for policy in sorted({x["policy"] for x in results}):
            pts = sorted(
                (x["interval_s"], x["mean_s"])
                for x in results
                if x["policy"] == policy and x["routers"] == r and x["load"] == ld
            )
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=policy)
        ax.set_title(f"{r} routers, load {ld}")
        ax.set_xlabel("gossip interval (s)")
        ax.set_yscale("log")
    axes[0][0].set_ylabel("mean time in system (s)")
    axes[0][-1].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
