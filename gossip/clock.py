"""Clocks: this node's wall clock as the core sees it, a hybrid logical clock
fed by every timestamp it merges, and an estimate of how far its own clock is
from its peers'.

The core still reads no clock: the wall clock is the `now` it is given plus
`wall_offset` (set by the runtime from the OS, by the simulator from its
virtual skew). Every message carries the sender's wall clock in ms; each
node keeps the latest offset per peer and takes the median over live peers
heard from recently, and itself, as "where the cluster's clocks are". A node whose own
clock is more than `max_clock_offset` from that median is *clock-unhealthy*:
the application refuses LWW writes there (CockroachDB's max-offset rule), so
one fast clock cannot win every last-writer-wins register for as long as it
is fast. Independently, a remote timestamp more than `max_clock_offset` ahead
of our clock is refused (the whole message, counted as `dropped_clock_drift`)
and never adopted by our HLC.
"""

from __future__ import annotations

import statistics
from typing import Any

from crdt import CRDT, HLC, ClockDriftError, hlc_wall_ms

from .base import NodeBase
from .errors import RemoteProtocolError
from .wire import Message

#: Peer clock samples older than this are not used.
_SAMPLE_TTL = 30.0


class Clocks(NodeBase):
    def wall(self, now: float) -> float:
        """This node's wall clock, seconds since the epoch, at core time `now`."""
        return now + self.wall_offset

    def timestamp(self, now: float) -> int:
        """A fresh HLC timestamp for a local write, above every one merged here."""
        return self.hlc.now(self.wall(now))

    def witness_local(self, value: CRDT) -> None:
        """Adopt the timestamps of state we wrote ourselves (restored from disk):
        later local writes must sort after them, wherever the clock is now."""
        ts = value.max_timestamp()
        if ts > self.hlc.last:
            self.hlc = HLC(self.config.max_clock_offset, last=ts)

    def _note_peer_clock(self, msg: Message, now: float) -> None:
        if msg.wall_ms:
            self._peer_clocks[msg.sender] = (msg.wall_ms / 1000 - self.wall(now), now)

    def clock_offset(self, now: float) -> tuple[float | None, int]:
        """(how far our clock is from the median of our peers', in seconds,
        positive when ours is ahead; None without samples), and the sample count."""
        fresh = [
            off
            for name, (off, at) in self._peer_clocks.items()
            if now - at <= _SAMPLE_TTL and name in self.table.live
        ]
        if len(self._peer_clocks) > 2 * len(self.members) + 64:
            self._peer_clocks = {
                n: s for n, s in self._peer_clocks.items() if now - s[1] <= _SAMPLE_TTL
            }
        if not fresh:
            return None, 0
        # Our own clock is one vote (offset 0): with three or more nodes the
        # majority decides who is off; with two, neither can tell, and both
        # report half the gap (refusing writes then is the safe side).
        return -statistics.median([0.0, *fresh]), len(fresh)

    def clock_healthy(self, now: float) -> bool:
        offset, _ = self.clock_offset(now)
        return offset is None or abs(offset) <= self.config.max_clock_offset

    def clock_report(self, now: float) -> dict[str, Any]:
        offset, peers = self.clock_offset(now)
        return {
            "offset_s": None if offset is None else round(offset, 3),
            "peers": peers,
            "max_offset_s": self.config.max_clock_offset,
            "healthy": offset is None or abs(offset) <= self.config.max_clock_offset,
        }

    def _check_timestamps(self, decoded: list[tuple[str, CRDT]], now: float) -> None:
        """Part of validation: a timestamp too far ahead of our clock drops the message."""
        limit = (self.wall(now) + self.config.max_clock_offset) * 1000
        for name, value in decoded:
            ts = value.max_timestamp()
            if ts and hlc_wall_ms(ts) > limit:
                ahead = hlc_wall_ms(ts) / 1000 - self.wall(now)
                raise RemoteProtocolError(
                    "clock_drift", f"CRDT {name!r} holds a timestamp {ahead:.3f} s ahead"
                )

    def _witness(self, value: CRDT, now: float) -> None:
        """Feed a merged value's timestamps to our HLC."""
        ts = value.max_timestamp()
        if ts > self.hlc.last:
            try:
                self.hlc.update(ts, self.wall(now))
            except ClockDriftError:  # checked on receipt; our clock moved meanwhile
                self.counters["clock_drift_late"] += 1
