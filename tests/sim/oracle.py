"""What the simulated cluster must end up as, computed apart from the code
under test: the operator writes that must survive, and who can find whom.

`Ledger` keeps the delta of every acknowledged operator write. The places
that hold data are the live processes' memories and every data dir; a crash
empties a memory, a lost disk empties a data dir. After each such loss, a
write no place still covers (place ⊒ delta in the lattice order) is lost with
it; every other write must be in the final state, and nothing else may be:
after heal and quiescence, when every data dir is back in a live process,
each replica equals the join of the surviving writes' deltas. That one
equality says both "no acknowledged write lost" and "nothing removed comes
back" (a resurrected catalog entry would be above the join).

`components` says which live nodes can find each other from what they hold:
a member's address (alive, dead or removed and knocked on), and, while a node
knows no one else, its seeds and the members its snapshot remembered. Nodes
that hold nothing of each other (a lost data dir, seeds that are down)
cannot be asked to converge; every group that can, must.
"""

from __future__ import annotations

from dataclasses import dataclass

from crdt import CRDT, LWWMap, LWWRegister, ORMap
from gossip.wire import Status
from node.catalog import CATALOG, REPLICAS
from sim.datadir import DataDirs
from sim.network import SimNetwork

CRDT_NAMES = (CATALOG, REPLICAS)


def empty(name: str) -> CRDT:
    return ORMap(LWWRegister) if name == CATALOG else LWWMap()


def covers(place: CRDT, delta: CRDT) -> bool:
    """place ⊒ delta: joining the delta into the place changes nothing."""
    joined = place.copy()
    joined.merge(delta)
    return joined == place


@dataclass
class Write:
    node: str
    crdt: str
    delta: CRDT
    lost: bool = False


class Ledger:
    def __init__(self) -> None:
        self.writes: list[Write] = []

    def add(self, node: str, crdt: str, delta: CRDT) -> None:
        self.writes.append(Write(node, crdt, delta))

    def places(self, net: SimNetwork, dirs: DataDirs) -> list[dict[str, CRDT]]:
        held = [{c: net.nodes[n].node.crdt(c) for c in CRDT_NAMES} for n in dirs.live()]
        held += [dirs.disk_crdts(n) for n in sorted(dirs.stores)]
        return held

    def after_loss(self, net: SimNetwork, dirs: DataDirs) -> int:
        """Mark the writes no place covers any more; returns how many."""
        places = self.places(net, dirs)
        lost = 0
        for w in self.writes:
            if not w.lost and not any(w.crdt in p and covers(p[w.crdt], w.delta) for p in places):
                w.lost = True
                lost += 1
        return lost

    def expected(self, crdt: str) -> CRDT:
        out = empty(crdt)
        for w in self.writes:
            if w.crdt == crdt and not w.lost:
                out.merge(w.delta)
        return out


def join_of(states: list[CRDT], crdt: str) -> CRDT:
    out = empty(crdt)
    for s in states:
        out.merge(s)
    return out


def components(net: SimNetwork, dirs: DataDirs, horizon: float) -> list[set[str]]:
    """Groups of live nodes that hold the means to find each other for at
    least `horizon` more seconds (a remembered snapshot is knocked on for a
    limited time)."""
    live = dirs.live()
    edges: dict[str, set[str]] = {n: set() for n in live}
    for a in live:
        node = net.nodes[a].node
        proc = dirs.procs[a]
        # Members of any status are contacted (gossip, probes, knocks on the
        # dead); removed ones are knocked on while their tombstone lasts.
        known = set(node.members) | set(node.state.tombstones)
        if len(node.live_members()) <= 1:  # alone: it retries seeds and remembered
            known |= set(proc.seeds)
            if proc.remember_until > net.now + horizon:
                known |= set(proc.remembered)
        for b in known & set(live):
            if b != a:
                edges[a].add(b)
                edges[b].add(a)
    groups: list[set[str]] = []
    seen: set[str] = set()
    for start in live:
        if start in seen:
            continue
        group, todo = set(), [start]
        while todo:
            n = todo.pop()
            if n in group:
                continue
            group.add(n)
            todo.extend(edges[n] - group)
        seen |= group
        groups.append(group)
    return groups


def group_converged(net: SimNetwork, group: set[str]) -> bool:
    """Every member sees every other alive, with equal state."""
    nodes = [net.nodes[n].node for n in sorted(group)]
    if len({n.state.hash for n in nodes}) != 1:
        return False
    return all(net.status_of(a, b) == Status.ALIVE for a in group for b in group)


def crdt_values(net: SimNetwork, name: str) -> dict[str, object]:
    node = net.nodes[name].node
    return {c: node.crdt(c).value for c in CRDT_NAMES}
