"""The daemon's HTTP server and forwarder against the keep-alive race, stalled
bodies and connection floods (issue #22, #13 item 5).

Run on trio's MockClock with autojump: real loopback sockets, virtual time, so
"idle for 60 s" takes no time and the order of events is deterministic.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import h11
import pytest
import trio
import trio.testing
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from node.api.server import BodyRejected, ConnectionTable, read_body, serve_asgi
from node.config import HTTPLimits
from node.forward import Forwarder, ForwardError


async def _echo(request: Request) -> Response:
    try:
        body = await read_body(request, 1 << 20, timeout_s=10.0)
    except BodyRejected as e:
        return JSONResponse({"error": e.message}, status_code=e.status, headers=e.headers)
    return JSONResponse({"got": len(body)})


async def _live(request: Request) -> Response:
    return JSONResponse({"live": True})


APP = Starlette(routes=[Route("/echo", _echo, methods=["POST"]), Route("/live", _live)])


@asynccontextmanager
async def served(limits: HTTPLimits, table: ConnectionTable | None = None) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(
            lambda task_status: serve_asgi(
                APP, "127.0.0.1", 0, limits, task_status=task_status, table=table
            )
        )
        yield port
        nursery.cancel_scope.cancel()


class RawClient:
    """One HTTP/1.1 connection, driven by hand (h11), to see exactly what the
    server does with it."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def get(self, path: str) -> int | None:
        """Status of the answer, or None if the server closed without one."""
        data = self.conn.send(h11.Request(method="GET", target=path, headers=[("host", "x")]))
        data = (data or b"") + (self.conn.send(h11.EndOfMessage()) or b"")
        try:
            await self.stream.send_all(data)
        except trio.BrokenResourceError:
            return None
        status = None
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    chunk = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return None
                if not chunk and status is None:
                    return None  # "server disconnected without sending a response"
                self.conn.receive_data(chunk)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.EndOfMessage):
                self.conn.start_next_cycle()
                return status


async def _reuse_after_idle(limits: HTTPLimits, idle_s: float) -> int | None:
    async with served(limits) as port:
        client = await RawClient.connect(port)
        assert await client.get("/live") == 200
        await trio.sleep(idle_s)  # the client keeps the connection pooled, idle
        status = await client.get("/live")
        await client.stream.aclose()
        return status


# Clients and proxies that pool connections: httpx (5 s, the CLI's and the
# benches' client), the daemons' forwarder (30 s), a typical balancer (60 s).
CLIENT_IDLE_EXPIRIES = (5.0, Forwarder(1.0).idle_expiry, 60.0)


@pytest.mark.parametrize("client_expiry", CLIENT_IDLE_EXPIRIES)
async def test_a_connection_reused_just_before_the_clients_expiry_is_answered(
    client_expiry: float, autojump_clock: trio.testing.MockClock
) -> None:
    # The race: a client reuses its pooled connection at the last moment it
    # considers it fresh. The daemon's keep-alive outlasts every such client.
    assert await _reuse_after_idle(HTTPLimits(), client_expiry - 0.001) == 200


async def test_the_old_timeouts_lose_that_request(autojump_clock: trio.testing.MockClock) -> None:
    # The cause, shown: hypercorn's former default (5 s) equals httpx's pool
    # expiry, so a request sent on a connection httpx still trusts is lost.
    assert await _reuse_after_idle(HTTPLimits(keep_alive_s=5.0), 5.0 - 0.001) == 200
    assert await _reuse_after_idle(HTTPLimits(keep_alive_s=5.0), 5.0 + 0.001) is None


async def test_default_keep_alive_outlasts_every_client_we_know() -> None:
    assert HTTPLimits().keep_alive_s > max(CLIENT_IDLE_EXPIRIES)


