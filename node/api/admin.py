"""Admin calls: the operator's catalog (`/v1/catalog`), replica targets and
this node's tags. A bearer token is required when one is configured
(`--admin-token-file` or RUMOR_ADMIN_TOKEN); without one, only loopback
clients are accepted."""

from __future__ import annotations

import hmac
import json
from typing import TYPE_CHECKING, Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gossip.transport import is_loopback
from inference.config import ModelConfig
from inference.errors import ConfigError

from ..errors import ClockUnhealthy, NotSaved
from .common import HTTPError, error, new_trace, read_body

if TYPE_CHECKING:
    from ..daemon import Daemon

#: A replica target's bounds.
MAX_REPLICAS = 10_000


class Admin:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def routes(self) -> list[Route]:
        return [
            Route("/v1/node/tags", self.put_tags, methods=["PUT"]),
            Route("/v1/catalog", self.list_catalog, methods=["GET"]),
            Route("/v1/catalog", self.add_model, methods=["POST"]),
            Route("/v1/catalog/{model}", self.delete_model, methods=["DELETE"]),
            Route("/v1/catalog/{model}/replicas", self.set_replicas, methods=["PUT"]),
        ]

    def denied(self, request: Request) -> Response | None:
        """Bearer token if one is configured; else loopback clients only."""
        token = self.daemon.admin_token
        if token is not None:
            got = request.headers.get("authorization", "")
            if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
                return error(
                    401,
                    "admin call needs 'Authorization: Bearer <token>'",
                    new_trace(),
                    {"WWW-Authenticate": "Bearer"},
                )
            return None
        host = request.client.host if request.client else ""
        if not is_loopback(host):
            return error(
                403,
                "admin calls are accepted from loopback only when no admin "
                "token is configured (--admin-token-file or RUMOR_ADMIN_TOKEN)",
                new_trace(),
            )
        return None

    async def json_body(self, request: Request) -> Any:
        cfg = self.daemon.config
        body = await read_body(request, cfg.max_body_bytes, cfg.http_body_timeout)
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise HTTPError(400, f"request body is not valid JSON: {e}") from None

    async def put_tags(self, request: Request) -> Response:
        if (denied := self.denied(request)) is not None:
            return denied
        try:
            tags = await self.json_body(request)
        except HTTPError as e:
            return error(e.status, e.message, new_trace(), e.headers)
        if not isinstance(tags, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
        ):
            return error(400, "tags must be a JSON object of string to string", new_trace())
        try:
            self.daemon.record.set_tags(tags, trio.current_time())
        except ValueError as e:
            return error(413, str(e), new_trace())
        return JSONResponse({"tags": tags})

    async def list_catalog(self, request: Request) -> Response:
        op = self.daemon.operator
        return JSONResponse({"catalog": op.catalog(), "replicas": op.targets()})

    async def add_model(self, request: Request) -> Response:
        if (denied := self.denied(request)) is not None:
            return denied
        try:
            spec = await self.json_body(request)
            if not isinstance(spec, dict):
                raise HTTPError(400, "a model spec is a JSON object with name and source")
            mc = ModelConfig.from_dict(spec)
        except HTTPError as e:
            return error(e.status, e.message, new_trace(), e.headers)
        except (ConfigError, TypeError, ValueError) as e:
            return error(400, f"invalid model spec: {e}", new_trace())
        if mc.format == "remote":
            return error(
                400,
                "an engine the operator runs (vllm+http:// and the like) is fronted by "
                "the node beside it: give it to that node with --model, not to the catalog",
                new_trace(),
            )
        try:
            held = self.daemon.operator.put(mc.name, spec, trio.current_time())
        except (ClockUnhealthy, NotSaved) as e:
            return error(503, str(e), new_trace(), {"Retry-After": "5"})
        return JSONResponse(
            {
                "model": mc.name,
                "spec": held,
                "applied": held == spec,
                "catalog": sorted(self.daemon.operator.catalog()),
            },
            status_code=201,
        )

    async def delete_model(self, request: Request) -> Response:
        if (denied := self.denied(request)) is not None:
            return denied
        m = request.path_params["model"]
        if m not in self.daemon.operator.catalog():
            return error(404, f"model {m!r} is not in the catalog", new_trace())
        try:
            self.daemon.operator.delete(m, trio.current_time())
        except NotSaved as e:
            return error(503, str(e), new_trace(), {"Retry-After": "5"})
        return JSONResponse({"model": m, "deleted": True})

    async def set_replicas(self, request: Request) -> Response:
        if (denied := self.denied(request)) is not None:
            return denied
        m = request.path_params["model"]
        try:
            body = await self.json_body(request)
        except HTTPError as e:
            return error(e.status, e.message, new_trace(), e.headers)
        n = body.get("replicas") if isinstance(body, dict) else None
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_REPLICAS:
            return error(
                400, f'body must be {{"replicas": N}} with 0 <= N <= {MAX_REPLICAS}', new_trace()
            )
        if m not in self.daemon.operator.catalog():
            return error(404, f"model {m!r} is not in the catalog", new_trace())
        try:
            held = self.daemon.operator.set_target(m, n, trio.current_time())
        except (ClockUnhealthy, NotSaved) as e:
            return error(503, str(e), new_trace(), {"Retry-After": "5"})
        # The value that holds after the write (a later write elsewhere may win).
        return JSONResponse({"model": m, "replicas": held, "applied": held == n})
