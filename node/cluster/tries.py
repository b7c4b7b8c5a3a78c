"""One request's tries, as a sans-IO state machine: the daemon's HTTP handler
and the simulator's router drive the same rules.

    tries = Tries(attempts=3)
    while (target := tries.next(choose)) is not None:
        ... send it; then one of:
        tries.busy()      # the replica said busy: try another
        tries.failed()    # unreachable, or a 5xx: try another
        tries.started()   # the first byte went to the client: no retry now
        tries.done(); break

A replica is tried at most once. The last try is `final`: it is admitted even
by a busy replica. After the first byte of an answer has reached the client
(a stream), nothing is retried: the client has seen part of an answer.
"""

from __future__ import annotations

import enum
from collections.abc import Callable


class TryState(enum.Enum):
    READY = "ready"  # may pick a target
    SENT = "sent"  # waiting for the target's answer
    STREAMING = "streaming"  # the answer's first byte reached the client
    DONE = "done"  # answered, or out of tries


#: Every legal move of the machine, stated once.
MOVES: dict[TryState, dict[str, TryState]] = {
    TryState.READY: {"next": TryState.SENT, "exhausted": TryState.DONE},
    TryState.SENT: {
        "busy": TryState.READY,
        "failed": TryState.READY,
        "started": TryState.STREAMING,
        "done": TryState.DONE,
    },
    TryState.STREAMING: {"done": TryState.DONE, "failed": TryState.DONE},
    TryState.DONE: {},
}


class TryError(Exception):
    """A move the machine does not allow (a bug in the caller)."""


class Tries:
    def __init__(self, attempts: int) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.attempts = attempts
        self.tried: set[str] = set()
        self.state = TryState.READY
        self.target: str | None = None
        self.busy_answers = 0
        self.failures = 0

    def _move(self, event: str) -> None:
        try:
            self.state = MOVES[self.state][event]
        except KeyError:
            raise TryError(f"{event!r} in state {self.state.value}") from None

    @property
    def final(self) -> bool:
        """The try in flight is the last one."""
        return len(self.tried) >= self.attempts

    def next(self, choose: Callable[[set[str]], str | None]) -> str | None:
        """The next target, from `choose(exclude)`; None when out of tries."""
        if self.state is not TryState.READY:
            raise TryError(f"next in state {self.state.value}")
        target = choose(self.tried) if len(self.tried) < self.attempts else None
        if target is None or target in self.tried:
            self._move("exhausted")
            return None
        self.tried.add(target)
        self.target = target
        self._move("next")
        return target

    def busy(self) -> None:
        self.busy_answers += 1
        self._move("busy")

    def failed(self) -> None:
        self.failures += 1
        self._move("failed")

    def started(self) -> None:
        self._move("started")

    def done(self) -> None:
        self._move("done")

    @property
    def retry_allowed(self) -> bool:
        return self.state is TryState.READY
