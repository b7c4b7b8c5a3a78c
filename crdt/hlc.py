"""Hybrid logical clock (Kulkarni et al., "Logical Physical Clocks", 2014).

A timestamp is one unsigned 64-bit int: milliseconds since the epoch in the high
48 bits and a logical counter in the low 16. Plain int comparison orders them,
they encode in 9 bytes of msgpack, and "max(a + 1, b)" is the whole update rule:
when the logical half overflows it carries into the millisecond half, which keeps
the clock monotonic at the price of running a millisecond ahead.

The clock never reads time itself: callers pass physical time in seconds.
"""

from __future__ import annotations

from .errors import ClockDriftError

LOGICAL_BITS = 16
_LOGICAL_MASK = (1 << LOGICAL_BITS) - 1


def hlc_pack(wall_ms: int, logical: int = 0) -> int:
    return (wall_ms << LOGICAL_BITS) | (logical & _LOGICAL_MASK)


def hlc_wall_ms(ts: int) -> int:
    return ts >> LOGICAL_BITS


def hlc_logical(ts: int) -> int:
    return ts & _LOGICAL_MASK


class HLC:
    """A hybrid logical clock for one replica.

    `max_drift_s` bounds how far a remote timestamp may run ahead of local
    physical time; a timestamp beyond it is rejected with `ClockDriftError`
    and never adopted, so one node with a broken clock cannot drag every
    other clock (and every LWW write) into the future.
    """

    __slots__ = ("_last", "max_drift_ms")

    def __init__(self, max_drift_s: float = 60.0, last: int = 0) -> None:
        if max_drift_s <= 0:
            raise ValueError("max_drift_s must be positive")
        self.max_drift_ms = int(max_drift_s * 1000)
        self._last = last

    @property
    def last(self) -> int:
        """The latest timestamp issued or observed."""
        return self._last

    def now(self, physical_s: float) -> int:
        """A new timestamp for a local event, greater than every earlier one."""
        pt = hlc_pack(int(physical_s * 1000))
        self._last = max(self._last + 1, pt)
        return self._last

    def update(self, remote: int, physical_s: float) -> int:
        """Observe a remote timestamp; returns the new local timestamp.

        Raises `ClockDriftError` (and leaves the clock unchanged) when `remote`
        is more than `max_drift_s` ahead of `physical_s`.
        """
        pt_ms = int(physical_s * 1000)
        if hlc_wall_ms(remote) - pt_ms > self.max_drift_ms:
            raise ClockDriftError(
                f"remote timestamp is {(hlc_wall_ms(remote) - pt_ms) / 1000:.3f}s ahead "
                f"of local time (limit {self.max_drift_ms / 1000:.3f}s)"
            )
        self._last = max(self._last + 1, hlc_pack(pt_ms), remote + 1)
        return self._last

    def __repr__(self) -> str:
        return f"HLC(last=({hlc_wall_ms(self._last)}, {hlc_logical(self._last)}))"
