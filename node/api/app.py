"""The Starlette app every node serves, and serving it (node/api/server.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.applications import Starlette

from gossip.transport import parse_hostport

from ..forward import Forwarder
from .admin import Admin
from .kserve import KServe
from .observe import Observe, StateCollector
from .openai import OpenAI
from .proxy import Proxy
from .server import serve_asgi
from .ui import ui_routes

if TYPE_CHECKING:
    from ..daemon import Daemon


def build_app(daemon: Daemon) -> Starlette:
    registry = CollectorRegistry()
    registry.register(StateCollector(daemon))  # type: ignore[arg-type]
    duration = Histogram(
        "rumor_request_duration_seconds",
        "inference request latency",
        ["model", "served"],
        registry=registry,
    )
    routing = Counter(
        "rumor_routing_total",
        "router outcomes: busy answers given, busy answers met, forward retries",
        ["outcome"],
        registry=registry,
    )
    forwarder = Forwarder(daemon.config.request_timeout)
    proxy = Proxy(daemon, forwarder, routing)
    routes = [
        *KServe(daemon, proxy, duration).routes(),
        *OpenAI(daemon, proxy, registry).routes(),
        *Admin(daemon).routes(),
        *Observe(daemon, registry).routes(),
        *ui_routes(),  # GET /ui: the live cluster page (node/ui/)
    ]
    return Starlette(routes=routes)


async def serve_http(
    daemon: Daemon, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
) -> None:
    host, port = parse_hostport(daemon.config.http)
    await serve_asgi(
        build_app(daemon), host, port, daemon.config.http_limits(), task_status=task_status
    )
