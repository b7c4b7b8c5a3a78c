"""Dynamic batching with Triton's semantics, on trio.

- A batch is formed as soon as the queue holds `max_batch_size` rows or a
  preferred batch size; otherwise the batcher waits at most
  `max_queue_delay_ms` after the oldest request arrived (0, the default, means
  it does not wait to fill a batch, as in Triton).
- The queue is bounded: past `max_queue_size` waiting requests a new request
  fails at once with `Overloaded`, which the router treats as "try elsewhere".
- Each request has a timeout and can be cancelled; a request cancelled while
  still queued never reaches the model.
- Batches run on the model's dedicated worker thread. If a batch raises, its
  requests are re-run one by one so only the faulty request fails.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import trio

from .config import ModelConfig
from .engine import Engine
from .errors import InferenceFailed, ModelNotReady, Overloaded, RequestTimeout
from .worker import WorkerThread

#: Time constant of the throughput and latency EWMAs, in seconds.
EWMA_TAU_S = 2.0
EWMA_ALPHA = 0.2


@dataclass(slots=True)
class _Request:
    inputs: Mapping[str, torch.Tensor]
    rows: int
    as_list: bool
    enqueued: float
    done: trio.Event = field(default_factory=trio.Event)
    result: Any = None
    error: BaseException | None = None
    cancelled: bool = False
    queued: bool = True


@dataclass(frozen=True)
class LoadStats:
    """Cheap snapshot of one model's load, gossiped by the node every tick."""

    queue: int  # requests waiting
    queue_rows: int
    in_flight: int  # requests in the batch being run
    ewma_latency_s: float  # request latency: queue wait plus service
    ewma_service_s: dict[int, float]  # batch service time by bucket size
    throughput: float  # rows per second (EWMA)
    completed: int
    rejected: int
    memory_used: int
    memory_free: int

    def to_json(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "in_flight": self.in_flight,
            "ewma_latency": round(self.ewma_latency_s, 6),
            "throughput": round(self.throughput, 3),
            "memory": {"used": self.memory_used, "free": self.memory_free},
        }


