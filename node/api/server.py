"""Serving the daemon's ASGI app: hypercorn's HTTP/1.1 protocol on an accept
loop of our own, with deliberate timeouts and a bounded number of connections.

Why not `hypercorn.trio.serve`: it accepts every connection it is offered and
knows no per-connection deadline but the idle keep-alive one. A client that
opens many connections and stalls in them then holds handlers and descriptors
until the process runs out of both, and the health check is refused with the
rest. Here each accepted connection is a row in a `ConnectionTable`; at the cap
a new connection evicts the longest-waiting connection that is waiting on its
client (idle, or stalled mid-request), never one the server is working for.

The timeouts (see `HTTPLimits`) follow the rule for keep-alive behind proxies:
the server's idle timeout must exceed every client's and proxy's, or a request
sent on a pooled connection just as the server closes it is lost (the keep-alive
race; AWS asks for over 60 s behind its load balancers).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config as HyperConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState

from ..config import HTTPLimits

ASGIApp = Callable[..., Awaitable[None]]
Scope = MutableMapping[str, Any]


class BodyRejected(Exception):
    """A request body we will not take: `status` is the 4xx to answer."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


async def read_body(request: Any, max_bytes: int, timeout_s: float) -> bytes:
    """A Starlette request's whole body, bounded in size and in time."""
    try:
        size = int(request.headers.get("content-length") or 0)
    except ValueError:
        raise BodyRejected(400, "content-length is not a number") from None
    if size > max_bytes:
        raise BodyRejected(413, f"body of {size} bytes exceeds {max_bytes}")
    body = bytearray()
    with trio.move_on_after(timeout_s):
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                raise BodyRejected(413, f"body exceeds {max_bytes} bytes")
        return bytes(body)
    # The client stalled mid-body: it holds a handler and a descriptor, so it
    # gets a deadline like any other resource, and the connection closes.
    raise BodyRejected(
        408, f"request body not received within {timeout_s:g} s", {"connection": "close"}
    )


def hypercorn_config(limits: HTTPLimits) -> HyperConfig:
    config = HyperConfig()
    config.keep_alive_timeout = limits.keep_alive_s
    config.accesslog = None
    config.errorlog = None
    return config


class _Conn:
    __slots__ = ("busy", "ip", "last_active", "stream", "waiting_since")

    def __init__(self, stream: trio.SocketStream, ip: str, now: float) -> None:
        self.stream = stream
        self.ip = ip
        self.last_active = now
        self.busy = 0  # requests the app is handling
        self.waiting_since: float | None = None  # the app waits for body bytes

    def waiting_on_client(self) -> bool:
        return self.busy == 0 or self.waiting_since is not None

    def idle_since(self) -> float:
        return self.waiting_since if self.waiting_since is not None else self.last_active


class ConnectionTable:
    """Every open connection, keyed by the client's (host, port)."""

    def __init__(self, limits: HTTPLimits) -> None:
        self.limits = limits
        self.cap = limits.connection_cap()
        self.conns: dict[tuple[str, int], _Conn] = {}
        self.per_ip: dict[str, int] = {}
        self.evicted = 0
        self.refused = 0
        self.closed_unread = 0  # answered before the body was read: closed after

    def admit(self, key: tuple[str, int], stream: trio.SocketStream, now: float) -> bool:
        """Make room for a new connection (evicting a waiting one); False: refuse it."""
        ip = key[0]
        if self.per_ip.get(ip, 0) >= self.limits.max_connections_per_ip and not self.evict(ip, now):
            self.refused += 1
            return False
        if len(self.conns) >= self.cap and not self.evict(None, now):
            self.refused += 1
            return False
        self.conns[key] = _Conn(stream, ip, now)
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        return True

    def evict(self, ip: str | None, now: float) -> bool:
        victims = [
            (c.idle_since(), k)
            for k, c in self.conns.items()
            if c.waiting_on_client() and (ip is None or c.ip == ip)
        ]
        if not victims:
            return False
        _, key = min(victims)
        conn = self.remove(key)
        if conn is not None:
            self.evicted += 1
            # Closing it makes hypercorn's pending receive fail: the connection's
            # task ends on its own, and the descriptor is free at once.
            conn.stream.socket.close()
        return True

    def remove(self, key: tuple[str, int]) -> _Conn | None:
        conn = self.conns.pop(key, None)
        if conn is not None:
            left = self.per_ip[conn.ip] - 1
            if left:
                self.per_ip[conn.ip] = left
            else:
                del self.per_ip[conn.ip]
        return conn

    def get(self, scope: Scope) -> _Conn | None:
        client = scope.get("client")
        if not client:
            return None
        return self.conns.get((client[0], client[1]))


