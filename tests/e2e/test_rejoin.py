"""Issue #21's rejoin schedule on real daemons: the seed dies while the other
nodes restart, and they find each other again from their data dirs' members
snapshot (Serf's -snapshot and -rejoin), since their only seed is gone.

Gossip ports are fixed, so a restarted node is where its peers remember it.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from node.localcluster import LocalCluster
from node.store import SNAPSHOT_EVERY


def free_port() -> int:
    """A port free for both UDP and TCP on loopback (gossip uses both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP")


def remembered(c: LocalCluster, name: str) -> set[str]:
    path = c.workdir / name / "members.json"
    try:
        return {m[0] for m in json.loads(path.read_text())}
    except (OSError, ValueError):
        return set()


def test_restarted_nodes_rejoin_each_other_when_their_seed_is_gone(tmp_path: Path) -> None:
    ports = {n: free_port() for n in ("seed", "b", "c")}

    def gossip(name: str) -> list[str]:
        return ["--gossip", f"127.0.0.1:{ports[name]}"]

    with LocalCluster(tmp_path) as c:
        c.start("seed", extra=gossip("seed"))
        c.start("b", join=["seed"], extra=gossip("b"))
        c.start("c", join=["seed"], extra=gossip("c"))
        for n in ("seed", "b", "c"):
            c.wait_for(lambda n=n: c.alive_members(n) == {"seed", "b", "c"}, 30, f"{n} sees all")
        # The snapshot is written at most every SNAPSHOT_EVERY s: wait for it,
        # with ample room (the daemon's first check, at start, found no one).
        for n in ("b", "c"):
            c.wait_for(
                lambda n=n: remembered(c, n) == {"seed", "b", "c"} - {n},
                3 * SNAPSHOT_EVERY + 30,
                f"{n}'s members snapshot",
            )
        seed_addr = c.nodes["seed"].gossip
        c.kill("b")
        c.kill("c")
        c.kill("seed")  # the only seed is gone for good
        c.start("b", join=[seed_addr], extra=gossip("b"))
        c.start("c", join=[seed_addr], extra=gossip("c"))
        took = c.wait_for(
            lambda: "c" in c.alive_members("b") and "b" in c.alive_members("c"),
            60,
            "b and c to find each other from their snapshots",
        )
        print(f"b and c rejoined {took:.2f} s after the second restart")
        generations = {m["name"]: m["generation"] for m in c.view("b")["members"]}
        assert generations["c"] == c.member("c", "c")["generation"]  # the new process
