"""A Hypothesis state machine over the simulated cluster: the project's
strongest test. Any mix of

- operator writes (catalog add and remove, replica targets) from any node,
  through the daemon's own code (node.catalog.OperatorData: HLC timestamp,
  name@generation replica id, clock check, saved before sent) and record
  updates;
- crashes, and restarts that keep the data dir (generation, CRDTs and the
  members snapshot come back; the snapshot is knocked on) or lose it;
- loss, duplication, delay, partitions (any sides, one-way too), pauses, and
  clocks that differ per node and drift (never reset before checking);

then heal and quiesce, and:

1. no member removed as dead comes back in the same generation (each step);
2. each write's own node holds its value right after it (the HLC puts a local
   write above everything merged), and its data dir covers it when it is
   acknowledged;
3. every group of live nodes that can find each other (tests/sim/oracle.py)
   converges: each sees each other alive, equal records, and CRDTs equal to
   the join of what the group held when the faults stopped;
4. once every stopped node is restarted from its data dir, every replica's
   CRDTs equal the join of the surviving acknowledged writes: none lost,
   nothing removed come back.

Every failure prints the seed. CI runs 200 examples (`ci` profile; the
`thorough` profile and bench/stateful_search.py run 10,000 and more).
"""

from __future__ import annotations

import os

from hypothesis import event, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from crdt import CRDT
from gossip.config import GossipConfig
from node.errors import ClockUnhealthy
from sim.datadir import DataDirs
from sim.network import LinkModel, SimNetwork

from .oracle import (
    CRDT_NAMES,
    Ledger,
    components,
    covers,
    crdt_values,
    group_converged,
    join_of,
)

NAMES = [f"n{i}" for i in range(6)]
#: Each daemon's --join, fixed as in a config file: n0 is the first node.
SEEDS = {"n0": [], "n1": ["n0"], **{n: ["n0", "n1"] for n in NAMES[2:]}}
MODELS = ["m0", "m1", "m2"]
CONFIG = GossipConfig(dead_grace=5.0, key_gc_grace=3.0)
#: Quiescence after heal: detection, removal (dead_grace), knocks on the
#: removed (every 1 s), a timestamp up to 8 s ahead refused for 3 s, pauses.
SETTLE_S = 90.0


def spec(model: str, batch: int) -> dict[str, object]:
    return {"name": model, "source": "builtin:mlp", "max_batch_size": batch}


