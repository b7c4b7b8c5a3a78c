"""HTTP/1.1 to an engine beside the daemon: h11 over trio streams, streamed.

Why h11 and not httpx: the same reason as node/forward.py (httpx cost 1-2 ms of
CPU per forwarded request), measured again for streaming in
bench/remote_engine_bench.py (docs/benchmarks.md, "Remote engines"): per
request and per streamed chunk, the h11 path costs a fraction of httpx's, and
for an SSE stream of tokens that cost is paid per token.

An answer is handed over as soon as its head arrives; its body is an async
iterator of the chunks as they come off the socket. Leaving the iteration
early, cancelling, or `close()` closes the connection at once: that is how
vLLM and SGLang learn that a client went away and abort the request. A
connection goes back to the pool only after a complete answer.

Errors split by what the caller may still do:
- `EngineUnavailable`: nothing came back (refused, reset, or silent past the
  deadline before the answer's head). The engine did not answer, so another
  replica may be tried.
- `EngineStreamError`: the answer broke off after its head (the engine died,
  hung past the deadline, or sent broken HTTP). Whether a retry is still
  possible depends on whether the caller passed anything on (`started`).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import h11
import trio

from ..config import EngineURL
from ..errors import InferenceError

#: Hop-by-hop headers (RFC 9110 7.6.1) never passed on, plus the framing ones
#: the server in front re-does.
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
    "upgrade",
})


class EngineUnavailable(InferenceError):
    """The engine gave no answer at all; trying another replica is safe."""

    retryable = True


class EngineStreamError(InferenceError):
    """The engine's answer broke off after it began."""


class _Stale(Exception):
    """A pooled connection the engine had already closed (nothing was answered)."""


class _Conn:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 << 10)
        self.idle_since = 0.0
        self.received = 0  # bytes read in the current request/answer cycle

    def peer_closed(self) -> bool:
        """Whether an idle connection was closed by the engine: a non-blocking peek."""
        raw = socket.socket(fileno=self.stream.socket.fileno())
        try:
            raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True
        finally:
            raw.detach()
        return True  # EOF, or bytes no request asked for

    def kill(self) -> None:
        """Close now, synchronously (safe inside a cancelled scope)."""
        self.stream.socket.close()


async def _next_event(conn: _Conn, timeout: float) -> object:
    """The next h11 event, reading as needed; trio.TooSlowError after `timeout`
    seconds without a byte."""
    while True:
        event = conn.h11.next_event()
        if event is not h11.NEED_DATA:
            return event
        with trio.fail_after(timeout):
            data = await conn.stream.receive_some(65536)
        conn.received += len(data)
        conn.h11.receive_data(data)  # b"" is EOF: h11 then reports ConnectionClosed or raises


_BROKEN = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError)


class EngineResponse:
    """An engine's answer: `status` and `headers` now, the body as it streams.

    Iterate `aiter_bytes()` once. `started` turns True when the first body
    byte is handed to the caller. `close()` is synchronous and idempotent;
    call it in a `finally` (or use `async with`), since an abandoned iteration
    would otherwise keep the connection, and the engine's work, alive until
    garbage collection.
    """

    def __init__(
        self,
        conn: _Conn,
        head: h11.Response,
        timeout: float,
        release: Callable[[_Conn], None],
        transform: Callable[[bytes], bytes] | None,
        flush: Callable[[], bytes] | None,
    ) -> None:
        self.status: int = head.status_code
        self.headers: list[tuple[str, str]] = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in head.headers
            if k.decode("latin-1").lower() not in _HOP_BY_HOP
            and not (transform is not None and k.lower() == b"content-length")
        ]
        self.started = False
        self.bytes_received = 0
        self._conn: _Conn | None = conn
        self._timeout = timeout
        self._release = release
        self._transform = transform
        self._flush = flush
        self._iterated = False

    def header(self, name: str, default: str = "") -> str:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), default)

    @property
    def content_type(self) -> str:
        return self.header("content-type")

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body, chunk by chunk as the engine sends it. Raises EngineStreamError
        if it breaks off. The connection is closed if the iteration does not finish."""
        if self._iterated:
            raise RuntimeError("the body can be iterated once")
        self._iterated = True
        conn = self._conn
        if conn is None:
            raise EngineStreamError("the answer was closed")
        try:
            while True:
                try:
                    event = await _next_event(conn, self._timeout)
                except trio.TooSlowError:
                    raise EngineStreamError(
                        f"the engine sent nothing for {self._timeout:g} s mid-answer"
                    ) from None
                except _BROKEN as e:
                    raise EngineStreamError(f"the engine's answer broke off: {e}") from None
                if isinstance(event, h11.Data):
                    data = bytes(event.data)
                    self.bytes_received += len(data)
                    if self._transform is not None:
                        data = self._transform(data)
                    if data:
                        self.started = True
                        yield data
                elif isinstance(event, h11.EndOfMessage):
                    tail = self._flush() if self._flush is not None else b""
                    self._conn = None
                    self._release(conn)  # complete: reusable
                    if tail:
                        self.started = True
                        yield tail
                    return
                elif isinstance(event, h11.ConnectionClosed):
                    raise EngineStreamError("the engine closed the connection mid-answer")
        finally:
            self.close()

    async def read(self, limit: int = 1 << 20) -> bytes:
        """The whole body (for small answers: errors, non-streamed completions)."""
        parts: list[bytes] = []
        size = 0
        async for chunk in self.aiter_bytes():
            size += len(chunk)
            if size > limit:
                self.close()
                raise EngineStreamError(f"the engine's answer is over {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        """Close the connection unless the answer completed (then it was pooled)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.kill()

    async def __aenter__(self) -> EngineResponse:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


