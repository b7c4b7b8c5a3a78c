"""The gossip runtime's timer: one deadline, re-armed after every datagram,
that a task waits for.

An idle daemon's CPU is almost all wake-ups (issue #18): on this 2-core VM a
trio task woken by a readable descriptor costs about 170 µs of CPU, one woken
by a cancel scope's deadline about 260 µs (trio raises `Cancelled` through the
task and unwinds the scope). So on Linux the deadline is a timerfd (timerfd_create(2), reached
through ctypes: the standard library has it from Python 3.13 only), which
wakes the task as a readable descriptor does; elsewhere, or if the call
fails, a cancel scope's deadline does the same job.

Both take deadlines on trio's clock, which is CLOCK_MONOTONIC plus an offset
on Linux: the timerfd is armed with the time left, and `wait` returns only
once trio's clock has reached the deadline (a wake-up a few microseconds
early is re-armed for the rest, never taken as the deadline).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import os
import sys

import trio

log = logging.getLogger("rumor.gossip.transport")


class ScopeAlarm:
    """A deadline on trio's cancel scopes: portable."""

    def __init__(self) -> None:
        self.deadline = math.inf
        self._scope: trio.CancelScope | None = None

    def set(self, deadline: float) -> None:
        self.deadline = deadline
        if self._scope is not None:
            self._scope.deadline = deadline

    async def wait(self) -> None:
        """Return once trio's clock has reached the deadline (set may move it
        meanwhile, earlier or later). Always a checkpoint, as trio's own
        waits are: a deadline already passed must not starve other tasks."""
        await trio.lowlevel.checkpoint()
        while trio.current_time() < self.deadline:
            with trio.CancelScope(deadline=self.deadline) as scope:
                self._scope = scope
                await trio.sleep_forever()
            self._scope = None

    def close(self) -> None:
        pass


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC


class TimerFdAlarm:
    """A deadline on a Linux timerfd: the waiting task wakes as for a datagram."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._settime = libc.timerfd_settime
        self._settime.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(_Itimerspec),
            ctypes.c_void_p,
        ]
        create = libc.timerfd_create
        create.argtypes = [ctypes.c_int, ctypes.c_int]
        fd = create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_create: {os.strerror(err)}")
        self._fd: int = fd
        self._spec = _Itimerspec()
        self.deadline = math.inf

    def set(self, deadline: float) -> None:
        if deadline != self.deadline:
            self.deadline = deadline
            if self._fd >= 0:  # closed: the runtime stopped, a late kick is a no-op
                self._arm()

    def _arm(self) -> None:
        value = self._spec.it_value
        if math.isinf(self.deadline):
            value.tv_sec = value.tv_nsec = 0  # disarmed
        else:
            # At least 1 µs: an all-zero it_value would disarm it.
            left = max(self.deadline - trio.current_time(), 1e-6)
            sec = int(left)
            value.tv_sec, value.tv_nsec = sec, max(int((left - sec) * 1e9), 0)
            if value.tv_sec == 0 and value.tv_nsec == 0:
                value.tv_nsec = 1
        if self._settime(self._fd, 0, ctypes.byref(self._spec), None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_settime: {os.strerror(err)}")

    async def wait(self) -> None:
        """Return once trio's clock has reached the deadline (set may move it
        meanwhile, earlier or later). Always a checkpoint (see ScopeAlarm)."""
        while True:
            if trio.current_time() >= self.deadline:
                await trio.lowlevel.checkpoint()
                return
            await trio.lowlevel.wait_readable(self._fd)
            try:
                os.read(self._fd, 8)  # the expiration count; clears readability
            except BlockingIOError:
                continue  # re-armed after it fired: wait for the new time
            if trio.current_time() < self.deadline:
                self._arm()  # early by clock rounding: the rest

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def new_alarm() -> TimerFdAlarm | ScopeAlarm:
    """A timerfd alarm on Linux under trio's own clock, else (another clock,
    such as the tests' MockClock, or no timerfd) a cancel scope's."""
    clock = trio.lowlevel.current_clock()
    if sys.platform.startswith("linux") and type(clock).__name__ == "SystemClock":
        try:
            return TimerFdAlarm()
        except (OSError, AttributeError, TypeError) as e:
            log.debug("timerfd unavailable (%s): the timer uses cancel scopes", e)
    return ScopeAlarm()
