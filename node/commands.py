"""`rumor node`, `rumor up`, `rumor status`, `rumor infer`: the operator's commands."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from inference.errors import ConfigError


def add_node_parsers(sub: Any) -> None:
    node = sub.add_parser(
        "node",
        help="run a rumor daemon on this host",
        description="Run a rumor daemon: gossip, inference, routing and the KServe v2 API. "
        "Settings come from --config (TOML), then flags, then RUMOR_* environment variables. "
        "On start it prints one JSON line with the bound addresses.",
    )
    node.add_argument("--name", help="node name, unique in the cluster (required)")
    node.add_argument(
        "--gossip",
        metavar="HOST:PORT",
        help="gossip UDP+TCP address (default 127.0.0.1:0; port 0 picks a free port)",
    )
    node.add_argument("--http", metavar="HOST:PORT", help="HTTP address (default 127.0.0.1:0)")
    node.add_argument(
        "--join",
        metavar="HOST:PORT",
        action="append",
        default=[],
        help="a seed's gossip address (repeatable)",
    )
    node.add_argument(
        "--model",
        metavar="SPEC",
        action="append",
        default=[],
        help="a model to load, NAME=SOURCE[,key=value...], e.g. mlp=builtin:mlp (repeatable)",
    )
    node.add_argument("--config", metavar="FILE", help="TOML config ([node] table, [[model]])")
    node.add_argument("--data-dir", metavar="DIR", help="persist the generation counter here")
    node.add_argument("--keyring", metavar="FILE", help="gossip keyring (JSON, AES-GCM keys)")
    node.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow unencrypted gossip on a non-loopback address",
    )
    node.add_argument("--admin-token-file", metavar="FILE", help="bearer token for admin calls")
    node.add_argument("--interval", type=float, help="gossip interval, s (default 0.2)")
    node.add_argument("--fanout", type=int, help="gossip fanout (default 3)")
    node.add_argument("--drain-timeout", type=float, help="shutdown drain, s (default 10)")
    node.add_argument(
        "--router",
        choices=[
            "rumor",
            "rumor_prefix",
            "cache_aware",
            "p2c",
            "least_loaded",
            "random",
            "round_robin",
        ],  # node.config.ROUTERS (not imported: it would load trio before --help)
        help="routing policy (default rumor: rumor_prefix for LLMs; the others are "
        "baselines for comparisons)",
    )
    node.add_argument("--http-keep-alive", type=float, help="idle HTTP keep-alive, s (default 75)")
    node.add_argument(
        "--http-body-timeout", type=float, help="request body deadline, s (default 10)"
    )
    node.add_argument("--http-max-connections", type=int, help="HTTP connection cap (default 1024)")
    node.add_argument(
        "--gossip-opt",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="a gossip protocol setting, e.g. probe_timeout=0.5 (repeatable; any "
        "gossip.config.GossipConfig field; also a [gossip] TOML table or RUMOR_GOSSIP_KEY)",
    )
    node.add_argument("--log-json", action="store_true", default=None, help="JSON logs")
    node.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="info (default) logs membership changes; debug adds every record update",
    )
    node.set_defaults(func=cmd_node)

    up = sub.add_parser("up", help="start a local cluster of real daemons on loopback")
    up.add_argument("--nodes", type=int, default=3, help="number of daemons (default 3)")
    up.add_argument(
        "--models",
        default="mlp=builtin:mlp,transformer=builtin:transformer",
        help="built-in models spread over the nodes (comma-separated NAME=SOURCE)",
    )
    up.add_argument(
        "--engine",
        metavar="NAME=KIND+http://HOST:PORT[,k=v...]",
        action="append",
        default=[],
        help="an engine you already run (vllm+http://, sglang+http://, openai+http://), "
        "fronted by a daemon of its own (repeatable; docs/ENGINES.md)",
    )
    up.set_defaults(func=cmd_up)

    status = sub.add_parser("status", help="the cluster as one node sees it")
    status.add_argument("--http", required=True, metavar="HOST:PORT")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    infer = sub.add_parser("infer", help="send one inference request")
    infer.add_argument("--http", required=True, metavar="HOST:PORT")
    infer.add_argument("model")
    infer.add_argument("--data", help="JSON list of values (default: zeros of the model's shape)")
    infer.set_defaults(func=cmd_infer)

    events = sub.add_parser("events", help="print the node's event stream (like Serf's handlers)")
    events.add_argument("--http", required=True, metavar="HOST:PORT")
    events.add_argument("--count", type=int, help="stop after this many events")
    events.set_defaults(func=cmd_events)

    tags = sub.add_parser("tags", help="set this node's user tags (gossiped in its record)")
    tags.add_argument("--http", required=True, metavar="HOST:PORT")
    tags.add_argument("--token", help="admin bearer token (default: $RUMOR_ADMIN_TOKEN)")
    tags.add_argument("action", choices=["set"])
    tags.add_argument("pairs", nargs="+", metavar="KEY=VALUE")
    tags.set_defaults(func=cmd_tags)


def cmd_node(args: argparse.Namespace) -> int:
    import trio

    from .api.app import serve_http
    from .config import load_node_config
    from .daemon import Daemon, print_bound

    flags = {
        "name": args.name,
        "gossip": args.gossip,
        "http": args.http,
        "join": args.join,
        "models": args.model,
        "data_dir": args.data_dir,
        "keyring": args.keyring,
        "insecure": args.insecure,
        "admin_token_file": args.admin_token_file,
        "interval": args.interval,
        "fanout": args.fanout,
        "drain_timeout": args.drain_timeout,
        "log_json": args.log_json,
        "log_level": args.log_level,
        "router": args.router,
        "http_keep_alive": args.http_keep_alive,
        "http_body_timeout": args.http_body_timeout,
        "http_max_connections": args.http_max_connections,
        "gossip_opts": args.gossip_opt,
    }
    try:
        config = load_node_config(args.config, flags)
    except ConfigError as e:
        print(f"rumor node: error: {e}", file=sys.stderr)
        return 2
    import logging

    from .logs import setup_logging

    setup_logging(config.log_json, getattr(logging, config.log_level.upper()))
    daemon = Daemon(config)

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                bound = await nursery.start(daemon.run, serve_http)
                print_bound(bound)
                async for _ in signals:
                    await daemon.shutdown()
                    nursery.cancel_scope.cancel()
                    break

    from gossip.errors import LocalProtocolError

    try:
        trio.run(main)
    except BaseException as e:
        leaves = _leaves(e)
        if all(isinstance(x, KeyboardInterrupt) for x in leaves) and daemon.stopped.is_set():
            return 0  # a second signal during a graceful shutdown that already finished
        for x in leaves:
            if isinstance(x, LocalProtocolError | ValueError | OSError):
                print(f"rumor node: error: {x}", file=sys.stderr)
                return 2 if not isinstance(x, OSError) else 1
        raise
    return 0


def _leaves(e: BaseException) -> list[BaseException]:
    if isinstance(e, BaseExceptionGroup):
        out: list[BaseException] = []
        for sub in e.exceptions:
            out += _leaves(sub)
        return out
    return [e]


def spawn_node(
    name: str,
    join: list[str],
    models: list[str],
    extra: list[str] | None = None,
    timeout: float = 60.0,
) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """Start `rumor node` as a process (its own session); returns it and its
    bound addresses. NodeStartError if it does not bind within `timeout` s."""
    from .localcluster import spawn

    args = [a for j in join for a in ("--join", j)]
    args += [a for m in models for a in ("--model", m)]
    return spawn(name, [*args, *(extra or [])], None, timeout=timeout)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_up(args: argparse.Namespace) -> int:
    # Set explicitly: a shell starting us in the background leaves SIGINT
    # ignored, and Ctrl-C (or SIGTERM) must still stop the whole cluster.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    models = [m for m in args.models.split(",") if m] if not args.engine else []
    nodes = max(args.nodes, len(args.engine))
    procs = []
    try:
        first = None
        for i in range(nodes):
            mine = [models[j] for j in range(len(models)) if j % nodes == i]
            if i < len(args.engine):  # one daemon beside each engine
                mine.append(args.engine[i])
            proc, bound = spawn_node(f"node{i}", [first] if first else [], mine)
            first = first or bound["gossip"]
            procs.append(proc)
            print(json.dumps(bound), flush=True)
        print("cluster up; Ctrl-C stops it", file=sys.stderr, flush=True)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stop_all(procs)
    return 0


def stop_all(procs: list[subprocess.Popen[str]], grace: float = 15.0) -> None:
    """SIGTERM every daemon, give them `grace` seconds together, then SIGKILL."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)