class DynamicBatcher:
    def __init__(self, engine: Engine, config: ModelConfig, worker: WorkerThread) -> None:
        self.engine = engine
        self.config = config
        self.name = config.name
        self._worker = worker
        self._queue: deque[_Request] = deque()
        self._waiting = 0
        self._waiting_rows = 0
        self._in_flight = 0
        self._wakeup = trio.Event()
        self._closed = False
        self._buckets = config.batch_buckets()
        self._prefs = set(config.preferred_batch_sizes)
        self._delay_s = config.max_queue_delay_ms / 1000.0
        # statistics
        self._service: dict[int, float] = {}
        self._latency = 0.0
        self._rate = 0.0
        self._rate_t = 0.0
        self._completed = 0
        self._rejected = 0

    # -- the client side -------------------------------------------------------

    async def infer(
        self,
        inputs: Mapping[str, torch.Tensor],
        timeout_s: float | None = None,
        as_list: bool = False,
    ) -> dict[str, Any]:
        """Queue one request and wait for its outputs.

        Raises InvalidInput (bad tensors), Overloaded (queue full), RequestTimeout,
        ModelNotReady (unloading) or InferenceFailed (the model raised).
        """
        if self._closed:
            raise ModelNotReady(f"model {self.name!r} is unloading")
        rows = self.engine.validate(self.name, inputs)
        if self._waiting >= self.config.max_queue_size:
            self._rejected += 1
            raise Overloaded(
                f"model {self.name!r} queue is full ({self._waiting} requests waiting)"
            )
        now = trio.current_time()
        req = _Request(inputs, rows, as_list, now)
        self._queue.append(req)
        self._waiting += 1
        self._waiting_rows += rows
        self._wakeup.set()
        timeout = self.config.timeout_s if timeout_s is None else timeout_s
        try:
            with trio.fail_after(timeout):
                await req.done.wait()
        except trio.TooSlowError:
            self._abandon(req)
            raise RequestTimeout(f"model {self.name!r}: no result within {timeout:g}s") from None
        except BaseException:
            self._abandon(req)
            raise
        if req.error is not None:
            raise req.error
        latency = trio.current_time() - now
        self._latency += EWMA_ALPHA * (latency - self._latency)
        return req.result  # type: ignore[no-any-return]

    def _abandon(self, req: _Request) -> None:
        req.cancelled = True
        if req.queued:
            req.queued = False
            self._waiting -= 1
            self._waiting_rows -= req.rows

    # -- the batching loop ---------------------------------------------------

    async def run(self) -> None:
        """The batching loop; runs until cancelled (the service owns its scope)."""
        try:
            while True:
                await self._wait_for_batch()
                batch = self._take_batch()
                if batch:
                    await self._run_batch(batch)
        finally:
            self._fail_pending(ModelNotReady(f"model {self.name!r} was unloaded"))

    async def _wait_for_batch(self) -> None:
        while not self._waiting:
            self._wakeup = trio.Event()
            await self._wakeup.wait()
        if self._delay_s <= 0:
            return
        oldest = next(r for r in self._queue if r.queued)
        deadline = oldest.enqueued + self._delay_s
        while (
            self._waiting_rows < self.config.max_batch_size
            and self._waiting_rows not in self._prefs
            and trio.current_time() < deadline
        ):
            self._wakeup = trio.Event()
            with trio.move_on_at(deadline):
                await self._wakeup.wait()

    def _take_batch(self) -> list[_Request]:
        batch: list[_Request] = []
        rows = 0
        limit = self.config.max_batch_size
        while self._queue:
            req = self._queue[0]
            if not req.queued:
                self._queue.popleft()
                continue
            if rows + req.rows > limit:
                break
            self._queue.popleft()
            req.queued = False
            self._waiting -= 1
            self._waiting_rows -= req.rows
            rows += req.rows
            batch.append(req)
        return batch

    async def _run_batch(self, batch: list[_Request]) -> None:
        self._in_flight = len(batch)
        t0 = trio.current_time()
        try:
            results = await self._worker.run(self._predict_isolated, batch)
        finally:
            self._in_flight = 0
        t1 = trio.current_time()
        rows = sum(r.rows for r in batch)
        bucket = next(b for b in self._buckets if b >= rows)
        prev = self._service.get(bucket)
        self._service[bucket] = (t1 - t0) if prev is None else prev + EWMA_ALPHA * (t1 - t0 - prev)
        self._rate = self._decayed_rate(t1) + rows / EWMA_TAU_S
        self._rate_t = t1
        self._completed += len(batch)
        for req, res in zip(batch, results, strict=True):
            if isinstance(res, BaseException):
                req.error = res
            else:
                req.result = res
            req.done.set()

    def _predict_isolated(self, batch: list[_Request]) -> list[Any]:
        """Runs on the worker thread. Materialises outputs before the buffers are reused."""
        try:
            views = self.engine.predict(self.name, [r.inputs for r in batch])
            return [_materialize(v, r.as_list) for v, r in zip(views, batch, strict=True)]
        except Exception:
            pass
        # The batch failed: retry each request alone so one bad request fails alone.
        out: list[Any] = []
        for r in batch:
            try:
                (v,) = self.engine.predict(self.name, [r.inputs])
                out.append(_materialize(v, r.as_list))
            except Exception as e:
                out.append(InferenceFailed(f"model {self.name!r} failed: {e}"))
        return out

    def _fail_pending(self, error: BaseException) -> None:
        self._closed = True
        while self._queue:
            req = self._queue.popleft()
            if req.queued:
                req.queued = False
                req.error = error
                req.done.set()
        self._waiting = self._waiting_rows = 0

    def close(self) -> None:
        """Refuse new requests and fail queued ones (called when unloading)."""
        self._fail_pending(ModelNotReady(f"model {self.name!r} is unloading"))

    # -- statistics ----------------------------------------------------------

    def _decayed_rate(self, now: float) -> float:
        return self._rate * math.exp(-(now - self._rate_t) / EWMA_TAU_S)

    def stats(self) -> LoadStats:
        try:
            used, free = self.engine.memory(self.name)
        except Exception:
            used, free = 0, 0
        try:
            now = trio.current_time()
        except RuntimeError:  # read from outside trio
            now = self._rate_t
        return LoadStats(
            queue=self._waiting,
            queue_rows=self._waiting_rows,
            in_flight=self._in_flight,
            ewma_latency_s=self._latency,
            ewma_service_s=dict(self._service),
            throughput=self._decayed_rate(now),
            completed=self._completed,
            rejected=self._rejected,
            memory_used=used,
            memory_free=free,
        )


def _materialize(view: dict[str, torch.Tensor], as_list: bool) -> dict[str, Any]:
    # The only per-request allocation: the caller's own copy of its result rows.
    if as_list:
        return {k: t.tolist() for k, t in view.items()}
    return {k: t.clone() for k, t in view.items()}
