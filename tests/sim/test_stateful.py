"""A Hypothesis state machine over the simulator: any mix of updates and faults,
then heal and quiesce, and every live replica must be equal, with no dead node
resurrected. Every failure prints the seed that reproduces it."""

from __future__ import annotations

import os
import random

from hypothesis import note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from gossip.config import GossipConfig
from gossip.wire import Status
from sim.network import LinkModel, SimNetwork

NAMES = [f"n{i}" for i in range(6)]
KEY = None  # encryption is exercised elsewhere; this searches the protocol


class GossipMachine(RuleBasedStateMachine):
    @initialize(seed=st.integers(0, 2**32 - 1))
    def start(self, seed: int) -> None:
        self.seed = seed
        note(f"seed={seed}")
        self.net = SimNetwork(
            seed,
            link=LinkModel(latency=0.002, jitter=0.002),
            config=GossipConfig(dead_grace=5.0, key_gc_grace=3.0),
        )
        self.net.add_node(NAMES[0])
        for n in NAMES[1:]:
            self.net.add_node(n, join=[NAMES[0]])
        self.net.run_for(3)
        self.rng = random.Random(seed)
        self.expected: dict[tuple[str, str], object] = {}
        self.down: set[str] = set()
        self.removed: dict[str, int] = {}  # name -> generation that was declared gone

    def _live(self) -> list[str]:
        return [n for n in NAMES if n not in self.down]

    @rule(value=st.integers(0, 99), key=st.sampled_from(["a", "b"]), data=st.data())
    def update(self, value: int, key: str, data: st.DataObject) -> None:
        live = self._live()
        if not live:
            return
        name = data.draw(st.sampled_from(live))
        sn = self.net.nodes[name]
        sn.node.set_key(key, value, self.net._local(sn))
        self.net.flush(sn)
        self.expected[(name, key)] = value

    @rule(loss=st.floats(0, 0.4))
    def drop(self, loss: float) -> None:
        self.net.link.loss = loss

    @rule(p=st.floats(0, 0.3))
    def duplicate(self, p: float) -> None:
        self.net.link.duplicate = p

    @rule(ms=st.floats(0, 80))
    def delay(self, ms: float) -> None:
        self.net.link.latency = ms / 1000
        self.net.link.jitter = ms / 2000

    @rule(k=st.integers(1, 5), oneway=st.booleans())
    def partition(self, k: int, oneway: bool) -> None:
        side = set(NAMES[:k])
        for a in side:
            for b in set(NAMES) - side:
                self.net.grudges.add((a, b))
                if not oneway:
                    self.net.grudges.add((b, a))

    @rule()
    def heal(self) -> None:
        self.net.heal()

    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        live = self._live()
        if len(live) <= 2:
            return
        name = data.draw(st.sampled_from(live))
        self.net.crash(name)
        self.down.add(name)
        self.expected = {k: v for k, v in self.expected.items() if k[0] != name}

    @rule(data=st.data())
    def restart(self, data: st.DataObject) -> None:
        if not self.down:
            return
        name = data.draw(st.sampled_from(sorted(self.down)))
        self.down.discard(name)
        self.net.restart(name, join=self._live()[:2])

    @rule(offset=st.floats(-2, 2), data=st.data())
    def skew(self, offset: float, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(NAMES))
        if name not in self.down:
            self.net.set_clock(name, offset)

    @rule(seconds=st.floats(0.05, 8))
    def advance(self, seconds: float) -> None:
        self.net.run_for(seconds)

    @invariant()
    def no_resurrection(self) -> None:
        # A member removed after death may come back only as a new generation.
        for n in self._live():
            node = self.net.nodes[n].node
            for name, (gen, _inc, _at) in node.state.tombstones.items():
                m = node.members.get(name)
                assert m is None or m.generation > gen, f"seed={self.seed}: {name} resurrected"

    def teardown(self) -> None:
        if not hasattr(self, "net"):
            return
        net = self.net
        net.heal()
        net.link.loss = net.link.duplicate = 0.0
        net.link.latency, net.link.jitter = 0.002, 0.002
        for n in self._live():
            net.set_clock(n, 0.0)
        ok = net.run_until_true(
            lambda: (
                net.converged()
                and all(
                    net.status_of(a, b) == Status.ALIVE for a in self._live() for b in self._live()
                )
            ),
            60,
            0.25,
        )
        assert ok, f"seed={self.seed}: live replicas did not converge after heal"
        for (owner, key), value in self.expected.items():
            for n in self._live():
                rec = net.nodes[n].node.record(owner)
                assert rec is not None and rec.get(key) == value, (
                    f"seed={self.seed}: {n} has {owner}.{key}="
                    f"{None if rec is None else rec.get(key)!r}, want {value!r}"
                )


# CI runs 30 sequences; hunt harder with RUMOR_STATEFUL_EXAMPLES=500.
GossipMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("RUMOR_STATEFUL_EXAMPLES", "30")),
    stateful_step_count=20,
    deadline=None,
)
TestGossipMachine = GossipMachine.TestCase