@dataclass
class PoolStats:
    dials: int = 0
    reuses: int = 0
    stale_retries: int = 0  # requests sent again after a pooled connection closed


class EngineHTTP:
    """Keep-alive HTTP/1.1 connections to one engine.

    Pooled connections expire after `idle_expiry` (below uvicorn's 5 s
    keep-alive, which vLLM and SGLang run under) and are peeked before use;
    a request whose pooled connection closed before any answer is sent once
    more on a fresh one (the engine closed without reading it, so it was not
    served).
    """

    def __init__(self, url: EngineURL, max_idle: int = 16, idle_expiry: float = 3.0) -> None:
        self.url = url
        self.max_idle = max_idle
        self.idle_expiry = idle_expiry
        self._idle: list[_Conn] = []
        self.stats = PoolStats()
        self._closed = False

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
        timeout: float = 30.0,
        transform: Callable[[bytes], bytes] | None = None,
        flush: Callable[[], bytes] | None = None,
    ) -> EngineResponse:
        """Send a request; return once the answer's head has arrived.
        Raises EngineUnavailable when nothing came back within `timeout`."""
        if self._closed:
            raise EngineUnavailable("the engine client is closed")
        target = self.url.prefix + path
        fields = [("host", self.url.hostport)]
        if method != "GET" or body:
            fields.append(("content-length", str(len(body))))
        for k, v in headers or ():
            if k.lower() not in ("host", "content-length") and k.lower() not in _HOP_BY_HOP:
                fields.append((k, v))
        try:
            conn = self._pooled()
            if conn is not None:
                try:
                    return await self._exchange(conn, method, target, fields, body, timeout,
                                                transform, flush)
                except _Stale:
                    self.stats.stale_retries += 1
            with trio.fail_after(timeout):
                stream = await trio.open_tcp_stream(self.url.host, self.url.port)
            self.stats.dials += 1
            try:
                return await self._exchange(_Conn(stream), method, target, fields, body,
                                            timeout, transform, flush)
            except _Stale:
                raise EngineUnavailable(f"{self.url.base_url} closed the connection") from None
        except trio.TooSlowError:
            raise EngineUnavailable(
                f"{self.url.base_url} did not answer within {timeout:g} s"
            ) from None
        except _BROKEN as e:
            raise EngineUnavailable(f"{self.url.base_url}: {e}") from None

    async def get(self, path: str, timeout: float, limit: int = 8 << 20) -> tuple[int, bytes]:
        """A small GET (probes): status and the whole body, within `timeout` in all."""
        try:
            with trio.fail_after(timeout):
                resp = await self.request("GET", path, timeout=timeout)
                try:
                    return resp.status, await resp.read(limit)
                finally:
                    resp.close()
        except trio.TooSlowError:
            raise EngineUnavailable(
                f"GET {path} took longer than {timeout:g} s"
            ) from None
        except EngineStreamError as e:
            raise EngineUnavailable(f"GET {path}: {e}") from None

    def _pooled(self) -> _Conn | None:
        now = trio.current_time()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.idle_since < self.idle_expiry and not conn.peer_closed():
                self.stats.reuses += 1
                return conn
            conn.kill()
        return None

    async def _exchange(
        self,
        conn: _Conn,
        method: str,
        target: str,
        fields: list[tuple[str, str]],
        body: bytes,
        timeout: float,
        transform: Callable[[bytes], bytes] | None,
        flush: Callable[[], bytes] | None,
    ) -> EngineResponse:
        try:
            out = conn.h11.send(h11.Request(method=method, target=target, headers=fields)) or b""
            if body:
                out += conn.h11.send(h11.Data(data=body)) or b""
            out += conn.h11.send(h11.EndOfMessage()) or b""
            try:
                await conn.stream.send_all(out)
            except (trio.BrokenResourceError, OSError) as e:
                raise _Stale from e
            while True:
                try:
                    event = await _next_event(conn, timeout)
                except h11.RemoteProtocolError as e:
                    if not conn.received:
                        raise _Stale from e  # EOF before a byte of an answer
                    raise
                except (trio.BrokenResourceError, ConnectionError) as e:
                    if not conn.received:
                        raise _Stale from e
                    raise
                if isinstance(event, h11.InformationalResponse):
                    continue  # 100 Continue and the like
                if isinstance(event, h11.Response):
                    return EngineResponse(conn, event, timeout, self._release, transform, flush)
                if isinstance(event, h11.ConnectionClosed):
                    raise _Stale
        except BaseException:
            conn.kill()
            raise

    def _release(self, conn: _Conn) -> None:
        if (
            not self._closed
            and conn.h11.our_state is h11.DONE
            and conn.h11.their_state is h11.DONE
            and len(self._idle) < self.max_idle
        ):
            conn.h11.start_next_cycle()
            conn.received = 0
            conn.idle_since = trio.current_time()
            self._idle.append(conn)
            return
        conn.kill()

    def close_idle(self) -> None:
        """Drop pooled connections (the engine went away: they are dead)."""
        for conn in self._idle:
            conn.kill()
        self._idle.clear()

    def close(self) -> None:
        self._closed = True
        self.close_idle()