def _has_body(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


def tracked(app: ASGIApp, table: ConnectionTable) -> ASGIApp:
    """The app, marking its connection busy while it works on a request and
    waiting while it waits for the client's body (only those may be evicted).

    It also closes a hole in keep-alive: a response that completes before the
    request's body has been read (a GET with a body, a 401 before the body is
    looked at) makes hypercorn close the connection afterwards, without having
    said so in the response, and the client's next request on that pooled
    connection is lost. Such a response now carries `connection: close`, so
    the client knows not to reuse the connection.
    """

    async def wrapped(scope: Scope, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await app(scope, receive, send)
            return
        conn = table.get(scope)
        body_done = not _has_body(scope)

        async def receive_tracked() -> Any:
            nonlocal body_done
            if conn is not None:
                conn.waiting_since = trio.current_time()
            try:
                message = await receive()
            finally:
                if conn is not None:
                    conn.waiting_since = None
                    conn.last_active = trio.current_time()
            if message.get("type") != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def send_tracked(message: Any) -> None:
            if message.get("type") == "http.response.start" and not body_done:
                headers = [(k, v) for k, v in message.get("headers", ()) if k != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
                table.closed_unread += 1
            await send(message)

        if conn is not None:
            conn.busy += 1
        try:
            await app(scope, receive_tracked, send_tracked)
        finally:
            if conn is not None:
                conn.busy -= 1
                conn.last_active = trio.current_time()

    return wrapped


async def serve_asgi(
    app: ASGIApp,
    host: str,
    port: int,
    limits: HTTPLimits,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    table: ConnectionTable | None = None,
) -> None:
    """Serve `app` on host:port until cancelled; `task_status` gets the bound address."""
    config = hypercorn_config(limits)
    table = table or ConnectionTable(limits)
    wrapper = ASGIWrapper(tracked(app, table))
    context = WorkerContext(None)
    listeners = await trio.open_tcp_listeners(port, host=host, backlog=256)
    sock = listeners[0].socket
    bound = sock.getsockname()
    async with trio.open_nursery() as nursery:

        async def handle(stream: trio.SocketStream, key: tuple[str, int]) -> None:
            try:
                server = TCPServer(wrapper, config, context, ConnectionState({}), stream)  # type: ignore[arg-type]
                await server.run()
            finally:
                table.remove(key)
                await trio.aclose_forcefully(stream)

        async def accept_loop(listener: trio.SocketListener) -> None:
            while True:
                try:
                    stream = await listener.accept()
                except OSError:
                    # EMFILE/ENFILE despite the cap (descriptors used elsewhere):
                    # make room and retry rather than spin or die.
                    table.evict(None, trio.current_time())
                    await trio.sleep(0.01)
                    continue
                try:
                    peer = stream.socket.getpeername()
                except OSError:
                    await trio.aclose_forcefully(stream)
                    continue
                key = (str(peer[0]), int(peer[1]))
                if not table.admit(key, stream, trio.current_time()):
                    await trio.aclose_forcefully(stream)
                    continue
                nursery.start_soon(handle, stream, key)

        for listener in listeners:
            nursery.start_soon(accept_loop, listener)
        task_status.started((str(bound[0]), int(bound[1])))
