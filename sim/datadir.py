"""What a rumor daemon keeps across restarts, for the simulator: its data dir
(generation, the operator's CRDTs, a snapshot of the members it knew) and its
operator writes, made in the daemon's order by the daemon's own code.

    dirs = DataDirs(net, seeds={"n0": [], "n1": ["n0"]})
    dirs.start("n0"); dirs.start("n1")
    dirs.operator("n1").put("m", spec, net.local_time("n1"))   # node.catalog.OperatorData
    dirs.crash("n1")
    dirs.start("n1", keep_disk=True)   # generation, CRDTs and snapshot from the disk
    dirs.run_for(10.0)                 # the net, with each daemon's once-per-interval loop

A disk is a `node.store.NodeStore` whose files are bytes in memory, so the
generation, the CRDT state (msgpack + the crdt codec) and the members
snapshot go through the same reading and writing code as on a real disk. A
lost disk is a new, empty one. What runs around the gossip core follows
`node.daemon.Daemon`: the generation rule at start (`next_generation`), the
operator data registered before the join, the snapshot's members knocked on
(`join(remembered=...)`), and once per gossip interval the loop that saves
remote CRDT changes and the members snapshot (node.store.MemberSnapshots).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crdt import CRDT
from gossip.core import EventType, GossipNode
from gossip.status import next_generation
from gossip.transport import fmt_addr, parse_hostport
from node.catalog import CATALOG, REPLICAS, OperatorData
from node.store import MemberSnapshots, NodeStore

from .network import SIM_EPOCH, SimNetwork, drop_in_flight

#: (node, CRDT name, delta) for every operator write, as it is acknowledged.
WriteHook = Callable[[str, str, CRDT], None]


class MemoryStore(NodeStore):
    """A data dir whose files are bytes in memory (a simulated disk)."""

    def __init__(self, label: str = "sim") -> None:
        super().__init__(None)
        self.dir = Path("/nonexistent/sim") / label  # never touched: files live in memory
        self.label = label
        self.files: dict[str, bytes] = {}
        self.writes = 0

    def _read(self, name: str) -> bytes | None:
        return self.files.get(name)

    def _write(self, name: str, data: bytes) -> None:
        self.files[name] = bytes(data)
        self.writes += 1

    def __repr__(self) -> str:
        return f"MemoryStore({self.label!r}, {sorted(self.files)})"


class SimOperator(OperatorData):
    """The daemon's operator data, reporting each write's delta once it is
    saved and sent (node.catalog's order: mutate a copy, save, then apply and send)."""

    def __init__(self, name: str, dirs: DataDirs, store: NodeStore) -> None:
        net = dirs.net
        super().__init__(lambda: net.nodes[name].node, lambda: net.flush(net.nodes[name]), store)
        self._name, self._dirs = name, dirs

    def write(self, name: str, mutate: Callable[[Any], Any], now: float) -> Any:
        delta = super().write(name, mutate, now)
        if self._dirs.on_write is not None:
            self._dirs.on_write(self._name, name, delta.copy())
        return delta


@dataclass
class Process:
    """One daemon process: what it was started with and its loop's state."""

    operator: SimOperator
    started: float  # virtual time of the start
    seeds: list[str]
    remembered: list[str]  # names from the snapshot, knocked on while alone
    remember_until: float
    events_seen: int  # SimNode.events already handled (one history per name)
    snapshots: MemberSnapshots  # the daemon's own rule for when to write them


class DataDirs:
    """Daemons' data dirs and processes over a SimNetwork (one per node name)."""

    def __init__(
        self,
        net: SimNetwork,
        seeds: dict[str, list[str]],
        on_write: WriteHook | None = None,
        remember_for: float = 600.0,
    ) -> None:
        self.net = net
        self.seeds = seeds
        self.on_write = on_write
        self.remember_for = remember_for
        self.stores: dict[str, MemoryStore] = {}
        self.procs: dict[str, Process] = {}

    # -- processes ---------------------------------------------------------------

    def start(self, name: str, keep_disk: bool = True) -> GossipNode:
        """A new process for `name`, with its data dir kept or lost."""
        net = self.net
        assert name not in self.procs, f"{name} is running"
        if not keep_disk or name not in self.stores:
            self.stores[name] = MemoryStore(name)
        store = self.stores[name]
        wall = net.local_time(name) + SIM_EPOCH if name in net.nodes else net.now + SIM_EPOCH
        generation = next_generation(store.generation(), wall)
        store.save_generation(generation)
        node = net.add_node(name, generation=generation)
        operator = SimOperator(name, self, store)
        operator.register(node)  # the CRDTs, with what the disk holds, before any join
        remembered = [n for n, _ in store.members()]
        proc = Process(
            operator,
            started=net.now,
            seeds=list(self.seeds.get(name, [])),
            remembered=remembered,
            remember_until=net.now + self.remember_for,
            events_seen=len(net.nodes[name].events),
            snapshots=MemberSnapshots(store),
        )
        self.procs[name] = proc
        seeds = [net.nodes[s].addr for s in proc.seeds if s in net.nodes]
        addrs = [parse_hostport(a) for _, a in store.members()]
        node.join(seeds, net.local_time(name), remembered=addrs, remember_for=self.remember_for)
        net.flush(net.nodes[name])
        self.loop(name)  # the daemon's loop runs once at once
        return node

    def crash(self, name: str) -> None:
        """SIGKILL: the process, its memory and its packets still on the wire
        are gone; the disk stays."""
        self._save_generation(name)  # saved when it moved (Daemon._on_gossip_events)
        del self.procs[name]
        self.net.crash(name)
        drop_in_flight(self.net, name)

    def operator(self, name: str) -> OperatorData:
        return self.procs[name].operator

    def live(self) -> list[str]:
        return sorted(self.procs)

    # -- the daemon's loop ------------------------------------------------------------

    def run_for(self, seconds: float) -> None:
        """Run the network, each daemon's loop once per gossip interval."""
        net = self.net
        end = net.now + seconds
        step = net.config.interval
        while net.now < end:
            net.run_until(min(end, net.now + step))
            for name in self.live():
                self.loop(name)

    def loop(self, name: str) -> None:
        """One pass of Daemon._publish_loop's persistence: remote CRDT changes
        are saved, and the members snapshotted when MemberSnapshots says so."""
        proc, sn = self.procs[name], self.net.nodes[name]
        events = sn.events[proc.events_seen :]
        proc.events_seen = len(sn.events)
        self._save_generation(name)
        if any(ev.type == EventType.CRDT for _, ev in events):
            proc.operator.save()
        if proc.snapshots.due(self.net.now):
            known = [(n, fmt_addr(a), t) for n, a, t in sn.node.snapshot()]
            proc.snapshots.tick(self.net.now, known)

    def _save_generation(self, name: str) -> None:
        node, store = self.net.nodes[name].node, self.stores[name]
        if store.generation() != node.generation:
            store.save_generation(node.generation)

    # -- what each holds ----------------------------------------------------------------

    def disk_crdts(self, name: str) -> dict[str, CRDT]:
        """The operator CRDTs on `name`'s disk (empty ones if none saved)."""
        saved = self.stores[name].cluster_state() if name in self.stores else None
        if saved is None:
            return {}
        return {CATALOG: saved[0], REPLICAS: saved[1]}
