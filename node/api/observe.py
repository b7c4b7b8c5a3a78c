"""Looking at a node: the cluster view (`/v1/cluster`), the prefix summaries
its routers read (`/v1/cluster/prefix/{model}`), the event stream
(`/v1/events`) and Prometheus metrics (`/metrics`)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import TooManySubscribers
from .common import error, new_trace

if TYPE_CHECKING:
    from ..daemon import Daemon
    from ..events import Subscription


class StateCollector:
    """Reads gossip and inference state at scrape time (non-intrusive)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def collect(self) -> Any:
        d = self.daemon
        waiting = GaugeMetricFamily("rumor_requests_waiting", "requests queued", labels=["model"])
        running = GaugeMetricFamily(
            "rumor_requests_running", "requests in a running batch", labels=["model"]
        )
        for name in sorted(d.inference.models()):
            stats = d.inference.stats(name)
            if stats is not None:
                waiting.add_metric([name], stats.queue)
                running.add_metric([name], stats.in_flight)
        yield waiting
        yield running
        # LLM engines, under vLLM's names so existing dashboards fit.
        llm = {
            "rumor:num_requests_running": "requests in the engine's running batch",
            "rumor:num_requests_waiting": "requests waiting for the engine",
            "rumor:kv_cache_usage_perc": "KV-cache blocks in use (0..1)",
        }
        gauges = {k: GaugeMetricFamily(k, doc, labels=["model_name"]) for k, doc in llm.items()}
        queries = CounterMetricFamily(
            "rumor:prefix_cache_queries", "prompt tokens looked up in the prefix cache",
            labels=["model_name"],
        )  # fmt: skip
        hits = CounterMetricFamily(
            "rumor:prefix_cache_hits", "prompt tokens found in the prefix cache",
            labels=["model_name"],
        )  # fmt: skip
        tokens = {
            "rumor:prompt_tokens": ("prompt tokens processed", "prompt_tokens"),
            "rumor:generation_tokens": ("tokens generated", "generation_tokens"),
            "rumor:request_aborts": ("requests ended early (the client left)", "aborted"),
        }
        counters = {
            k: CounterMetricFamily(k, doc, labels=["model_name"]) for k, (doc, _) in tokens.items()
        }
        for name, status in sorted(d.inference.models().items()):
            st = status.llm_stats
            if st is None:
                continue
            gauges["rumor:num_requests_running"].add_metric([name], st.running)
            gauges["rumor:num_requests_waiting"].add_metric([name], st.waiting)
            gauges["rumor:kv_cache_usage_perc"].add_metric([name], st.kv_cache_usage)
            queries.add_metric([name], st.prefix_cache_queries)
            hits.add_metric([name], st.prefix_cache_hits)
            for k, (_, field) in tokens.items():
                counters[k].add_metric([name], getattr(st, field))
        yield from gauges.values()
        yield queries
        yield hits
        yield from counters.values()
        if d.gossip is None or d.gossip.node is None:
            return
        c = d.node.counters
        for metric, key, doc in (
            ("rumor_gossip_bytes_sent_total", "bytes_out", "gossip bytes sent"),
            ("rumor_gossip_bytes_received_total", "bytes_in", "gossip bytes received"),
            ("rumor_gossip_dropped_total", "dropped", "gossip packets dropped"),
        ):
            fam = CounterMetricFamily(metric, doc)
            fam.add_metric([], c.get(key, 0))
            yield fam
        every = CounterMetricFamily(
            "rumor_gossip_counter",
            "every gossip-core counter: datagrams_in, dropped_<reason>, msg_<type>, probes, ...",
            labels=["counter"],
        )
        for key in sorted(c):
            every.add_metric([key], c[key])
        yield every
        clock = d.node.clock_report(trio.current_time())
        offset = GaugeMetricFamily(
            "rumor_clock_offset_seconds",
            "this node's clock minus the median of its peers' (NaN: no samples yet)",
        )
        offset.add_metric([], float("nan") if clock["offset_s"] is None else clock["offset_s"])
        yield offset
        healthy = GaugeMetricFamily(
            "rumor_clock_healthy", "1 if the clock is within max_clock_offset of its peers'"
        )
        healthy.add_metric([], 1.0 if clock["healthy"] else 0.0)
        yield healthy
        members = GaugeMetricFamily("rumor_members", "members by status", labels=["status"])
        counts = {"alive": 0, "suspect": 0, "dead": 0, "left": 0}
        for m in d.node.members.values():
            counts[m.status.name.lower()] += 1
        for state, n in counts.items():
            members.add_metric([state], n)
        yield members


class Observe:
    def __init__(self, daemon: Daemon, registry: CollectorRegistry) -> None:
        self.daemon = daemon
        self.registry = registry

    def routes(self) -> list[Route]:
        return [
            Route("/v1/cluster", self.cluster),
            Route("/v1/cluster/prefix/{model}", self.prefix),
            Route("/v1/events", self.events),
            Route("/metrics", self.metrics),
        ]

    async def cluster(self, request: Request) -> Response:
        return JSONResponse(self.daemon.cluster_view())

    async def prefix(self, request: Request) -> Response:
        return JSONResponse(self.daemon.prefix_view(request.path_params["model"]))

    async def events(self, request: Request) -> Response:
        try:
            sub = self.daemon.subscribe()
        except TooManySubscribers as e:
            return error(503, str(e), new_trace(), {"Retry-After": "5"})
        return StreamingResponse(
            sse_events(sub, self.daemon.name),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache"},
        )

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type="text/plain; version=0.0.4")


async def sse_events(sub: Subscription, node: str) -> AsyncIterator[str]:
    """A subscription as server-sent events. A subscriber that fell too far
    behind was dropped; its stream then ends with an `events-lost` event, so
    the client reconnects and re-reads /v1/cluster rather than miss events."""
    yield ": rumor events\n\n"
    async with sub.receive:
        async for item in sub.receive:
            yield f"data: {json.dumps(item)}\n\n"
    if sub.lost:
        lost = {"type": "events-lost", "member": node, "time": time.time()}
        yield f"event: events-lost\ndata: {json.dumps(lost)}\n\n"
