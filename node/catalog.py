"""The operator's cluster data: the catalog of models (an ORMap of specs) and
their replica targets (an LWWMap), CRDTs every node holds and merges.

A write takes a timestamp from the gossip core's hybrid logical clock and the
process's replica id (unique per process lifetime), is refused while this
node's clock is beyond the bound from its peers' (a fast clock would win
every last-writer-wins register for as long as it is fast), is saved before
it is sent (a crash cannot lose a dot that peers already hold), and answers
the value that holds after it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from crdt import LWWMap, LWWRegister, ORMap
from gossip.core import GossipNode
from gossip.status import replica_id

from .errors import ClockUnhealthy, NotSaved
from .store import NodeStore

CATALOG, REPLICAS = "catalog", "replicas"


class OperatorData:
    def __init__(
        self,
        node: Callable[[], GossipNode],
        kick: Callable[[], None],
        store: NodeStore,
    ) -> None:
        self._node, self._kick, self.store = node, kick, store
        self.dirty = False  # a peer's change awaits saving

    def register(self, node: GossipNode) -> None:
        """Give the core the CRDTs, with what the data dir holds."""
        catalog, replicas = ORMap(LWWRegister), LWWMap()
        saved = self.store.cluster_state()
        if saved is not None:
            catalog.merge(saved[0])
            replicas.merge(saved[1])
        node.register_crdt(CATALOG, catalog)
        node.register_crdt(REPLICAS, replicas)

    def catalog(self) -> dict[str, Any]:
        value: dict[str, Any] = self._node().crdt(CATALOG).value
        return value

    def targets(self) -> dict[str, Any]:
        value: dict[str, Any] = self._node().crdt(REPLICAS).value
        return value

    def save(self) -> None:
        node = self._node()
        self.dirty = False
        self.store.save_cluster_state(node.crdt(CATALOG), node.crdt(REPLICAS))

    def check_clock(self, now: float) -> None:
        node = self._node()
        if not node.clock_healthy(now):
            rep = node.clock_report(now)
            raise ClockUnhealthy(
                f"this node's clock is {rep['offset_s']:+.3f} s from its peers' "
                f"(limit {rep['max_offset_s']:g} s): fix its time (NTP) and retry, "
                "or write through another node"
            )

    def write(self, name: str, mutate: Callable[[Any], Any], now: float) -> Any:
        """Mutate a copy, save it, and only then apply and send the delta: a
        write that cannot be saved is refused (NotSaved) and changes nothing, and
        a crash cannot lose a dot that peers already hold. The copy's new dot is
        reissued by the next write, as nobody has seen it."""
        node = self._node()
        staged = node.crdt(name).copy()
        delta = mutate(staged)
        catalog = staged if name == CATALOG else node.crdt(CATALOG)
        replicas = staged if name == REPLICAS else node.crdt(REPLICAS)
        try:
            self.store.save_cluster_state(catalog, replicas)
        except OSError as e:
            raise NotSaved(
                f"this node could not save the write to its data dir ({e}): nothing was "
                "applied; fix the disk or write through another node"
            ) from e
        self.dirty = False  # what peers changed was saved with it
        node.update_crdt(name, delta, now)
        self._kick()
        return delta

    def _rid(self) -> str:
        node = self._node()
        return replica_id(node.name, node.generation)

    def put(self, model: str, spec: dict[str, Any], now: float) -> Any:
        """Write a catalog entry; returns the spec that holds after it."""
        self.check_clock(now)
        node, rid = self._node(), self._rid()
        ts = node.timestamp(now)

        def mutate(catalog: Any) -> Any:
            assert isinstance(catalog, ORMap)
            return catalog.update(rid, model, lambda reg: reg.set(rid, spec, ts))

        self.write(CATALOG, mutate, now)
        return self.catalog().get(model)

    def delete(self, model: str, now: float) -> None:
        rid = self._rid()

        def mutate(catalog: Any) -> Any:
            assert isinstance(catalog, ORMap)
            return catalog.remove(rid, model)

        self.write(CATALOG, mutate, now)

    def set_target(self, model: str, replicas: int, now: float) -> Any:
        """Write a replica target; returns the target that holds after it."""
        self.check_clock(now)
        node, rid = self._node(), self._rid()
        ts = node.timestamp(now)

        def mutate(targets: Any) -> Any:
            assert isinstance(targets, LWWMap)
            return targets.set(rid, model, replicas, ts)

        self.write(REPLICAS, mutate, now)
        return self.targets().get(model)
