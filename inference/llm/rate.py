"""Tokens per second over a sliding window, fed the time (the core has no clock)."""

from __future__ import annotations

from collections import deque


class RateMeter:
    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()

    def observe(self, now: float, total: int) -> None:
        """Record a running total (e.g. tokens generated since start) at `now`."""
        self._samples.append((now, total))
        while len(self._samples) > 2 and now - self._samples[1][0] > self.window_s:
            self._samples.popleft()

    def rate(self, now: float) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, n0), (_t1, n1) = self._samples[0], self._samples[-1]
        # An idle engine's rate decays: divide by the time up to now, not to the last sample.
        span = max(now - t0, 1e-9)
        return (n1 - n0) / span if now - t0 <= 2 * self.window_s else 0.0