class ClusterMachine(RuleBasedStateMachine):
    live = Bundle("live")
    down = Bundle("down")

    @initialize(
        target=live,
        seed=st.integers(0, 2**32 - 1),
        first=st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(MODELS)), max_size=3),
    )
    def start(self, seed: int, first: list[tuple[str, str]]) -> object:
        self.seed = seed
        note(f"seed={seed}")
        self.net = SimNetwork(seed, link=LinkModel(latency=0.002, jitter=0.002), config=CONFIG)
        self.ledger = Ledger()
        self.dirs = DataDirs(self.net, SEEDS, on_write=self._acknowledged)
        for n in NAMES:
            self.dirs.start(n)
        self.dirs.run_for(3)
        self.records: dict[tuple[str, str], object] = {}
        for writer, model in first:  # most runs start with a catalog
            self.dirs.operator(writer).put(model, spec(model, 8), self.net.local_time(writer))
        return multiple(*NAMES)

    def _acknowledged(self, node: str, crdt: str, delta: object) -> None:
        # Saved before sent: the data dir covers the write when it is acknowledged.
        disk = self.dirs.disk_crdts(node)
        assert crdt in disk and covers(disk[crdt], delta), (
            f"seed={self.seed}: {node}'s {crdt} write was acknowledged before it was saved"
        )
        self.ledger.add(node, crdt, delta)  # type: ignore[arg-type]

    def _max_ts(self, name: str) -> int:
        node = self.net.nodes[name].node
        return max(node.crdt(c).max_timestamp() for c in CRDT_NAMES)

    def _loss(self, what: str) -> None:
        lost = self.ledger.after_loss(self.net, self.dirs)
        if lost:
            event("acknowledged writes lost with every copy")
            note(f"{lost} write(s) held nowhere after {what}")

    # -- operator writes ---------------------------------------------------------

    @rule(writer=live, model=st.sampled_from(MODELS), batch=st.integers(1, 64))
    def catalog_put(self, writer: str, model: str, batch: int) -> None:
        before = self._max_ts(writer)
        try:
            held = self.dirs.operator(writer).put(
                model, spec(model, batch), self.net.local_time(writer)
            )
        except ClockUnhealthy:
            event("write refused: clock beyond the bound")
            return
        assert held == spec(model, batch), f"seed={self.seed}: {writer}'s own put lost locally"
        assert self._max_ts(writer) > before, f"seed={self.seed}: {writer}'s HLC went back"

    def _holders(self) -> list[str]:
        return [n for n in self.dirs.live() if self.dirs.operator(n).catalog()]

    @precondition(lambda self: bool(self._holders()))
    @rule(data=st.data())
    def catalog_remove(self, data: st.DataObject) -> None:
        writer = data.draw(st.sampled_from(self._holders()), label="writer")
        op = self.dirs.operator(writer)
        model = data.draw(st.sampled_from(sorted(op.catalog())), label="model")
        op.delete(model, self.net.local_time(writer))
        assert model not in op.catalog(), f"seed={self.seed}: {writer} still lists {model}"

    @precondition(lambda self: bool(self._holders()))
    @rule(data=st.data(), replicas=st.integers(0, 6))
    def set_target(self, data: st.DataObject, replicas: int) -> None:
        writer = data.draw(st.sampled_from(self._holders()), label="writer")
        op = self.dirs.operator(writer)
        model = data.draw(st.sampled_from(sorted(op.catalog())), label="model")
        before = self._max_ts(writer)
        try:
            held = op.set_target(model, replicas, self.net.local_time(writer))
        except ClockUnhealthy:
            event("write refused: clock beyond the bound")
            return
        assert held == replicas, f"seed={self.seed}: {writer}'s own target lost locally"
        assert self._max_ts(writer) > before, f"seed={self.seed}: {writer}'s HLC went back"

    @rule(writer=live, value=st.integers(0, 99), key=st.sampled_from(["a", "b"]))
    def record_update(self, writer: str, value: int, key: str) -> None:
        sn = self.net.nodes[writer]
        sn.node.set_key(key, value, self.net.local_time(writer))
        self.net.flush(sn)
        self.records[(writer, key)] = value

    # -- processes ---------------------------------------------------------------

    @precondition(lambda self: len(self.dirs.procs) > 1)
    @rule(target=down, name=consumes(live))
    def crash(self, name: str) -> str:
        self.dirs.crash(name)
        self.records = {k: v for k, v in self.records.items() if k[0] != name}
        self._loss(f"{name}'s crash")
        return name

    @rule(target=live, name=consumes(down))
    def restart_with_data_dir(self, name: str) -> str:
        self.dirs.start(name, keep_disk=True)
        return name

    @rule(target=live, name=consumes(down))
    def restart_with_data_dir_lost(self, name: str) -> str:
        self.dirs.start(name, keep_disk=False)
        self._loss(f"{name}'s lost data dir")
        return name

    @rule(name=live, seconds=st.floats(0.1, 10))
    def pause(self, name: str, seconds: float) -> None:
        self.net.pause(name, seconds)

    # -- the network and the clocks -------------------------------------------------

    @rule(loss=st.floats(0, 0.4), duplicate=st.floats(0, 0.3), ms=st.floats(0, 80))
    def link(self, loss: float, duplicate: float, ms: float) -> None:
        link = self.net.link
        link.loss, link.duplicate = loss, duplicate
        link.latency, link.jitter = ms / 1000, ms / 2000

    @rule(side=st.sets(st.sampled_from(NAMES), min_size=1, max_size=5), oneway=st.booleans())
    def partition(self, side: set[str], oneway: bool) -> None:
        for a in side:
            for b in set(NAMES) - side:
                self.net.grudges.add((a, b))
                if not oneway:
                    self.net.grudges.add((b, a))

    @rule()
    def heal(self) -> None:
        self.net.heal()

    @rule(name=live, offset=st.floats(-8, 8), drift=st.floats(-0.02, 0.02))
    def skew(self, name: str, offset: float, drift: float) -> None:
        # Beyond max_clock_offset (5 s) too: writes there are refused, and its
        # timestamps are refused by peers until their clocks catch up.
        self.net.set_clock(name, offset, drift)

    @rule(seconds=st.floats(0.05, 12))
    def advance(self, seconds: float) -> None:
        self.dirs.run_for(seconds)

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def no_resurrection(self) -> None:
        # A member removed after death may come back only as a new generation.
        if not hasattr(self, "dirs"):
            return
        for n in self.dirs.live():
            node = self.net.nodes[n].node
            for name, (gen, _inc, _at) in node.state.tombstones.items():
                m = node.members.get(name)
                assert m is None or m.generation > gen, f"seed={self.seed}: {name} resurrected"

    # -- heal, quiesce, check ------------------------------------------------------

    def teardown(self) -> None:
        if not hasattr(self, "dirs"):
            return
        net, dirs = self.net, self.dirs
        net.heal()
        net.link.loss = net.link.duplicate = 0.0
        net.link.latency, net.link.jitter = 0.002, 0.002
        # Clocks stay as they are: skew and drift are part of what must converge.
        groups = components(net, dirs, SETTLE_S)
        event(f"groups after heal: {len(groups)}")
        note(f"groups that can find each other: {[sorted(g) for g in groups]}")
        want = {
            frozenset(g): {
                c: join_of([net.nodes[n].node.crdt(c) for n in g], c) for c in CRDT_NAMES
            }
            for g in groups
        }

        def settled() -> bool:
            for g in groups:
                held = want[frozenset(g)]
                if not group_converged(net, g):
                    return False
                if any(net.nodes[n].node.crdt(c) != held[c] for n in g for c in CRDT_NAMES):
                    return False
            return True

        ok = net.run_until_true(settled, SETTLE_S, 0.25)
        assert ok, f"seed={self.seed}: {self._why(groups, want)}"
        for (owner, key), value in self.records.items():
            group = next(g for g in groups if owner in g)
            for n in group:
                rec = net.nodes[n].node.record(owner)
                got = None if rec is None else rec.get(key)
                want_s = f"{owner}.{key}={value!r}"
                assert got == value, f"seed={self.seed}: {n} has {got!r}, want {want_s}"

        # Every data dir back in a process: every surviving write, nothing more.
        for name in sorted(set(NAMES) - set(dirs.procs)):
            dirs.start(name, keep_disk=True)
        everyone = components(net, dirs, SETTLE_S)
        if len(everyone) > 1:
            event("restarted from data dirs: still apart")
            return  # nothing joins them: checked per group above
        expected = {c: self.ledger.expected(c) for c in CRDT_NAMES}
        ok = net.run_until_true(
            lambda: (
                group_converged(net, set(NAMES))
                and all(net.nodes[n].node.crdt(c) == expected[c] for n in NAMES for c in CRDT_NAMES)
            ),
            SETTLE_S,
            0.25,
        )
        if not ok:
            vals = {n: crdt_values(net, n) for n in NAMES}
            want_vals = {c: expected[c].value for c in CRDT_NAMES}
            raise AssertionError(
                f"seed={self.seed}: after restarting every node from its data dir, "
                f"replicas are {vals}, the surviving writes make {want_vals}"
            )
        writes = self.ledger.writes
        event(f"acknowledged writes: {min(len(writes), 10)}{'+' if len(writes) >= 10 else ''}")

    def _why(self, groups: list[set[str]], want: dict[frozenset[str], dict[str, CRDT]]) -> str:
        net = self.net
        lines = ["live nodes that can find each other did not converge after heal"]
        for g in groups:
            for n in sorted(g):
                node = net.nodes[n].node
                statuses = {b: getattr(net.status_of(n, b), "name", None) for b in sorted(g)}
                lines.append(
                    f"  {n} gen={node.generation} sees {statuses} crdts={crdt_values(net, n)}"
                )
            held = {c: v.value for c, v in want[frozenset(g)].items()}
            lines.append(f"  want {held}")
        return "\n".join(lines)


# The profile's example count (ci: 200, thorough: 10,000); RUMOR_STATEFUL_EXAMPLES
# and RUMOR_STATEFUL_STEPS override it (bench/stateful_search.py).
ClusterMachine.TestCase.settings = settings(
    settings.default,
    max_examples=int(os.environ.get("RUMOR_STATEFUL_EXAMPLES", settings.default.max_examples)),
    stateful_step_count=int(os.environ.get("RUMOR_STATEFUL_STEPS", "30")),
)
TestClusterMachine = ClusterMachine.TestCase
