"""sim.datadir, the simulated data dirs the stateful search relies on: what a
restart keeps and what it loses, as node/daemon.py does it."""

from __future__ import annotations

from gossip.config import GossipConfig
from node.store import SNAPSHOT_EVERY, SNAPSHOT_SOON
from sim.datadir import DataDirs
from sim.network import LinkModel, SimNetwork


def three(up_for: float) -> tuple[SimNetwork, DataDirs]:
    net = SimNetwork(5, link=LinkModel(latency=0.002), config=GossipConfig(dead_grace=5.0))
    dirs = DataDirs(net, {"a": [], "b": ["a"], "c": ["a"]})
    for n in ("a", "b", "c"):
        dirs.start(n)
    dirs.run_for(up_for)
    return net, dirs


def test_a_kept_data_dir_brings_back_generation_crdts_and_snapshot() -> None:
    net, dirs = three(SNAPSHOT_EVERY + 1)
    op = dirs.operator("b")
    op.put("m", {"name": "m", "source": "builtin:mlp"}, net.local_time("b"))
    op.set_target("m", 2, net.local_time("b"))
    dirs.run_for(1)
    gen = net.nodes["c"].node.generation
    assert dirs.operator("c").targets() == {"m": 2}  # c received it ...
    dirs.crash("c")
    assert dirs.disk_crdts("c")["replicas"].value == {"m": 2}  # ... and saved it
    assert {n for n, _ in dirs.stores["c"].members()} == {"a", "b"}
    node = dirs.start("c", keep_disk=True)
    assert node.generation > gen
    assert dirs.operator("c").catalog() == {"m": {"name": "m", "source": "builtin:mlp"}}
    assert sorted(dirs.procs["c"].remembered) == ["a", "b"]
    # Its next write sorts after what it restored (the HLC witnessed it).
    before = node.crdt("replicas").max_timestamp()
    dirs.operator("c").set_target("m", 3, net.local_time("c"))
    assert node.crdt("replicas").max_timestamp() > before


def test_a_lost_data_dir_starts_empty_and_remembers_no_one() -> None:
    net, dirs = three(SNAPSHOT_EVERY + 1)
    dirs.operator("a").put("m", {"name": "m", "source": "builtin:mlp"}, net.local_time("a"))
    dirs.run_for(1)
    dirs.crash("c")
    node = dirs.start("c", keep_disk=False)
    assert node.crdt("catalog").value == {} and dirs.procs["c"].remembered == []
    assert dirs.stores["c"].members() == []
    dirs.run_for(5)  # its seed gives it everything back
    assert dirs.operator("c").catalog() == dirs.operator("a").catalog()


def test_snapshots_follow_the_daemons_rule() -> None:
    # Members found are news: saved within about a second of finding them, long
    # before the 10 s that other changes wait.
    _net, dirs = three(2 * SNAPSHOT_SOON + 0.5)
    assert {n for n, _ in dirs.stores["a"].members()} == {"b", "c"}
