"""Regressions found by the stateful search (tests/sim/test_stateful.py),
replayed step by step.

1. Restarts that forgot who they knew. Seed 0, six nodes, no time passing
   between steps: crash n5, restart n5, crash n0, restart n0, crash n0, crash
   n4, crash n1, crash n2, restart n4, crash n3. Each restart joined the first
   two live nodes, which then died before answering; after heal, n4 and n5,
   the two left, each knew only itself for the whole minute, though they knew
   each other before their restarts. A node now snapshots the members it knows
   to its data dir and, after a restart, knocks on them as on its seeds (Serf's
   -snapshot and -rejoin).
2. A removed member's address replaced by the asker's. Seed 0: crash n0 and
   n5; 4.7 s later crash n3 and restart it with its data dir lost; 9.8 s later
   crash n1 and n4, then n2, restart n2 and n5 with data dirs lost. n3 had
   asked n1 about n0 and n5 (by then removed) and was told "dead" with its own
   address as theirs, so it knocked on itself and never found the new n5
   (gossip/sync.py answered a SYN's tombstoned entry with the asker's address).
"""

from __future__ import annotations

from gossip.config import GossipConfig
from gossip.wire import Status
from node.store import SNAPSHOT_EVERY
from sim.datadir import DataDirs
from sim.network import LinkModel, SimNetwork

NAMES = [f"n{i}" for i in range(6)]
CONFIG = GossipConfig(dead_grace=5.0, key_gc_grace=3.0)


def six_nodes(seeds: dict[str, list[str]], up_for: float) -> tuple[SimNetwork, DataDirs]:
    net = SimNetwork(0, link=LinkModel(latency=0.002, jitter=0.002), config=CONFIG)
    dirs = DataDirs(net, seeds)
    for n in NAMES:
        dirs.start(n)
    dirs.run_for(up_for)
    return net, dirs


def sees_alive(net: SimNetwork, a: str, b: str) -> bool:
    return net.status_of(a, b) == Status.ALIVE


def replay_first_schedule(dirs: DataDirs, keep_disk: bool) -> None:
    def restart(name: str, join: list[str]) -> None:
        dirs.seeds[name] = join  # what the original run joined: the first two live nodes
        dirs.start(name, keep_disk=keep_disk)

    dirs.crash("n5")
    restart("n5", ["n0", "n1"])
    dirs.crash("n0")
    restart("n0", ["n1"])
    for n in ("n0", "n4", "n1", "n2"):
        dirs.crash(n)
    restart("n4", ["n3"])
    dirs.crash("n3")
    assert dirs.live() == ["n4", "n5"]
    dirs.net.heal()


def n4_and_n5_find_each_other(net: SimNetwork) -> bool:
    return net.run_until_true(
        lambda: sees_alive(net, "n4", "n5") and sees_alive(net, "n5", "n4"), 60, 0.05
    )


SEEDS = {"n0": [], **{n: ["n0"] for n in NAMES[1:]}}


def test_restarts_rejoin_the_members_their_data_dir_remembers() -> None:
    # Up long enough for every daemon to have snapshotted its members once.
    net, dirs = six_nodes(SEEDS, SNAPSHOT_EVERY + 2)
    for n in NAMES:
        assert {m for m, _ in dirs.stores[n].members()} == set(NAMES) - {n}
    replay_first_schedule(dirs, keep_disk=True)
    assert n4_and_n5_find_each_other(net), "n4 and n5 did not rejoin from their snapshots"


def test_without_a_data_dir_the_same_schedule_leaves_them_apart() -> None:
    # Nothing tells them of each other: the trap the snapshot closes.
    net, dirs = six_nodes(SEEDS, SNAPSHOT_EVERY + 2)
    replay_first_schedule(dirs, keep_disk=False)
    assert not net.run_until_true(lambda: sees_alive(net, "n4", "n5"), 60, 0.5)


def test_the_first_schedule_as_found_converges_with_data_dirs() -> None:
    # As the search found it: 3 s after the cluster formed, no time between steps.
    net, dirs = six_nodes(SEEDS, 3)
    replay_first_schedule(dirs, keep_disk=True)
    assert n4_and_n5_find_each_other(net)


def test_a_dead_members_rumor_keeps_its_own_address() -> None:
    seeds = {"n0": [], "n1": ["n0"], **{n: ["n0", "n1"] for n in NAMES[2:]}}
    net, dirs = six_nodes(seeds, 3)
    dirs.crash("n0")
    dirs.crash("n5")
    dirs.run_for(2.5265784917991922)
    dirs.run_for(2.1300607820554105)
    dirs.crash("n3")
    dirs.start("n3", keep_disk=False)
    dirs.run_for(9.805537751532567)
    dirs.crash("n1")
    dirs.crash("n4")
    dirs.crash("n2")
    dirs.start("n2", keep_disk=False)
    dirs.start("n5", keep_disk=False)
    net.heal()
    # Whatever n3 was told, it holds n0 and n5 at their own addresses.
    for _ in range(40):
        net.run_for(0.5)
        node = net.nodes["n3"].node
        for name in ("n0", "n5"):
            m = node.members.get(name)
            if m is not None:
                assert m.addr == net.nodes[name].addr, f"n3 holds {name} at {m.addr}"
    live = ["n2", "n3", "n5"]
    assert net.run_until_true(
        lambda: all(sees_alive(net, a, b) for a in live for b in live), 60, 0.25
    ), "n3 never found the new n5"
