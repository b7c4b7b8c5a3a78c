"""Async (trio) clients of the engine core: the API the HTTP layer calls.

`LLMClient` is the contract; two drivers implement it:

- `InProcessLLM` (`open_in_process`) steps the core on the caller's trio
  thread, yielding to the loop between steps. For tests and benchmarks: a step
  holds the loop for its whole duration.
- `ProcessLLM` (`host.open_process_engine`) runs the core in a child process
  and talks to it over a Unix socket, so engine work never holds the daemon's
  GIL (issue #20).

Both stream a request's outputs through `generate()`; leaving the iteration
early (a client disconnect, a cancelled scope) aborts the request and frees
its KV blocks.
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import trio

from ..config import ModelConfig
from ..errors import EngineDeadError, InvalidInput
from .params import EngineStats, ModelInfo, RequestOutput, SamplingParams
from .rate import RateMeter
from .tokenizer import LLMTokenizer

if TYPE_CHECKING:
    from .core import EngineCore

_Item = RequestOutput | BaseException


@dataclass(frozen=True)
class KVEvents:
    """Prefix-cache changes since a cursor (see EngineCore.kv_events_since)."""

    cursor: int
    stored: tuple[int, ...]
    removed: tuple[int, ...]
    complete: bool  # False: events were dropped; resync with cached_block_hashes()


class LLMClient(ABC):
    """A loaded LLM, driven asynchronously. `info` and `tokenizer` are set on open."""

    info: ModelInfo
    tokenizer: LLMTokenizer

    def __init__(self) -> None:
        self._streams: dict[str, trio.MemorySendChannel[_Item]] = {}
        self._dead: EngineDeadError | None = None

    async def generate(
        self,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        request_id: str | None = None,
    ) -> AsyncGenerator[RequestOutput, None]:
        """Stream a request's outputs; the last one has `finished` set.

        Raises InvalidInput for a bad request (before or at the first output)
        and EngineDeadError if the engine dies. Closing or cancelling the
        iterator early aborts the request."""
        if self._dead is not None:
            raise self._dead
        rid = request_id if request_id is not None else uuid.uuid4().hex
        if rid in self._streams:
            raise InvalidInput(f"request id {rid!r} is already in use")
        send, recv = trio.open_memory_channel[_Item](math.inf)
        self._streams[rid] = send
        finished = False
        try:
            self._submit(rid, list(prompt_token_ids), params)
            async for item in recv:
                if isinstance(item, BaseException):
                    finished = True  # the engine has already dropped it
                    raise item
                if item.finished:
                    finished = True
                yield item
                if finished:
                    return
        finally:
            # No await in here: this runs in cancelled scopes, and the driver must
            # never see a closed channel still registered.
            self._streams.pop(rid, None)
            recv.close()
            if not finished and self._dead is None:
                self._abort(rid)  # synchronous: this may run inside a cancelled scope

    def _deliver(self, out: _Item, request_id: str) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                stream.send_nowait(out)

    def _fail_all(self, error: EngineDeadError) -> None:
        self._dead = error
        for rid in list(self._streams):
            self._deliver(error, rid)

    @abstractmethod
    def _submit(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Hand a request to the engine (may raise InvalidInput at once)."""

    @abstractmethod
    def _abort(self, request_id: str) -> None:
        """Ask the engine to drop a request; must not block."""

    @abstractmethod
    async def stats(self) -> EngineStats: ...

    @abstractmethod
    async def cached_block_hashes(self) -> list[int]: ...

    @abstractmethod
    async def kv_events_since(self, cursor: int) -> KVEvents: ...


def kv_events(core: EngineCore, cursor: int) -> KVEvents:
    new_cursor, events, complete = core.kv_events_since(cursor)
    return KVEvents(
        new_cursor,
        tuple(e.block_hash for e in events if e.kind == "stored"),
        tuple(e.block_hash for e in events if e.kind == "removed"),
        complete,
    )


class InProcessLLM(LLMClient):
    """Drives an EngineCore on the current trio thread (tests, benchmarks)."""

    def __init__(self, core: EngineCore) -> None:
        super().__init__()
        self.core = core
        self.info = core.describe()
        self.tokenizer = core.tokenizer
        self._work = trio.Event()
        self._rate = RateMeter()

    def _submit(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self.core.add_request(request_id, prompt_token_ids, params)
        self._work.set()

    def _abort(self, request_id: str) -> None:
        self.core.abort(request_id)

    async def run(self) -> None:
        """The driver loop: step while there is work, then wait for more."""
        while True:
            if not self.core.has_unfinished():
                self._work = trio.Event()
                await self._work.wait()
            for out in self.core.step():
                self._deliver(out, out.request_id)
            self._rate.observe(time.monotonic(), self.core.generation_tokens)
            await trio.lowlevel.checkpoint()  # let consumers and new requests in

    async def stats(self) -> EngineStats:
        return replace(self.core.stats(), tokens_per_s=self._rate.rate(time.monotonic()))

    async def cached_block_hashes(self) -> list[int]:
        return self.core.cached_block_hashes()

    async def kv_events_since(self, cursor: int) -> KVEvents:
        return kv_events(self.core, cursor)


@asynccontextmanager
async def open_in_process(config: ModelConfig, seed: int = 0) -> AsyncIterator[InProcessLLM]:
    """Load the model (on a worker thread) and drive it in this thread until exit."""
    from .core import EngineCore

    core = await trio.to_thread.run_sync(EngineCore.from_config, config, seed)
    client = InProcessLLM(core)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run)
        try:
            yield client
        finally:
            client._fail_all(EngineDeadError("the engine was stopped"))
            nursery.cancel_scope.cancel()
