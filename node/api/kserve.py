"""The Open Inference Protocol (KServe v2 REST), as Triton and KServe clients
expect it: health, server and model metadata, readiness, and inference routed
to any ready replica."""

from __future__ import annotations

import functools
import logging
import math
import time
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import trio
from prometheus_client import Histogram
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from inference.errors import (
    InferenceFailed,
    InvalidInput,
    ModelNotReady,
    Overloaded,
    RequestTimeout,
)

from ..forward import ForwardError, Upstream
from .common import (
    BUSY,
    FINAL,
    FORWARDED,
    PASSED_HEADERS,
    SERVED_BY,
    TRACE,
    HTTPError,
    error,
    read_body,
    trace_of,
)
from .proxy import Proxy

if TYPE_CHECKING:
    import torch

    from ..daemon import Daemon

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
#: A replica's answer read at most this large.
MAX_ANSWER = 64 << 20
#: Bounds on a tensor: dimensions, and each dimension's size.
MAX_DIMS = 32
MAX_DIM = 2**31 - 1


class KServeAnswers:
    """The KServe dialect of node.api.proxy: JSON `{"error": ...}` answers,
    and a replica's answer read whole and passed on with its headers."""

    def __init__(self, duration: Histogram, model: str, t0: float) -> None:
        self.duration, self.model, self.t0 = duration, model, t0

    def busy(self, node: str, model: str, trace: str) -> Response:
        return error(
            503,
            f"{node} is busy with {model!r} (queue at its bound)",
            trace,
            {"Retry-After": "0", BUSY: "1"},
        )

    def unavailable(self, message: str, trace: str) -> Response:
        return error(503, message, trace, {"Retry-After": "1"})

    def not_found(self, model: str, trace: str) -> Response:
        return error(404, f"model {model!r} is not known to this cluster", trace)

    def from_peer(self, up: Upstream, body: bytes) -> Response:
        passed = {k: v for k, v in up.headers.items() if k in PASSED_HEADERS}
        return Response(body, status_code=up.status, headers=passed)

    async def relay(self, up: Upstream, target: str, done: Callable[[], None]) -> Response:
        try:
            chunks, size = [], 0
            async for chunk in up.chunks():
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_ANSWER:
                    await up.aclose()
                    return error(502, f"{target} answered more than {MAX_ANSWER} bytes", "")
        except ForwardError as e:
            return error(502, f"{target} broke off its answer: {e}", "")
        finally:
            done()
        self.duration.labels(self.model, "forwarded").observe(time.perf_counter() - self.t0)
        return self.from_peer(up, b"".join(chunks))


