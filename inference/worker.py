"""A dedicated OS thread that runs blocking jobs (loads, batches) off the trio loop."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import outcome
import trio

T = TypeVar("T")


class WorkerThread:
    """Runs submitted callables one at a time, in order, on one thread.

    One per model: its CUDA stream, its graphs and its buffers are only ever
    touched from this thread, and the event loop never blocks on torch.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=f"rumor-worker-{name}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            job()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(*args) on the thread and return its result (or raise its error).

        The wait is shielded: a batch, once handed to the GPU, completes and its
        results are delivered even if the task that submitted it is cancelled.
        """
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        box: list[outcome.Outcome[T]] = []

        def job() -> None:
            box.append(outcome.capture(fn, *args))
            # The run may have ended while the job ran; then nobody is waiting.
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        self._jobs.put(job)
        with trio.CancelScope(shield=True):
            await done.wait()
        return box[0].unwrap()

    def close(self) -> None:
        self._jobs.put(None)
