"""The gossip runtime's timer (gossip/alarm.py): a timerfd on Linux, a cancel
scope elsewhere; both must wake at the deadline, never before, and follow a
deadline moved while waiting."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from gossip.alarm import ScopeAlarm, TimerFdAlarm, new_alarm

KINDS = [ScopeAlarm] + ([TimerFdAlarm] if sys.platform.startswith("linux") else [])


@pytest.fixture(params=KINDS, ids=lambda k: k.__name__)
def alarm(request: pytest.FixtureRequest) -> Iterator[ScopeAlarm | TimerFdAlarm]:
    made: ScopeAlarm | TimerFdAlarm = request.param()
    yield made
    made.close()


async def test_wait_returns_at_the_deadline_not_before(alarm: ScopeAlarm | TimerFdAlarm) -> None:
    for delay in (0.0, 0.001, 0.03):
        deadline = trio.current_time() + delay
        alarm.set(deadline)
        await alarm.wait()
        assert trio.current_time() >= deadline


async def test_a_deadline_moved_earlier_while_waiting_wakes_it_earlier(
    alarm: ScopeAlarm | TimerFdAlarm,
) -> None:
    start = trio.current_time()
    alarm.set(start + 60)
    async with trio.open_nursery() as nursery:

        async def move() -> None:
            await trio.sleep(0.02)
            alarm.set(trio.current_time() + 0.02)

        nursery.start_soon(move)
        with trio.fail_after(10):  # 60 s if the move were missed
            await alarm.wait()
    assert trio.current_time() >= alarm.deadline


async def test_a_deadline_moved_later_while_waiting_is_waited_for(
    alarm: ScopeAlarm | TimerFdAlarm,
) -> None:
    start = trio.current_time()
    alarm.set(start + 0.02)
    async with trio.open_nursery() as nursery:

        async def move() -> None:
            await trio.sleep(0.005)
            alarm.set(start + 0.1)

        nursery.start_soon(move)
        await alarm.wait()
    assert trio.current_time() >= start + 0.1


async def test_an_infinite_deadline_never_wakes(alarm: ScopeAlarm | TimerFdAlarm) -> None:
    alarm.set(trio.current_time() + 0.01)
    alarm.set(math.inf)  # disarmed before it fired
    with trio.move_on_after(0.1) as scope:
        await alarm.wait()
    assert scope.cancelled_caught


async def test_the_timerfd_is_used_only_under_trios_own_clock() -> None:
    expected = TimerFdAlarm if sys.platform.startswith("linux") else ScopeAlarm
    made = new_alarm()
    try:
        assert type(made) is expected
    finally:
        made.close()


async def test_a_mock_clock_gets_the_cancel_scope_alarm(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A timerfd runs on the kernel's clock: under virtual time it would fire
    # at the wrong moment, so the runtime falls back to cancel scopes.
    made = new_alarm()
    assert type(made) is ScopeAlarm
    made.set(trio.current_time() + 3600)
    await made.wait()  # an hour of virtual time, at once
    assert trio.current_time() >= made.deadline


async def test_a_passed_deadline_still_lets_other_tasks_run(
    alarm: ScopeAlarm | TimerFdAlarm,
) -> None:
    # A loop that waits for a deadline already passed must yield each time, or
    # it starves every other task (a daemon could then not even shut down).
    alarm.set(trio.current_time() - 1)
    ran: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_append_soon, ran)
        for _ in range(10):
            await alarm.wait()
        assert ran == [1]  # ran during the waits, not after them


async def _append_soon(ran: list[int]) -> None:
    ran.append(1)


async def test_setting_a_closed_alarm_is_harmless(alarm: ScopeAlarm | TimerFdAlarm) -> None:
    # A kick after the runtime stopped (a daemon shutting down) re-arms it.
    alarm.close()
    alarm.set(trio.current_time() + 1)
    alarm.close()
