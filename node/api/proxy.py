"""Routing one request: serve it here or pass it to a ready replica, with the
cluster layer's tries (node.cluster.tries) and admission rule.

A forwarded request (`x-rumor-forwarded: 1`) is served where it lands or
answered with a 503: one hop only. A busy replica answers at once and the
router tries another; a failed hop is retried elsewhere; the last try is
admitted even by a busy replica. The hop passes the request's bytes on,
unparsed (node/forward.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio
from prometheus_client import Counter, Histogram
from starlette.responses import Response

from ..cluster.tries import Tries
from ..forward import Forwarder, ForwardError
from .common import BUSY, FINAL, FORWARDED, PASSED_HEADERS, TRACE, error

if TYPE_CHECKING:
    from ..daemon import Daemon

log = logging.getLogger("rumor.http")

ServeLocal = Callable[[], Awaitable[Response]]


class Proxy:
    def __init__(
        self, daemon: Daemon, forwarder: Forwarder, routing: Counter, duration: Histogram
    ) -> None:
        self.daemon = daemon
        self.forwarder = forwarder
        self.routing = routing
        self.duration = duration

    def busy_answer(self, model: str, trace: str) -> Response:
        """Admission control: above its queue bound a node says so at once, and the
        router tries another replica (or, on the last try, admits it anyway)."""
        self.routing.labels("busy_answered").inc()
        return error(
            503,
            f"{self.daemon.name} is busy with {model!r} (queue at its bound)",
            trace,
            {"Retry-After": "0", BUSY: "1"},
        )

    async def route(
        self,
        model: str,
        path: str,
        body: bytes,
        trace: str,
        forwarded: bool,
        final_hop: bool,
        serve_local: ServeLocal,
        known: Callable[[], bool],
    ) -> Response:
        d = self.daemon
        if forwarded:  # one hop only: serve here or fail
            if not d.models.ready(model):
                return error(
                    503, f"model {model!r} is not ready on {d.name}", trace, {"Retry-After": "1"}
                )
            if d.models.busy(model) and not final_hop:
                return self.busy_answer(model, trace)
            return await serve_local()
        t0 = time.perf_counter()
        tries = Tries(1 + d.config.forward_retries)
        last: Response | None = None

        def choose(exclude: set[str]) -> str | None:
            return d.router.choose(d.node, model, exclude, trio.current_time())

        while (target := tries.next(choose)) is not None:
            if target == d.name:
                if d.models.busy(model) and not tries.final:
                    last = self.busy_answer(model, trace)
                    tries.busy()
                    continue
                resp = await serve_local()
                if resp.status_code != 503:
                    tries.done()
                    return resp
                last = resp
                tries.failed()
                continue
            http = d.http_of(target)
            if http is None:
                tries.failed()
                continue
            headers = {FORWARDED: "1", TRACE: trace, "content-type": "application/json"}
            if tries.final:
                headers[FINAL] = "1"  # the last try is admitted up to the hard queue bound
            d.router.state.note_sent(target, trio.current_time())
            try:
                r = await self.forwarder.post(http, path, body, headers)
            except ForwardError as e:
                self.routing.labels("retried").inc()
                last = error(502, f"forward to {target} failed: {e}", trace)
                tries.failed()
                continue
            finally:
                d.router.state.note_done(target)
            passed = {k: v for k, v in r.headers.items() if k in PASSED_HEADERS}
            if r.status in (502, 503, 504):
                busy = bool(r.headers.get(BUSY))
                self.routing.labels("busy_met" if busy else "retried").inc()
                last = Response(r.content, status_code=r.status, headers=passed)
                if busy:
                    tries.busy()
                else:
                    tries.failed()
                continue
            self.duration.labels(model, "forwarded").observe(time.perf_counter() - t0)
            tries.done()
            return Response(r.content, status_code=r.status, headers=passed)
        if last is not None:
            return last
        if not known():
            return error(404, f"model {model!r} is not known to this cluster", trace)
        return error(503, f"model {model!r} has no ready replica", trace, {"Retry-After": "1"})
