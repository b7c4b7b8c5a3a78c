"""The engine in a child process, and its trio client in the parent.

Engine steps are CPU-bound Python and torch calls that hold the GIL; inside the
daemon's process they would delay the gossip failure detector's ticks (issue
#20). So, as vLLM V1 does with its EngineCore process, the core runs in a child
process (multiprocessing's spawn context: no forked torch or trio state) and the
parent only moves bytes. The two talk over a Unix stream socket in
length-prefixed msgpack frames (`protocol.py`). A plain socket rather than
ZeroMQ: one peer, in-order delivery and EOF on death are exactly what a stream
socket gives, with no dependency; the measured IPC cost is in docs/benchmarks.md.

Death is noticed, never waited out: when the child exits, for whatever reason,
the kernel closes its end of the socket, the parent's reader sees EOF, and
every pending request and query fails with EngineDeadError. The child, in
turn, exits when the parent's end closes, so it never outlives the daemon.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import multiprocessing
import os
import select
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from ..config import ModelConfig
from ..errors import EngineDeadError, InvalidInput
from .client import KVEvents, LLMClient
from .params import EngineStats, ModelInfo, RequestOutput, SamplingParams
from .protocol import FrameDecoder, ProtocolError, encode_frame
from .tokenizer import LLMTokenizer


class EngineStartError(RuntimeError):
    """The engine process could not load the model or did not start in time."""


class ProcessLLM(LLMClient):
    """Parent side: a trio client of an engine process. Use `open_process_engine`."""

    def __init__(self, process: Any, stream: trio.SocketStream) -> None:
        super().__init__()
        self.process = process
        self._stream = stream
        self._decoder = FrameDecoder()
        self._out_send, self._out_recv = trio.open_memory_channel[bytes](math.inf)
        self._queries: dict[int, tuple[trio.Event, list[Any]]] = {}
        self._qids = itertools.count(1)

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    # -- requests ------------------------------------------------------------

    def _submit(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self._send({"t": "add", "id": request_id, "ids": prompt_token_ids, "p": params.to_wire()})

    def _abort(self, request_id: str) -> None:
        self._send({"t": "abort", "id": request_id})

    def _send(self, msg: dict[str, Any]) -> None:
        if self._dead is not None:
            raise self._dead
        self._out_send.send_nowait(encode_frame(msg))

    async def _ask(self, what: str, cursor: int = 0) -> Any:
        q = next(self._qids)
        done = trio.Event()
        box: list[Any] = []
        self._queries[q] = (done, box)
        try:
            self._send({"t": "ask", "q": q, "what": what, "cursor": cursor})
            await done.wait()
        finally:
            self._queries.pop(q, None)
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    async def stats(self) -> EngineStats:
        return EngineStats.from_wire(await self._ask("stats"))

    async def cached_block_hashes(self) -> list[int]:
        return list(await self._ask("hashes"))

    async def kv_events_since(self, cursor: int) -> KVEvents:
        c, stored, removed, complete = await self._ask("events", cursor)
        return KVEvents(c, tuple(stored), tuple(removed), complete)

    # -- the two I/O tasks ---------------------------------------------------------

    async def _writer(self) -> None:
        async for frame in self._out_recv:
            frames = [frame]
            with contextlib.suppress(trio.WouldBlock):
                while True:  # coalesce whatever queued meanwhile into one write
                    frames.append(self._out_recv.receive_nowait())
            try:
                await self._stream.send_all(b"".join(frames))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the reader sees EOF and reports the death

    async def _reader(self) -> None:
        reason = "the engine process closed its socket"
        try:
            while True:
                data = await self._stream.receive_some(1 << 16)
                if not data:
                    break
                for msg in self._decoder.feed(data):
                    self._dispatch(msg)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            reason = f"the engine socket broke: {e}"
        except ProtocolError as e:
            reason = f"the engine sent garbage: {e}"
        await self._declare_dead(reason)

    async def _declare_dead(self, reason: str) -> None:
        if self._dead is not None:
            return
        code = await trio.to_thread.run_sync(_exit_code, self.process)
        if code is not None:
            reason += f" (exit code {code})"
        err = EngineDeadError(f"LLM engine process {self.process.pid} is gone: {reason}")
        self._fail_all(err)
        for done, box in self._queries.values():
            box.append(err)
            done.set()

    def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg["t"]
        if kind == "out":
            for item in msg["o"]:
                out = RequestOutput.from_wire(item)
                self._deliver(out, out.request_id)
        elif kind == "err":
            err: Exception = (
                InvalidInput(msg["msg"])
                if msg["kind"] == "invalid"
                else EngineDeadError(f"engine error: {msg['msg']}")
            )
            self._deliver(err, msg["id"])
        elif kind == "reply":
            entry = self._queries.get(msg["q"])
            if entry is not None:
                entry[1].append(msg["v"])
                entry[0].set()


def _exit_code(process: Any) -> int | None:
    process.join(1.0)  # EOF comes a moment before the exit status is reapable
    code = process.exitcode
    return None if code is None else int(code)


@asynccontextmanager
async def open_process_engine(
    config: ModelConfig, seed: int = 0, startup_timeout_s: float = 300.0
) -> AsyncIterator[ProcessLLM]:
    """Start an engine process for `config` and yield its client; stop it on exit.

    Raises EngineStartError if the model fails to load (with the child's
    reason) or the process dies or stalls before it is ready."""
    tmp = tempfile.mkdtemp(prefix="rumor-llm-")
    path = os.path.join(tmp, "engine.sock")
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    process = None
    try:
        await listener.bind(path)
        listener.listen(1)
        ctx = multiprocessing.get_context("spawn")
        process = ctx.Process(
            target=child_main,
            args=(config, path, seed),
            name=f"rumor-llm-{config.name}",
            daemon=True,
        )
        await trio.to_thread.run_sync(process.start)
        conn = await _accept(listener, process, startup_timeout_s)
        stream = trio.SocketStream(conn)
        client = ProcessLLM(process, stream)
        ready = await _handshake(stream, client._decoder, process, startup_timeout_s)
        client.info = ModelInfo.from_wire(ready["info"])
        client.tokenizer = LLMTokenizer.from_wire(ready["tok"])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._reader)
            nursery.start_soon(client._writer)
            try:
                yield client
            finally:
                with contextlib.suppress(EngineDeadError, trio.WouldBlock):
                    client._send({"t": "stop"})
                client._dead = client._dead or EngineDeadError("the engine was stopped")
                client._fail_all(client._dead)
                with trio.move_on_after(5) as scope:
                    scope.shield = True
                    await trio.to_thread.run_sync(process.join, 5.0)
                nursery.cancel_scope.cancel()
                await stream.aclose()
    finally:
        listener.close()
        if process is not None and process.is_alive():
            process.kill()
            process.join(1.0)
        shutil.rmtree(tmp, ignore_errors=True)


async def _accept(listener: Any, process: Any, timeout_s: float) -> Any:
    deadline = trio.current_time() + timeout_s
    while True:
        with trio.move_on_after(0.1):
            conn, _ = await listener.accept()
            return conn
        if not process.is_alive():
            raise EngineStartError(f"the engine process exited ({process.exitcode}) at start")
        if trio.current_time() > deadline:
            raise EngineStartError(f"the engine process did not connect in {timeout_s} s")


async def _handshake(
    stream: trio.SocketStream, decoder: FrameDecoder, process: Any, timeout_s: float
) -> dict[str, Any]:
    with trio.move_on_after(timeout_s):
        while True:
            data = await stream.receive_some(1 << 20)
            if not data:
                raise EngineStartError(f"the engine process exited ({process.exitcode}) at start")
            msgs = decoder.feed(data)
            if msgs:
                msg = msgs[0]
                if msg["t"] == "fatal":
                    raise EngineStartError(f"the model did not load: {msg['error']}")
                if msg["t"] != "ready":
                    raise EngineStartError(f"unexpected first frame {msg['t']!r}")
                return msg
    raise EngineStartError(f"the model did not load in {timeout_s} s")


# -- the child -------------------------------------------------------------------


def child_main(config: ModelConfig, path: str, seed: int) -> None:
    """Entry point of the engine process: load, say ready, then serve until told
    to stop or until the parent's end of the socket closes."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    try:
        import torch

        from .core import EngineCore

        if config.cpu_threads:
            torch.set_num_threads(config.cpu_threads)
        core = EngineCore.from_config(config, seed)
    except Exception as e:
        sock.sendall(encode_frame({"t": "fatal", "error": f"{type(e).__name__}: {e}"}))
        sock.close()
        return
    info = core.describe().to_wire()
    sock.sendall(encode_frame({"t": "ready", "info": info, "tok": core.tokenizer.to_wire()}))
    _ChildLoop(core, sock).run()


