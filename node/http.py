"""HTTP: the Open Inference Protocol (KServe v2 REST), the cluster view and
metrics, served by hypercorn on trio with a Starlette app.

Client mistakes get a 4xx with a JSON `{"error": ...}` body and affect nothing
else; a model with no ready replica is a 503 with Retry-After.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import math
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx
import trio
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gossip.transport import is_loopback, parse_hostport
from inference.config import ModelConfig
from inference.errors import (
    ConfigError,
    InferenceFailed,
    InvalidInput,
    ModelNotReady,
    Overloaded,
    RequestTimeout,
)

from .errors import ClockUnhealthy, TooManySubscribers
from .forward import Forwarder, ForwardError
from .httpserver import BodyRejected, serve_asgi
from .httpserver import read_body as _read_body
from .ui_routes import ui_routes

if TYPE_CHECKING:
    import torch

    from .daemon import Daemon, Subscription

log = logging.getLogger("rumor.http")

#: KServe v2 datatype -> torch dtype attribute (torch is imported on first use,
#: so that a node without models never loads it).
DTYPES = {
    "FP32": "float32",
    "FP16": "float16",
    "BF16": "bfloat16",
    "FP64": "float64",
    "INT64": "int64",
    "INT32": "int32",
    "INT16": "int16",
    "INT8": "int8",
    "UINT8": "uint8",
    "BOOL": "bool",
}
#: Bounds on client input: a replica target, a tensor dimension, a tensor's elements.
MAX_REPLICAS = 10_000
MAX_DIM = 2**31 - 1
FORWARDED = "x-rumor-forwarded"
TRACE = "x-rumor-trace-id"
SERVED_BY = "x-rumor-served-by"
BUSY = "x-rumor-busy"
FINAL = "x-rumor-final-attempt"
#: A replica's answer headers that a forwarding node passes back to its client.
PASSED_HEADERS = ("content-type", SERVED_BY, TRACE, BUSY, "retry-after")


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def _error(
    status: int, message: str, trace: str, headers: dict[str, str] | None = None
) -> Response:
    return JSONResponse(
        {"error": message}, status_code=status, headers={TRACE: trace, **(headers or {})}
    )


class _Collector:
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
        for status, n in counts.items():
            members.add_metric([status], n)
        yield members


def build_app(daemon: Daemon) -> Starlette:
    cfg = daemon.config
    registry = CollectorRegistry()
    registry.register(_Collector(daemon))  # type: ignore[arg-type]
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
    client = httpx.AsyncClient(timeout=cfg.request_timeout)
    forwarder = Forwarder(cfg.request_timeout)

    async def read_body(request: Request) -> bytes:
        try:
            return await _read_body(request, cfg.max_body_bytes, cfg.http_body_timeout)
        except BodyRejected as e:
            raise HTTPError(e.status, e.message, e.headers) from None

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        ok = not daemon.draining
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def server_meta(request: Request) -> Response:
        return JSONResponse({"name": "rumor", "version": "0.1.0", "extensions": ["rumor-cluster"]})

    async def model_meta(request: Request) -> Response:
        m = request.path_params["model"]
        trace = request.headers.get(TRACE) or _trace()
        status = daemon.inference.status(m)
        if status is not None and status.description is not None:
            body = status.description.to_json()
            body["versions"] = ["1"]
            body["state"] = str(status.state)
            return JSONResponse(body, headers={TRACE: trace})
        if not daemon.known_model(m):
            return _error(404, f"model {m!r} is not known to this cluster", trace)
        replicas = daemon.ready_replicas(m)
        target = daemon.choose(m, {daemon.name})
        http = daemon.http_of(target) if target else None
        if http is not None and request.headers.get(FORWARDED) != "1":
            # The metadata lives with a replica: ask it (one hop).
            try:
                r = await client.get(
                    f"http://{http}/v2/models/{m}", headers={FORWARDED: "1", TRACE: trace}
                )
                body = r.json() if r.status_code == 200 else None
                if isinstance(body, dict):  # a replica's answer is data, not trusted
                    body["ready_replicas"] = replicas
                    return JSONResponse(body, headers={TRACE: trace})
            except (httpx.HTTPError, ValueError):
                pass
        return JSONResponse(
            {"name": m, "versions": ["1"], "platform": "rumor", "ready_replicas": replicas},
            headers={TRACE: trace},
        )

    async def model_ready(request: Request) -> Response:
        m = request.path_params["model"]
        if not daemon.known_model(m) and daemon.inference.status(m) is None:
            return _error(404, f"model {m!r} is not known to this cluster", _trace())
        ok = daemon.local_ready(m) or bool(daemon.ready_replicas(m))
        return JSONResponse({"name": m, "ready": ok}, status_code=200 if ok else 503)

    async def infer(request: Request) -> Response:
        m = request.path_params["model"]
        trace = request.headers.get(TRACE) or _trace()
        forwarded = request.headers.get(FORWARDED) == "1"
        final = request.headers.get(FINAL, "")
        t0 = time.perf_counter()
        if daemon.draining:
            return _error(503, "node is shutting down", trace, {"Retry-After": "1"})
        try:
            # Parsed only where it is served: a forwarding node passes the bytes on.
            body = await read_body(request)
        except HTTPError as e:
            return _error(e.status, e.message, trace, e.headers)
        daemon.in_flight += 1
        scope = trio.CancelScope()
        response: Response | None = None
        daemon.request_scopes.add(scope)
        try:
            with scope:
                response = await _route(m, body, trace, forwarded, t0, final)
            if response is None:
                response = _error(
                    503,
                    "node shut down before the request finished (drain timeout)",
                    trace,
                    {"Retry-After": "1"},
                )
            return response
        finally:
            daemon.request_scopes.discard(scope)
            daemon.in_flight -= 1
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "infer",
                    extra={
                        "model": m,
                        "status": response.status_code if response is not None else 499,
                        "served_by": response.headers.get(SERVED_BY, "") if response else "",
                        "trace_id": trace,
                        "forwarded": forwarded,
                        "ms": round((time.perf_counter() - t0) * 1000, 2),
                    },
                )

    def _busy(m: str, trace: str) -> Response:
        """Admission control: above its queue bound a node says so at once, and the
        router tries another replica (or, on the last try, admits it anyway)."""
        routing.labels("busy_answered").inc()
        return _error(
            503,
            f"{daemon.name} is busy with {m!r} (queue at its bound)",
            trace,
            {"Retry-After": "0", BUSY: "1"},
        )

    async def _route(
        m: str,
        body: bytes,
        trace: str,
        forwarded: bool,
        t0: float,
        request_final: str = "",
    ) -> Response:
        tried: set[str] = set()
        if forwarded:  # one hop only: serve here or fail
            if not daemon.local_ready(m):
                return _error(
                    503, f"model {m!r} is not ready on {daemon.name}", trace, {"Retry-After": "1"}
                )
            if daemon.busy(m) and request_final != "1":
                return _busy(m, trace)
            return await _serve_local(m, body, trace, t0)
        last_error = None
        attempts = 1 + cfg.forward_retries
        for attempt in range(attempts):
            final = attempt == attempts - 1
            target = daemon.choose(m, tried)
            if target is None:
                break
            tried.add(target)
            if target == daemon.name:
                if daemon.busy(m) and not final:
                    last_error = _busy(m, trace)
                    continue
                resp = await _serve_local(m, body, trace, t0)
                if resp.status_code != 503:
                    return resp
                last_error = resp
                continue
            http = daemon.http_of(target)
            if http is None:
                continue
            headers = {FORWARDED: "1", TRACE: trace, "content-type": "application/json"}
            if final:
                headers[FINAL] = "1"  # the last try is admitted up to the hard queue bound
            daemon.note_sent(target)
            try:
                path = f"/v2/models/{urllib.parse.quote(m, safe='')}/infer"
                r = await forwarder.post(http, path, body, headers)
            except ForwardError as e:
                routing.labels("retried").inc()
                last_error = _error(502, f"forward to {target} failed: {e}", trace)
                continue
            finally:
                daemon.note_done(target)
            passed = {k: v for k, v in r.headers.items() if k in PASSED_HEADERS}
            if r.status in (502, 503, 504):
                routing.labels("busy_met" if r.headers.get(BUSY) else "retried").inc()
                last_error = Response(r.content, status_code=r.status, headers=passed)
                continue
            duration.labels(m, "forwarded").observe(time.perf_counter() - t0)
            return Response(r.content, status_code=r.status, headers=passed)
        if last_error is not None:
            return last_error
        if not daemon.known_model(m):
            return _error(404, f"model {m!r} is not known to this cluster", trace)
        return _error(503, f"model {m!r} has no ready replica", trace, {"Retry-After": "1"})

    async def _serve_local(m: str, body: bytes, trace: str, t0: float) -> Response:
        payload: dict[str, Any] = {}
        try:
            payload = _parse_infer(body)
            inputs = _to_tensors(payload)
            out = await daemon.inference.infer(
                m, inputs, timeout_s=cfg.request_timeout, as_list=False
            )
        except HTTPError as e:
            return _error(e.status, e.message, trace, e.headers)
        except InvalidInput as e:
            return _error(400, str(e), trace)
        except (Overloaded, ModelNotReady) as e:
            return _error(503, str(e), trace, {"Retry-After": "1"})
        except RequestTimeout as e:
            return _error(504, str(e), trace)
        except InferenceFailed as e:
            return _error(500, str(e), trace)
        duration.labels(m, "local").observe(time.perf_counter() - t0)
        _, to_kserve = _torch_dtypes()
        outputs = []
        for name, t in out.items():
            dtype = to_kserve.get(t.dtype, "FP32")
            flat = (
                t.float().reshape(-1).tolist() if t.is_floating_point() else t.reshape(-1).tolist()
            )
            outputs.append({"name": name, "shape": list(t.shape), "datatype": dtype, "data": flat})
        body = {
            "model_name": m,
            "model_version": "1",
            "id": payload.get("id", trace),
            "parameters": {"served_by": daemon.name, "trace_id": trace},
            "outputs": outputs,
        }
        return JSONResponse(body, headers={SERVED_BY: daemon.name, TRACE: trace})

    async def cluster(request: Request) -> Response:
        return JSONResponse(daemon.cluster_view())

    def admin_denied(request: Request) -> Response | None:
        """Bearer token if one is configured; else loopback clients only."""
        token = daemon.admin_token
        if token is not None:
            got = request.headers.get("authorization", "")
            if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
                return _error(
                    401,
                    "admin call needs 'Authorization: Bearer <token>'",
                    _trace(),
                    {"WWW-Authenticate": "Bearer"},
                )
            return None
        host = request.client.host if request.client else ""
        if not is_loopback(host):
            return _error(
                403,
                "admin calls are accepted from loopback only when no admin "
                "token is configured (--admin-token-file or RUMOR_ADMIN_TOKEN)",
                _trace(),
            )
        return None

    async def json_body(request: Request) -> Any:
        body = await read_body(request)
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise HTTPError(400, f"request body is not valid JSON: {e}") from None

    async def put_tags(request: Request) -> Response:
        if (denied := admin_denied(request)) is not None:
            return denied
        try:
            tags = await json_body(request)
        except HTTPError as e:
            return _error(e.status, e.message, _trace(), e.headers)
        if not isinstance(tags, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
        ):
            return _error(400, "tags must be a JSON object of string to string", _trace())
        try:
            daemon.set_tags(tags)
        except ValueError as e:
            return _error(413, str(e), _trace())
        return JSONResponse({"tags": tags})

    async def events(request: Request) -> Response:
        try:
            sub = daemon.subscribe()
        except TooManySubscribers as e:
            return _error(503, str(e), _trace(), {"Retry-After": "5"})
        return StreamingResponse(
            sse_events(sub, daemon.name),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache"},
        )

    async def add_model(request: Request) -> Response:
        if (denied := admin_denied(request)) is not None:
            return denied
        try:
            spec = await json_body(request)
            if not isinstance(spec, dict):
                raise HTTPError(400, "a model spec is a JSON object with name and source")
            mc = ModelConfig.from_dict(spec)
        except HTTPError as e:
            return _error(e.status, e.message, _trace(), e.headers)
        except (ConfigError, TypeError, ValueError) as e:
            return _error(400, f"invalid model spec: {e}", _trace())
        try:
            held = daemon.catalog_put(mc.name, spec)
        except ClockUnhealthy as e:
            return _error(503, str(e), _trace(), {"Retry-After": "5"})
        return JSONResponse(
            {
                "model": mc.name,
                "spec": held,
                "applied": held == spec,
                "catalog": sorted(daemon.catalog()),
            },
            status_code=201,
        )

    async def delete_model(request: Request) -> Response:
        if (denied := admin_denied(request)) is not None:
            return denied
        m = request.path_params["model"]
        if m not in daemon.catalog():
            return _error(404, f"model {m!r} is not in the catalog", _trace())
        daemon.catalog_delete(m)
        return JSONResponse({"model": m, "deleted": True})

    async def set_replicas(request: Request) -> Response:
        if (denied := admin_denied(request)) is not None:
            return denied
        m = request.path_params["model"]
        try:
            body = await json_body(request)
        except HTTPError as e:
            return _error(e.status, e.message, _trace(), e.headers)
        n = body.get("replicas") if isinstance(body, dict) else None
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_REPLICAS:
            return _error(
                400, f'body must be {{"replicas": N}} with 0 <= N <= {MAX_REPLICAS}', _trace()
            )
        if m not in daemon.catalog():
            return _error(404, f"model {m!r} is not in the catalog", _trace())
        try:
            held = daemon.set_replica_target(m, n)
        except ClockUnhealthy as e:
            return _error(503, str(e), _trace(), {"Retry-After": "5"})
        # The value that holds after the write (a later write elsewhere may win).
        return JSONResponse({"model": m, "replicas": held, "applied": held == n})

    async def list_models(request: Request) -> Response:
        return JSONResponse({"catalog": daemon.catalog(), "replicas": daemon.replica_targets()})

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    routes = [
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2", server_meta),
        Route("/v2/models/{model}", model_meta),
        Route("/v2/models/{model}/ready", model_ready),
        Route("/v2/models/{model}/infer", infer, methods=["POST"]),
        Route("/v1/cluster", cluster),
        Route("/v1/events", events),
        Route("/v1/node/tags", put_tags, methods=["PUT"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models", add_model, methods=["POST"]),
        Route("/v1/models/{model}", delete_model, methods=["DELETE"]),
        Route("/v1/models/{model}/replicas", set_replicas, methods=["PUT"]),
        Route("/metrics", metrics),
        *ui_routes(),  # GET /ui: the live cluster page (node/ui/)
    ]
    return Starlette(routes=routes)


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


def _trace() -> str:
    from .daemon import new_trace_id

    return new_trace_id()


def _parse_infer(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise HTTPError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(payload, dict):
        raise HTTPError(400, "request body must be a JSON object")
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise HTTPError(400, "'inputs' must be a non-empty list of tensors")
    for i, t in enumerate(inputs):
        if not isinstance(t, dict):
            raise HTTPError(400, f"inputs[{i}] must be an object")
        for key in ("name", "shape", "datatype", "data"):
            if key not in t:
                raise HTTPError(400, f"inputs[{i}] lacks '{key}'")
        if not isinstance(t["name"], str):
            raise HTTPError(400, f"inputs[{i}].name must be a string")
        if not isinstance(t["datatype"], str) or t["datatype"] not in DTYPES:
            raise HTTPError(
                400, f"inputs[{i}].datatype {t['datatype']!r} is not one of {', '.join(DTYPES)}"
            )
        shape = t["shape"]
        if (
            not isinstance(shape, list)
            or len(shape) > 32
            or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM for d in shape
            )
        ):
            raise HTTPError(
                400,
                f"inputs[{i}].shape must be a list of at most 32 integers in 0..{MAX_DIM}",
            )
        if not isinstance(t["data"], list):
            raise HTTPError(400, f"inputs[{i}].data must be a list")
        n = math.prod(shape)
        if n != _count(t["data"]):
            raise HTTPError(
                400, f"inputs[{i}] has {_count(t['data'])} values, shape {shape} needs {n}"
            )
    return payload


def _count(data: list[Any]) -> int:
    """Scalars in a (possibly nested) JSON list, without building a tensor."""
    n, stack = 0, [data]
    while stack:
        for x in stack.pop():
            if isinstance(x, list):
                stack.append(x)
            else:
                n += 1
    return n


@functools.cache
def _torch_dtypes() -> tuple[dict[str, Any], dict[Any, str]]:
    """KServe name -> torch dtype, and back; torch is imported on first use."""
    import torch

    to_torch = {k: getattr(torch, v) for k, v in DTYPES.items()}
    return to_torch, {v: k for k, v in to_torch.items()}


def _to_tensors(payload: dict[str, Any]) -> dict[str, torch.Tensor]:
    import torch

    to_torch, _ = _torch_dtypes()
    out = {}
    for i, t in enumerate(payload["inputs"]):
        try:
            tensor = torch.tensor(t["data"], dtype=to_torch[t["datatype"]])
        except (TypeError, ValueError, RuntimeError, OverflowError) as e:
            raise HTTPError(400, f"inputs[{i}].data does not match {t['datatype']}: {e}") from None
        n = math.prod(t["shape"])
        if tensor.numel() != n:
            raise HTTPError(
                400, f"inputs[{i}] has {tensor.numel()} values, shape {t['shape']} needs {n}"
            )
        try:
            out[t["name"]] = tensor.reshape(t["shape"])
        except RuntimeError as e:
            raise HTTPError(400, f"inputs[{i}]: {e}") from None
    return out


async def serve_http(
    daemon: Daemon, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
) -> None:
    host, port = parse_hostport(daemon.config.http)
    await serve_asgi(
        build_app(daemon), host, port, daemon.config.http_limits(), task_status=task_status
    )
