"""The forward hop: keep-alive HTTP/1.1 connections to peers, for passing an
inference request on to the replica the router chose.

h11 (the HTTP/1.1 protocol library hypercorn itself is built on) over trio
streams. httpx did this job first; profiled under load it spent 1-2 ms of CPU
per forwarded request, most of a forwarding node's time, so the hop cost more
than serving the request. This keeps one pool of idle connections per peer and
does nothing else: no redirects, cookies, auth or decompression.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import h11
import trio


class ForwardError(Exception):
    """The peer could not be reached or answered with broken HTTP."""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    content: bytes


class _Conn:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)
        self.idle_since = 0.0

    def peer_closed(self) -> bool:
        """Whether the peer has closed this idle connection (or sent bytes no
        request asked for): a non-blocking peek, so no request is risked on it."""
        raw = socket.socket(fileno=self.stream.socket.fileno())
        try:
            raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False  # open, and quiet as an idle connection should be
        except OSError:
            return True
        finally:
            raw.detach()  # the descriptor stays the trio stream's
        return True  # b"": the peer's FIN; anything else: stray bytes


class Upstream:
    """A peer's answer whose head has arrived; `chunks()` reads its body."""

    def __init__(
        self, fwd: Forwarder, conn: _Conn, hostport: str, status: int, headers: dict[str, str]
    ) -> None:
        self._fwd, self._conn, self.hostport = fwd, conn, hostport
        self.status, self.headers = status, headers
        self.bytes_read = 0
        self._done = False

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; each chunk within the forwarder's timeout.
        Leaving early closes the connection (the peer sees the client go)."""
        conn = self._conn
        try:
            while True:
                event = conn.h11.next_event()
                if event is h11.NEED_DATA:
                    with trio.fail_after(self._fwd.timeout):
                        data = await conn.stream.receive_some(65536)
                    conn.h11.receive_data(data)
                    continue
                if isinstance(event, h11.Data):
                    self.bytes_read += len(event.data)
                    yield bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    self._done = True
                    self._fwd._release(conn, self.hostport)
                    return
                elif isinstance(event, h11.ConnectionClosed):
                    raise ForwardError(f"{self.hostport} closed the connection mid-answer")
        except trio.TooSlowError:
            raise ForwardError(f"{self.hostport} stalled mid-answer") from None
        except (OSError, h11.ProtocolError, trio.BrokenResourceError) as e:
            raise ForwardError(f"{self.hostport}: {e}") from None
        finally:
            if not self._done:
                await trio.aclose_forcefully(conn.stream)

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            await trio.aclose_forcefully(self._conn.stream)


class Forwarder:
    """Pooled keep-alive connections to peers.

    The keep-alive race (a request sent on a pooled connection just as the
    peer's server closes it for idleness) is closed three ways: pooled
    connections expire after `idle_expiry`, well below the daemons' server
    keep-alive (75 s by default); a pooled connection is peeked before use,
    so one the peer has already closed is never used; and a request whose
    connection closed before any byte of an answer is sent again on a fresh
    connection. That is the only case where a retry is safe: the server
    closed without reading the request, so it was not served.
    """

    def __init__(
        self,
        timeout: float,
        max_idle_per_peer: int = 32,
        max_answer: int = 64 << 20,
        idle_expiry: float = 30.0,
    ) -> None:
        self.timeout = timeout
        self.max_idle = max_idle_per_peer
        self.max_answer = max_answer  # bytes: a peer's answer is data, not trusted
        self.idle_expiry = idle_expiry
        self._idle: dict[str, list[_Conn]] = {}
        self.stale_retries = 0  # requests sent again after a pooled connection closed
        self.dials = 0

    def _pooled(self, hostport: str) -> _Conn | None:
        """The most recently used live idle connection to `hostport`, if any."""
        pooled = self._idle.get(hostport)
        now = trio.current_time()
        while pooled:
            conn = pooled.pop()
            if now - conn.idle_since < self.idle_expiry and not conn.peer_closed():
                return conn
            conn.stream.socket.close()
        return None

    async def post(self, hostport: str, path: str, body: bytes, headers: dict[str, str]) -> Answer:
        """POST `body` and read the whole answer (bounded by `max_answer`)."""
        try:
            with trio.fail_after(self.timeout):
                up = await self._open(hostport, path, body, headers)
                chunks, size = [], 0
                async for chunk in up.chunks():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > self.max_answer:
                        await up.aclose()
                        raise ForwardError(f"{hostport} answered more than {self.max_answer} B")
                return Answer(up.status, up.headers, b"".join(chunks))
        except trio.TooSlowError:
            raise ForwardError(f"{hostport} did not answer within {self.timeout:g} s") from None

    async def open(
        self, hostport: str, path: str, body: bytes, headers: dict[str, str]
    ) -> Upstream:
        """POST `body` and return as soon as the answer's head has arrived: its
        body is then read chunk by chunk (a stream is passed on as it comes).
        The head must come within `timeout`; each chunk within `timeout` too."""
        try:
            with trio.fail_after(self.timeout):
                return await self._open(hostport, path, body, headers)
        except trio.TooSlowError:
            raise ForwardError(f"{hostport} did not answer within {self.timeout:g} s") from None

    async def _open(
        self, hostport: str, path: str, body: bytes, headers: dict[str, str]
    ) -> Upstream:
        """A pooled connection that closed before answering anything is
        retried once on a fresh one (the only safe retry: it was not served)."""
        try:
            conn = self._pooled(hostport)
            if conn is not None:
                try:
                    return await self._request(conn, hostport, path, body, headers)
                except _Stale:
                    self.stale_retries += 1  # closed as we sent: dial again
            conn = await self._dial(hostport)
            try:
                return await self._request(conn, hostport, path, body, headers)
            except _Stale as e:
                raise ForwardError(f"{hostport} closed the connection") from e
        except (OSError, ValueError, h11.ProtocolError, trio.BrokenResourceError) as e:
            # ValueError: an address in a peer's record that is no HOST:PORT.
            raise ForwardError(f"{hostport}: {e}") from None

    async def _dial(self, hostport: str) -> _Conn:
        host, _, port = hostport.rpartition(":")
        stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
        self.dials += 1
        return _Conn(stream)

    async def _request(
        self, conn: _Conn, hostport: str, path: str, body: bytes, headers: dict[str, str]
    ) -> Upstream:
        fields = [("host", hostport), ("content-length", str(len(body)))]
        fields += [
            (k, v) for k, v in headers.items() if k.lower() not in ("host", "content-length")
        ]
        out = conn.h11.send(h11.Request(method="POST", target=path, headers=fields))
        out = (out or b"") + (conn.h11.send(h11.Data(data=body)) or b"")
        out += conn.h11.send(h11.EndOfMessage()) or b""
        got_any = False
        try:
            await conn.stream.send_all(out)
            while True:
                event = conn.h11.next_event()
                if event is h11.NEED_DATA:
                    data = await conn.stream.receive_some(65536)
                    if not data and not got_any:
                        raise _Stale
                    conn.h11.receive_data(data)
                    got_any = True
                    continue
                if isinstance(event, h11.Response):
                    answer = {k.decode(): v.decode() for k, v in event.headers}
                    return Upstream(self, conn, hostport, event.status_code, answer)
                if isinstance(event, h11.ConnectionClosed):
                    raise ForwardError(f"{hostport} closed the connection before answering")
        except (trio.BrokenResourceError, ConnectionError) as e:
            await trio.aclose_forcefully(conn.stream)
            if not got_any:
                raise _Stale from e
            raise ForwardError(f"{hostport}: {e}") from None
        except BaseException:
            await trio.aclose_forcefully(conn.stream)
            raise

    def _release(self, conn: _Conn, hostport: str) -> None:
        if conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
            conn.h11.start_next_cycle()
            pool = self._idle.setdefault(hostport, [])
            if len(pool) < self.max_idle:
                conn.idle_since = trio.current_time()
                pool.append(conn)
                return
        conn.stream.socket.close()

    async def aclose(self) -> None:
        for pool in self._idle.values():
            for conn in pool:
                await trio.aclose_forcefully(conn.stream)
        self._idle.clear()


class _Stale(Exception):
    """A pooled connection the peer had already closed (nothing was answered)."""