class KServe:
    def __init__(self, daemon: Daemon, proxy: Proxy, duration: Histogram) -> None:
        self.daemon = daemon
        self.proxy = proxy
        self.duration = duration
        self.client = httpx.AsyncClient(timeout=daemon.config.request_timeout)

    def routes(self) -> list[Route]:
        return [
            Route("/v2/health/live", self.live),
            Route("/v2/health/ready", self.ready),
            Route("/v2", self.server_meta),
            Route("/v2/models/{model}", self.model_meta),
            Route("/v2/models/{model}/ready", self.model_ready),
            Route("/v2/models/{model}/infer", self.infer, methods=["POST"]),
        ]

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        ok = not self.daemon.draining
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def server_meta(self, request: Request) -> Response:
        return JSONResponse({"name": "rumor", "version": "0.1.0", "extensions": ["rumor-cluster"]})

    async def model_meta(self, request: Request) -> Response:
        d, m = self.daemon, request.path_params["model"]
        trace = trace_of(request)
        status = d.inference.status(m)
        if status is not None and status.description is not None:
            body = status.description.to_json()
            body["versions"] = ["1"]
            body["state"] = str(status.state)
            return JSONResponse(body, headers={TRACE: trace})
        if not d.known_model(m):
            return error(404, f"model {m!r} is not known to this cluster", trace)
        replicas = d.ready_replicas(m)
        target = d.router.choose(d.node, m, {d.name}, trio.current_time())
        http = d.http_of(target) if target else None
        if http is not None and request.headers.get(FORWARDED) != "1":
            # The metadata lives with a replica: ask it (one hop).
            try:
                r = await self.client.get(
                    f"http://{http}/v2/models/{m}", headers={FORWARDED: "1", TRACE: trace}
                )
                meta = r.json() if r.status_code == 200 else None
                if isinstance(meta, dict):  # a replica's answer is data, not trusted
                    meta["ready_replicas"] = replicas
                    return JSONResponse(meta, headers={TRACE: trace})
            except (httpx.HTTPError, ValueError):
                pass
        return JSONResponse(
            {"name": m, "versions": ["1"], "platform": "rumor", "ready_replicas": replicas},
            headers={TRACE: trace},
        )

    async def model_ready(self, request: Request) -> Response:
        d, m = self.daemon, request.path_params["model"]
        if not d.known_model(m) and d.inference.status(m) is None:
            return error(404, f"model {m!r} is not known to this cluster", trace_of(request))
        ok = d.models.ready(m) or bool(d.ready_replicas(m))
        return JSONResponse({"name": m, "ready": ok}, status_code=200 if ok else 503)

    async def infer(self, request: Request) -> Response:
        d, m = self.daemon, request.path_params["model"]
        trace = trace_of(request)
        forwarded = request.headers.get(FORWARDED) == "1"
        t0 = time.perf_counter()
        if d.draining:
            return error(503, "node is shutting down", trace, {"Retry-After": "1"})
        try:
            # Parsed only where it is served: a forwarding node passes the bytes on.
            body = await read_body(request, d.config.max_body_bytes, d.config.http_body_timeout)
        except HTTPError as e:
            return error(e.status, e.message, trace, e.headers)
        d.in_flight += 1
        scope = trio.CancelScope()
        response: Response | None = None
        d.request_scopes.add(scope)
        try:
            with scope:
                response = await self.proxy.route(
                    KServeAnswers(self.duration, m, t0),
                    m,
                    f"/v2/models/{urllib.parse.quote(m, safe='')}/infer",
                    body,
                    trace,
                    forwarded,
                    request.headers.get(FINAL) == "1",
                    functools.partial(self._serve_local, m, body, trace, t0),
                )
            if response is None:
                response = error(
                    503,
                    "node shut down before the request finished (drain timeout)",
                    trace,
                    {"Retry-After": "1"},
                )
            return response
        finally:
            d.request_scopes.discard(scope)
            d.in_flight -= 1
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

    async def _serve_local(self, m: str, body: bytes, trace: str, t0: float) -> Response:
        d = self.daemon
        payload: dict[str, Any] = {}
        try:
            payload = parse_infer(body)
            inputs = to_tensors(payload)
            out = await d.inference.infer(
                m, inputs, timeout_s=d.config.request_timeout, as_list=False
            )
        except HTTPError as e:
            return error(e.status, e.message, trace)
        except InvalidInput as e:
            return error(400, str(e), trace)
        except (Overloaded, ModelNotReady) as e:
            return error(503, str(e), trace, {"Retry-After": "1"})
        except RequestTimeout as e:
            return error(504, str(e), trace)
        except InferenceFailed as e:
            return error(500, str(e), trace)
        self.duration.labels(m, "local").observe(time.perf_counter() - t0)
        _, to_kserve = torch_dtypes()
        outputs = []
        for name, t in out.items():
            dtype = to_kserve.get(t.dtype, "FP32")
            flat = (
                t.float().reshape(-1).tolist() if t.is_floating_point() else t.reshape(-1).tolist()
            )
            outputs.append({"name": name, "shape": list(t.shape), "datatype": dtype, "data": flat})
        answer = {
            "model_name": m,
            "model_version": "1",
            "id": payload.get("id", trace),
            "parameters": {"served_by": d.name, "trace_id": trace},
            "outputs": outputs,
        }
        return JSONResponse(answer, headers={SERVED_BY: d.name, TRACE: trace})


def parse_infer(body: bytes) -> dict[str, Any]:
    """A KServe v2 inference request, checked before any tensor is built:
    every malformed one is an HTTPError with a 4xx, never anything else."""
    import json

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
            or len(shape) > MAX_DIMS
            or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM for d in shape
            )
        ):
            raise HTTPError(
                400,
                f"inputs[{i}].shape must be a list of at most {MAX_DIMS} integers in 0..{MAX_DIM}",
            )
        if not isinstance(t["data"], list):
            raise HTTPError(400, f"inputs[{i}].data must be a list")
        n, got = math.prod(shape), count_values(t["data"])
        if n != got:
            raise HTTPError(400, f"inputs[{i}] has {got} values, shape {shape} needs {n}")
    return payload


def count_values(data: list[Any]) -> int:
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
def torch_dtypes() -> tuple[dict[str, Any], dict[Any, str]]:
    """KServe name -> torch dtype, and back; torch is imported on first use."""
    import torch

    to_torch = {k: getattr(torch, v) for k, v in DTYPES.items()}
    return to_torch, {v: k for k, v in to_torch.items()}


def to_tensors(payload: dict[str, Any]) -> dict[str, torch.Tensor]:
    import torch

    to_torch, _ = torch_dtypes()
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