def cmd_status(args: argparse.Namespace) -> int:
    import httpx
    from rich.console import Console
    from rich.table import Table

    try:
        view = httpx.get(f"http://{args.http}/v1/cluster", timeout=5).json()
    except httpx.HTTPError as e:
        print(f"rumor status: error: cannot reach {args.http}: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(view))
        return 0
    table = Table(title=f"cluster as seen from {view['self']}")
    for col in ("member", "status", "generation", "http", "models", "queue", "in flight", "age"):
        table.add_column(col)
    for m in view["members"]:
        models = ", ".join(f"{k}:{v.get('state')}" for k, v in sorted(m["models"].items()))
        load = m.get("load") or {}
        table.add_row(
            m["name"],
            m["status"],
            str(m["generation"]),
            m["http"],
            models,
            str(load.get("queue", "")),
            str(load.get("in_flight", "")),
            f"{m['age_s']}s" if m["age_s"] is not None else "",
        )
    # Piped output is not wrapped to 80 columns: whole names stay greppable.
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(table)
    placement = view.get("placement") or {}
    if placement:
        ptable = Table(title="catalog models: target against actual replicas")
        for col in ("model", "target", "ready", "assigned to", "ready on"):
            ptable.add_column(col)
        for model, p in placement.items():
            ready = p.get("ready", [])
            mark = "" if len(ready) >= p.get("target", 0) else " (converging)"
            ptable.add_row(
                model,
                str(p.get("target")),
                f"{len(ready)}{mark}",
                ", ".join(p.get("assigned", [])),
                ", ".join(ready),
            )
        console.print(ptable)
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    import httpx

    base = f"http://{args.http}"
    try:
        meta = httpx.get(f"{base}/v2/models/{args.model}", timeout=10)
        if meta.status_code != 200:
            print(f"rumor infer: {meta.status_code}: {meta.text}", file=sys.stderr)
            return 1
        info = meta.json()
        spec = (info.get("inputs") or [{"name": "input", "datatype": "FP32", "shape": [-1, 1]}])[0]
        shape = [1, *spec["shape"][1:]]
        n = 1
        for d in shape:
            n *= d
        data = json.loads(args.data) if args.data else [0] * n
        body = {
            "inputs": [
                {"name": spec["name"], "shape": shape, "datatype": spec["datatype"], "data": data}
            ]
        }
        r = httpx.post(f"{base}/v2/models/{args.model}/infer", json=body, timeout=30)
    except (httpx.HTTPError, ValueError) as e:
        print(f"rumor infer: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(r.json()))
    return 0 if r.status_code == 200 else 1


def cmd_events(args: argparse.Namespace) -> int:
    import httpx

    seen = 0
    try:
        with httpx.stream("GET", f"http://{args.http}/v1/events", timeout=None) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    print(line[6:], flush=True)
                    seen += 1
                    if args.count is not None and seen >= args.count:
                        return 0
    except httpx.HTTPError as e:
        print(f"rumor events: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


def cmd_tags(args: argparse.Namespace) -> int:
    import httpx

    tags = {}
    for pair in args.pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            print(f"rumor tags: error: {pair!r} is not KEY=VALUE", file=sys.stderr)
            return 2
        tags[key] = value
    token = args.token or os.environ.get("RUMOR_ADMIN_TOKEN")
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.put(f"http://{args.http}/v1/node/tags", json=tags, headers=headers, timeout=10)
    except httpx.HTTPError as e:
        print(f"rumor tags: error: {e}", file=sys.stderr)
        return 1
    print(r.text)
    return 0 if r.status_code == 200 else 1
