"""Routing one request: serve it here or pass it to a ready replica, with the
cluster layer's tries (node.cluster.tries) and admission rule. KServe and
OpenAI requests take the same path; a `Dialect` says how each protocol
writes its errors and its answers.

A forwarded request (`x-rumor-forwarded: 1`) is served where it lands or
answered with a 503: one hop only. A busy replica answers at once and the
router tries another; a failed hop is retried elsewhere; the last try is
admitted even by a busy replica; nothing is retried once the answer's head
has gone to the client. The hop passes the request's bytes on, unparsed
(node/forward.py).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

import trio
from prometheus_client import Counter
from starlette.responses import Response

from ..cluster.tries import Tries
from ..forward import Forwarder, ForwardError, Upstream
from .common import BUSY, FINAL, FORWARDED, TRACE

if TYPE_CHECKING:
    from ..cluster.prefix import PrefixRequest
    from ..daemon import Daemon

log = logging.getLogger("rumor.http")

ServeLocal = Callable[[], Awaitable[Response]]


class Dialect(Protocol):
    """How one protocol answers: its errors, and a replica's answer relayed."""

    def busy(self, node: str, model: str, trace: str) -> Response: ...

    def unavailable(self, message: str, trace: str) -> Response: ...

    def not_found(self, model: str, trace: str) -> Response: ...

    def from_peer(self, up: Upstream, body: bytes) -> Response:
        """A replica's 502/503/504, to pass on if no other replica serves."""
        ...

    async def relay(self, up: Upstream, target: str, done: Callable[[], None]) -> Response:
        """A replica's answer for the client; `done()` once it has been read."""
        ...


class Proxy:
    def __init__(self, daemon: Daemon, forwarder: Forwarder, routing: Counter) -> None:
        self.daemon = daemon
        self.forwarder = forwarder
        self.routing = routing

    async def route(
        self,
        dialect: Dialect,
        model: str,
        path: str,
        body: bytes,
        trace: str,
        forwarded: bool,
        final_hop: bool,
        serve_local: ServeLocal,
        prefix: PrefixRequest | None = None,
        llm: bool = False,
    ) -> Response:
        """`prefix`: an LLM request's prompt chain, for prefix-cache affinity;
        `llm`: route with the LLM policy (node.router.Router.choose)."""
        d = self.daemon
        d.poke()  # load will move: publish every interval again
        if forwarded:  # one hop only: serve here or fail
            if not d.models.ready(model):
                return dialect.unavailable(f"model {model!r} is not ready on {d.name}", trace)
            if d.models.busy(model) and not final_hop:
                self.routing.labels("busy_answered").inc()
                return dialect.busy(d.name, model, trace)
            return await serve_local()
        tries = Tries(1 + d.config.forward_retries)
        last: Response | None = None

        def choose(exclude: set[str]) -> str | None:
            return d.router.choose(d.node, model, exclude, trio.current_time(), prefix, llm=llm)

        while (target := tries.next(choose)) is not None:
            if target == d.name:
                if d.models.busy(model) and not tries.final:
                    self.routing.labels("busy_answered").inc()
                    last = dialect.busy(d.name, model, trace)
                    tries.busy()
                    continue
                resp = await serve_local()
                if resp.status_code != 503:  # served, or the client's mistake: final
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
                up = await self.forwarder.open(http, path, body, headers)
            except ForwardError as e:
                d.router.state.note_done(target)
                self.routing.labels("retried").inc()
                last = dialect.unavailable(f"forward to {target} failed: {e}", trace)
                tries.failed()
                continue
            if up.status in (502, 503, 504):
                try:
                    answer = b"".join([c async for c in up.chunks()])
                except ForwardError:
                    answer = b""
                d.router.state.note_done(target)
                busy = bool(up.headers.get(BUSY))
                self.routing.labels("busy_met" if busy else "retried").inc()
                last = dialect.from_peer(up, answer)
                if busy:
                    tries.busy()
                else:
                    tries.failed()
                continue
            tries.started()  # the answer's head goes to the client: no retry from here
            return await dialect.relay(up, target, _done(d, target))
        if last is not None:
            return last
        if not d.known_model(model):
            return dialect.not_found(model, trace)
        return dialect.unavailable(f"model {model!r} has no ready replica", trace)


def _done(d: Daemon, target: str) -> Callable[[], None]:
    def done() -> None:
        d.router.state.note_done(target)

    return done
