"""A real Daemon in this process, no subprocess: its gossip and inference run
in a trio nursery, and its HTTP app is driven through httpx's ASGI transport
(any client address we like) or served on a loopback port.

    async with running(NodeConfig(name="a")) as (daemon, client):
        r = await client.get("/v1/cluster")

`served_in_thread` runs the daemon and its HTTP server in a trio loop of
their own, for synchronous tests (a Hypothesis property over HTTP).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress

import httpx
import trio

from node.api.app import build_app, serve_http
from node.config import NodeConfig
from node.daemon import Daemon


@asynccontextmanager
async def running(
    config: NodeConfig, client_addr: tuple[str, int] = ("127.0.0.1", 40000)
) -> AsyncIterator[tuple[Daemon, httpx.AsyncClient]]:
    daemon = Daemon(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        # An exception in the app is a 500 to the client, as a real server answers.
        transport = httpx.ASGITransport(
            app=build_app(daemon), client=client_addr, raise_app_exceptions=False
        )
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            yield daemon, client
        nursery.cancel_scope.cancel()


async def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `cond` until it holds; AssertionError naming `what` after `timeout` s."""
    with trio.move_on_after(timeout):
        while not cond():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@contextmanager
def served_in_thread(config: NodeConfig, timeout: float = 60.0) -> Iterator[tuple[Daemon, str]]:
    """The daemon with its HTTP server on loopback, in a thread; yields it and
    its HOST:PORT. Stopped (and the thread joined) on exit, also on failure."""
    daemon = Daemon(config)
    bound: dict[str, str] = {}
    ready = threading.Event()
    token: list[trio.lowlevel.TrioToken] = []
    scope = trio.CancelScope()
    errors: list[BaseException] = []

    async def main() -> None:
        token.append(trio.lowlevel.current_trio_token())
        with scope:
            async with trio.open_nursery() as nursery:
                bound.update(await nursery.start(daemon.run, serve_http))
                ready.set()

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as e:  # reported to the test below
            errors.append(e)
        finally:
            ready.set()

    thread = threading.Thread(target=run, name=f"daemon-{config.name}", daemon=True)
    thread.start()
    try:
        assert ready.wait(timeout), f"{config.name} did not start within {timeout:g} s"
        if errors:
            raise errors[0]
        yield daemon, bound["http"]
    finally:
        if token and thread.is_alive():
            with suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(scope.cancel, trio_token=token[0])
        thread.join(timeout)
        assert not thread.is_alive(), f"{config.name} did not stop within {timeout:g} s"
