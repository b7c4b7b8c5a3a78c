"""node.forward: the forward hop's pooled HTTP/1.1 client."""

from __future__ import annotations

import h11
import pytest
import trio

from node.forward import Forwarder, ForwardError


async def _serve(nursery: trio.Nursery, close_after_each: bool) -> tuple[int, list[int]]:
    conns: list[int] = []

    async def handler(stream: trio.SocketStream) -> None:
        conns.append(1)
        conn = h11.Connection(h11.SERVER)
        async with stream:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                elif isinstance(event, h11.EndOfMessage):
                    body = b'{"ok": true}'
                    headers = [("content-type", "application/json"), ("x-rumor-served-by", "p")]
                    headers.append(("content-length", str(len(body))))
                    out = conn.send(h11.Response(status_code=200, headers=headers))
                    out += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
                    await stream.send_all(out)
                    if close_after_each:
                        return  # without saying so: the client's pooled socket goes stale
                    conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    return

    listeners = await nursery.start(trio.serve_tcp, handler, 0)
    port = listeners[0].socket.getsockname()[1]
    return port, conns


@pytest.mark.parametrize("close_after_each", [False, True])
async def test_keep_alive_reuse_and_stale_connections(close_after_each: bool) -> None:
    async with trio.open_nursery() as nursery:
        port, conns = await _serve(nursery, close_after_each)
        fwd = Forwarder(timeout=5)
        for _ in range(3):
            ans = await fwd.post(f"127.0.0.1:{port}", "/v2/models/m/infer", b"{}", {"x-a": "1"})
            assert ans.status == 200 and ans.content == b'{"ok": true}'
            assert ans.headers["x-rumor-served-by"] == "p"
            await trio.sleep(0.01)
        # Kept alive: one connection. Closed by the server: each stale one is redialled.
        assert len(conns) == (3 if close_after_each else 1)
        await fwd.aclose()
        nursery.cancel_scope.cancel()


async def test_unreachable_peer_is_a_forward_error() -> None:
    with trio.socket.socket() as s:
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        with pytest.raises(ForwardError):
            await Forwarder(timeout=2).post(f"127.0.0.1:{port}", "/x", b"", {})


async def test_an_address_that_is_no_host_port_is_a_forward_error() -> None:
    """The address comes from a peer's gossiped record: junk must not escape as a 500."""
    for junk in ("not-an-address", "10.0.0.1:http", ""):
        with pytest.raises(ForwardError):
            await Forwarder(timeout=2).post(junk, "/x", b"", {})