async def test_a_response_before_the_body_is_read_says_the_connection_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The other way a pooled connection lost a request (found by the fuzz
    bench): a GET with a body is answered before the body arrives; hypercorn
    then closes the connection, so the response must say so, or the client
    reuses it and its next request is dropped without an answer."""
    table = ConnectionTable(HTTPLimits())
    async with served(HTTPLimits(), table) as port:
        client = await RawClient.connect(port)
        await client.stream.send_all(b"GET /live HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\n")
        answer = b""
        while b'{"live":true}' not in answer:  # answered, the body still unsent
            answer += await client.stream.receive_some(65536)
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert b"connection: close" in answer.lower()
        assert table.closed_unread == 1
        await client.stream.send_all(b"hello")
        assert await client.stream.receive_some(65536) == b""  # closed, as announced
        await client.stream.aclose()
        # A request whose body was read keeps its connection.
        fwd = Forwarder(timeout=5.0)
        for _ in range(3):
            assert (await fwd.post(f"127.0.0.1:{port}", "/echo", b"abc", {})).status == 200
        assert fwd.dials == 1 and table.closed_unread == 1
        await fwd.aclose()


# ---------------------------------------------------------------- the forward hop


async def test_forwarder_survives_a_peer_that_closed_its_idle_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The peer's keep-alive (5 s) is shorter than the forwarder's expiry (30 s):
    # the pooled connection is closed under it, and the forwarder must notice.
    async with served(HTTPLimits(keep_alive_s=5.0)) as port:
        fwd = Forwarder(timeout=10.0, idle_expiry=30.0)
        dials = []
        for idle in (0.0, 1.0, 4.999, 5.001, 4.0, 30.001):
            await trio.sleep(idle)
            answer = await fwd.post(f"127.0.0.1:{port}", "/echo", b"abc", {})
            assert answer.status == 200 and answer.content == b'{"got":3}', idle
            dials.append(fwd.dials)
        # Reused while fresh; dialled again after the peer closed it (5.001 s)
        # and after our own expiry (30.001 s, though the peer would still have
        # closed it first here); never a lost request, never a resend.
        assert dials == [1, 1, 1, 2, 2, 3] and fwd.stale_retries == 0
        await fwd.aclose()


async def test_forwarder_resends_only_when_the_connection_closed_before_any_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A peer that reads a request on a reused connection and closes without a
    byte (the race at its worst: the close crossed our request) gets it again
    on a fresh connection; a peer that answered part of it does not."""
    seen: list[int] = []
    mode = {"partial": False}

    async def peer(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        served_here = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return
                conn.receive_data(data)
                continue
            if isinstance(event, h11.EndOfMessage):
                seen.append(served_here)
                if served_here == 1:  # the first reuse of this connection
                    if mode["partial"]:
                        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nab")
                    await stream.aclose()
                    return
                body = b"ok"
                out = conn.send(h11.Response(status_code=200, headers=[("content-length", "2")]))
                out = (out or b"") + (conn.send(h11.Data(data=body)) or b"")
                out += conn.send(h11.EndOfMessage()) or b""
                await stream.send_all(out)
                conn.start_next_cycle()
                served_here += 1

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, peer, 0)
        port = listeners[0].socket.getsockname()[1]
        fwd = Forwarder(timeout=5.0)
        hp = f"127.0.0.1:{port}"
        assert (await fwd.post(hp, "/x", b"1", {})).content == b"ok"
        assert (await fwd.post(hp, "/x", b"2", {})).content == b"ok"  # closed, then resent
        assert fwd.stale_retries == 1 and seen == [0, 1, 0]
        mode["partial"] = True
        with pytest.raises(ForwardError):
            await fwd.post(hp, "/x", b"3", {})  # part of an answer came: never resent
        assert fwd.stale_retries == 1 and seen == [0, 1, 0, 1]
        await fwd.aclose()
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- stalled clients


async def test_a_body_that_stalls_gets_408_and_the_connection_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with served(HTTPLimits()) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(
            b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789"
        )
        t0 = trio.current_time()
        answer = b""
        while chunk := await stream.receive_some(65536):  # until the server closes
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert 10.0 <= trio.current_time() - t0 < 10.5  # the body deadline, not keep-alive
        await stream.aclose()


async def test_at_the_cap_a_new_connection_evicts_the_longest_waiting_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    table = ConnectionTable(HTTPLimits(max_connections=4))
    async with served(HTTPLimits(max_connections=4), table) as port:
        stalled = []
        for _ in range(4):  # connect and say nothing (a slow-loris client)
            stalled.append(await trio.open_tcp_stream("127.0.0.1", port))
            await trio.sleep(1)
        await trio.sleep(1)
        assert len(table.conns) == 4
        health = await RawClient.connect(port)
        assert await health.get("/live") == 200
        assert table.evicted == 1 and len(table.conns) == 4
        assert await stalled[0].receive_some(10) == b""  # the oldest went
        for s in [*stalled, health.stream]:
            await s.aclose()
