"""Five real gossip nodes on 127.0.0.1, over UDP and TCP, with trio."""

from __future__ import annotations

import random
import sys
from collections.abc import Callable

import pytest
import trio

import gossip.transport
from gossip.alarm import ScopeAlarm, TimerFdAlarm
from gossip.config import GossipConfig
from gossip.crypto import Keyring
from gossip.errors import LocalProtocolError
from gossip.transport import GossipRuntime
from gossip.wire import Status

from .helpers import KEY

LINUX = sys.platform.startswith("linux")


async def wait_for(cond: Callable[[], bool], timeout: float) -> bool:
    with trio.move_on_after(timeout):
        while not cond():
            await trio.sleep(0.02)
        return True
    return False


@pytest.mark.parametrize("alarm", [ScopeAlarm, *([TimerFdAlarm] if LINUX else [])])
async def test_five_nodes_on_loopback(alarm: type, monkeypatch: pytest.MonkeyPatch) -> None:
    # The runtime's timer either way: a timerfd (Linux) or a cancel scope.
    monkeypatch.setattr(gossip.transport, "new_alarm", alarm)
    config = GossipConfig()
    async with trio.open_nursery() as nursery:
        runtimes: list[GossipRuntime] = []
        scopes: list[trio.CancelScope] = []
        for i in range(5):
            seeds = [runtimes[0].addr] if runtimes else []
            rt = GossipRuntime(
                f"n{i}",
                ("127.0.0.1", 0),
                seeds=seeds,
                config=config,
                keyring=KEY,
                seed=i,
                generation=1,
            )  # type: ignore[list-item]
            scope = trio.CancelScope()

            async def run(
                rt: GossipRuntime = rt,
                scope: trio.CancelScope = scope,
                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
            ) -> None:
                with scope:
                    await rt.run(task_status=task_status)

            await nursery.start(run)
            assert rt.addr is not None and rt.addr[1] != 0  # the OS picked a port
            assert type(rt._alarm) is alarm
            runtimes.append(rt)
            scopes.append(scope)

        def nodes() -> list:
            return [rt.node for rt in runtimes if rt.node is not None]

        # They converge: everyone sees everyone, and equal state.
        assert await wait_for(lambda: all(len(n.live_members()) == 5 for n in nodes()), 30)

        # One node's change reaches all the others (a 64 KB value goes over TCP).
        big = "w" * 65_536
        writer = runtimes[2].node
        assert writer is not None
        writer.set_key("manifest", big, trio.current_time())
        runtimes[2].kick()
        assert await wait_for(
            lambda: all(
                (r := n.record("n2")) is not None and r.get("manifest") == big for n in nodes()
            ),
            30,
        )
        assert await wait_for(lambda: len({n.state.hash for n in nodes()}) == 1, 30)

        # A node with the wrong key is refused.
        intruder = GossipRuntime(
            "intruder",
            ("127.0.0.1", 0),
            seeds=[runtimes[0].addr],
            keyring=Keyring.generate(random.Random(3)),
            generation=1,
        )
        await nursery.start(intruder.run)
        seed = runtimes[0].node
        assert seed is not None
        assert await wait_for(lambda: seed.counters["dropped_auth_failed"] > 0, 30)
        assert all("intruder" not in n.members for n in nodes())

        # A stopped node is declared dead by the others, within 3x the detector's
        # own bound: silence, a probe, the longest suspicion, a round's delay.
        c = config
        bound = (
            c.silence_periods * c.heartbeat_every * c.interval
            + c.probe_timeout
            + c.suspicion_max
            + c.interval
        )
        scopes[4].cancel()
        t0 = trio.current_time()
        assert await wait_for(
            lambda: all(n.members["n4"].status == Status.DEAD for n in nodes()[:4]), 6 * bound
        )
        took = trio.current_time() - t0
        print(f"declared dead by all in {took:.2f} s (bound {bound:.2f} s)")
        assert took < 3 * bound
        nursery.cancel_scope.cancel()


def test_refuses_public_bind_without_a_key() -> None:
    with pytest.raises(LocalProtocolError, match="--insecure"):
        GossipRuntime("n", ("0.0.0.0", 0))
    GossipRuntime("n", ("0.0.0.0", 0), insecure=True)  # explicitly allowed