class _ChildLoop:
    def __init__(self, core: Any, sock: socket.socket) -> None:
        from .rate import RateMeter

        self.core = core
        self.sock = sock
        self.decoder = FrameDecoder()
        self.rate = RateMeter()
        self.running = True
        self.poll = select.poll()
        self.poll.register(sock, select.POLLIN)

    def run(self) -> None:
        try:
            while self.running:
                # Block for input only when idle; between steps just drain what came.
                self._receive(block=not self.core.has_unfinished())
                if self.running and self.core.has_unfinished():
                    outs = self.core.step()
                    self.rate.observe(time.monotonic(), self.core.generation_tokens)
                    if outs:
                        wire = [o.to_wire() for o in outs]
                        self.sock.sendall(encode_frame({"t": "out", "o": wire}))
        except (BrokenPipeError, ConnectionResetError, ProtocolError):
            pass  # the parent is gone: nothing to answer
        finally:
            self.sock.close()

    def _receive(self, block: bool) -> None:
        # A zero-timeout poll between steps costs one syscall and no exception.
        timeout = None if block else 0.0
        while self.poll.poll(timeout):
            data = self.sock.recv(1 << 16)
            if not data:
                self.running = False  # the parent closed: exit
                return
            for msg in self.decoder.feed(data):
                self._handle(msg)
            timeout = 0.0

    def _handle(self, msg: dict[str, Any]) -> None:
        from .client import kv_events

        kind = msg["t"]
        if kind == "add":
            rid = msg["id"]
            try:
                self.core.add_request(rid, msg["ids"], SamplingParams.from_wire(msg["p"]))
            except InvalidInput as e:
                self._send({"t": "err", "id": rid, "kind": "invalid", "msg": str(e)})
        elif kind == "abort":
            self.core.abort(msg["id"])
        elif kind == "ask":
            self._send({"t": "reply", "q": msg["q"], "v": self._answer(msg, kv_events)})
        elif kind == "stop":
            self.running = False

    def _answer(self, msg: dict[str, Any], kv_events: Any) -> Any:
        what = msg["what"]
        if what == "stats":
            s = self.core.stats().to_wire()
            s["tokens_per_s"] = self.rate.rate(time.monotonic())
            return s
        if what == "hashes":
            return self.core.cached_block_hashes()
        ev = kv_events(self.core, int(msg["cursor"]))
        return [ev.cursor, list(ev.stored), list(ev.removed), ev.complete]

    def _send(self, msg: dict[str, Any]) -> None:
        self.sock.sendall(encode_frame(msg))
