"""A deterministic discrete-event network that runs real `GossipNode`s.

No trio, no sleeping, no threads: a virtual clock and a heap of events. One
seed drives everything; each node gets its own `random.Random` derived from
it, and the network draws loss, duplication and latency from another, so the
same seed replays the same run (checked by `trace_hash`).

Faults: per-link latency and jitter, loss, duplication (and so reordering),
partitions as grudges (who refuses to hear whom; asymmetric allowed), crash
and restart with a new generation, pauses, and per-node clock skew.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gossip.config import GossipConfig
from gossip.core import Datagram, GossipEvent, GossipNode, StreamFrame
from gossip.crypto import Keyring
from gossip.wire import Addr


@dataclass
class LinkModel:
    latency: float = 0.001  # one-way seconds
    jitter: float = 0.0  # uniform extra delay in [0, jitter]
    loss: float = 0.0
    duplicate: float = 0.0


@dataclass
class HostModel:
    """CPU as a shared resource, for simulating many daemons on one machine (or
    slow nodes): every delivered message costs `per_message` seconds of CPU on
    one of `cores` cores, and a node handles one message at a time. Messages
    wait for a free core and for their node, as on a real, busy host."""

    cores: int = 2
    per_message: float = 0.0005


@dataclass
class SimNode:
    name: str
    addr: Addr
    node: GossipNode
    alive: bool = True
    paused_until: float = 0.0
    skew: float = 0.0  # this node's clock reads true time + skew + drift * (t - drift_since)
    drift: float = 0.0
    drift_since: float = 0.0
    egress_free_at: float = 0.0  # bandwidth cap: when the node's link is next idle
    busy_until: float = 0.0  # host model: when the node's process is next free
    events: list[tuple[float, GossipEvent]] = field(default_factory=list)
    next_tick: float = float("inf")


class SimNetwork:
    def __init__(
        self,
        seed: int,
        link: LinkModel | None = None,
        config: GossipConfig | None = None,
        keyring: Keyring | None = None,
        start: float = 1_000.0,
        bandwidth: float | None = None,
        host: HostModel | None = None,
    ) -> None:
        self.bandwidth = bandwidth  # bytes per second per node, None for unlimited
        self.host = host
        self._cores = [0.0] * host.cores if host else []  # a heap of core free times
        self.seed = seed
        self.link = link or LinkModel()
        self.config = config or GossipConfig()
        self.keyring = keyring
        self.now = start
        self._net_rng = random.Random(f"{seed}/net")
        self._heap: list[tuple[float, int, str, Any]] = []
        self._seq = 0
        self.nodes: dict[str, SimNode] = {}
        self.by_addr: dict[Addr, SimNode] = {}
        self.grudges: set[tuple[str, str]] = set()  # (receiver, sender): receiver refuses
        self._trace = hashlib.blake2b(digest_size=16)
        self.delivered = 0
        self.dropped = 0
        self.bytes_sent: dict[str, int] = {}
        self.messages_sent: dict[str, int] = {}
        self.on_deliver: Callable[[SimNode, Datagram | StreamFrame], None] | None = None

    # -- topology ------------------------------------------------------------

    def add_node(
        self,
        name: str,
        join: list[str] | None = None,
        generation: int = 1,
        config: GossipConfig | None = None,
        keyring: Keyring | str | None = "default",
    ) -> GossipNode:
        addr = self.nodes[name].addr if name in self.nodes else ("10.0.0.1", 7000 + len(self.nodes))
        kr = self.keyring if keyring == "default" else keyring
        assert not isinstance(kr, str)
        node = GossipNode(
            name,
            addr,
            rng=random.Random(f"{self.seed}/{name}/{generation}"),
            now=self.now,
            generation=generation,
            config=config or self.config,
            keyring=kr,
        )
        sn = SimNode(name, addr, node)
        if name in self.nodes:
            old = self.nodes[name]
            sn.skew, sn.drift, sn.drift_since = old.skew, old.drift, old.drift_since
            sn.events = old.events  # one history per name, across restarts
        self.nodes[name] = sn
        self.by_addr[addr] = sn
        if join:
            node.join([self.nodes[j].addr for j in join if j in self.nodes], self._local(sn))
        self._flush(sn)
        return node

    def crash(self, name: str) -> None:
        self.nodes[name].alive = False

    def restart(self, name: str, join: list[str]) -> GossipNode:
        old = self.nodes[name]
        return self.add_node(name, join=join, generation=old.node.generation + 1)

    def pause(self, name: str, duration: float) -> None:
        """The node's process stops (a GC or GPU stall): nothing in or out."""
        self.nodes[name].paused_until = self.now + duration
        self._schedule(self.now + duration, "wake", name)

    def partition(self, a: set[str], b: set[str]) -> None:
        for x in a:
            for y in b:
                self.grudges.add((x, y))
                self.grudges.add((y, x))

    def heal(self) -> None:
        self.grudges.clear()

    # -- the event loop ----------------------------------------------------------

    def _local(self, sn: SimNode) -> float:
        return self.now + sn.skew + sn.drift * (self.now - sn.drift_since)

    def set_clock(self, name: str, offset: float, drift: float = 0.0) -> None:
        """Skew a node's clock by `offset` seconds, drifting `drift` s per s from now."""
        sn = self.nodes[name]
        sn.skew = offset
        sn.drift, sn.drift_since = drift, self.now

    def _schedule(self, t: float, kind: str, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, payload))

    def _flush(self, sn: SimNode) -> None:
        """Collect a node's outgoing messages and reschedule its timer."""
        for out in sn.node.take_outgoing():
            self.bytes_sent[sn.name] = self.bytes_sent.get(sn.name, 0) + len(out.data)
            self.messages_sent[sn.name] = self.messages_sent.get(sn.name, 0) + 1
            self._transmit(sn, out)
        for ev in sn.node.take_events():
            sn.events.append((self.now, ev))
        deadline = sn.node.next_deadline() - (self._local(sn) - self.now)
        if deadline < sn.next_tick or sn.next_tick <= self.now:
            sn.next_tick = max(deadline, self.now)
            self._schedule(sn.next_tick, "tick", sn.name)

    def _transmit(self, sn: SimNode, out: Datagram | StreamFrame) -> None:
        link = self.link
        depart = self.now
        if self.bandwidth:
            # A per-node egress cap: packets queue behind each other on the link.
            depart = max(self.now, sn.egress_free_at)
            sn.egress_free_at = depart + len(out.data) / self.bandwidth
        if isinstance(out, StreamFrame):
            # TCP: reliable and ordered enough for one frame per connection.
            self._schedule(depart + 3 * link.latency, "frame", (sn.addr, out))
            return
        copies = 1
        if link.duplicate and self._net_rng.random() < link.duplicate:
            copies = 2
        for _ in range(copies):
            if link.loss and self._net_rng.random() < link.loss:
                self.dropped += 1
                continue
            delay = link.latency + (self._net_rng.random() * link.jitter if link.jitter else 0.0)
            self._schedule(depart + delay, "datagram", (sn.addr, out))

    def step(self) -> bool:
        if not self._heap:
            return False
        t, _, kind, payload = heapq.heappop(self._heap)
        self.now = max(self.now, t)
        if kind == "tick":
            sn = self.nodes.get(payload)
            if sn is None or not sn.alive or t != sn.next_tick:
                return True
            if self.now < sn.paused_until:
                sn.next_tick = sn.paused_until
                self._schedule(sn.paused_until, "tick", sn.name)
                return True
            sn.next_tick = float("inf")
            sn.node.tick(self._local(sn))
            self._flush(sn)
        elif kind == "wake":
            sn = self.nodes[payload]
            if sn.alive:
                sn.next_tick = self.now
                self._schedule(self.now, "tick", sn.name)
        else:  # "datagram" / "frame" arriving, or "handle-..." once the host model ran it
            src, out = payload
            dst = self.by_addr.get(out.dst)
            if dst is None or not dst.alive:
                return True
            sender = self.by_addr.get(src)
            if sender is not None and (dst.name, sender.name) in self.grudges:
                return True
            if self.host is not None and not kind.startswith("handle-"):
                # In the socket buffer: wait for the node and for a free core.
                start = max(self.now, heapq.heappop(self._cores), dst.busy_until)
                dst.busy_until = start + self.host.per_message
                heapq.heappush(self._cores, dst.busy_until)
                self._schedule(dst.busy_until, "handle-" + kind, payload)
                return True
            if self.now < dst.paused_until:
                # Queued in the socket buffer until the process resumes.
                self._schedule(dst.paused_until + 1e-6, kind, payload)
                return True
            self._trace.update(f"{self.now:.9f}|{src}|{out.dst}|".encode())
            self._trace.update(out.data[:64])
            self.delivered += 1
            if isinstance(out, StreamFrame):
                dst.node.receive_stream(out.data, src, self._local(dst))
            else:
                dst.node.receive_datagram(out.data, src, self._local(dst))
            if self.on_deliver is not None:
                self.on_deliver(dst, out)
            self._flush(dst)
        return True

    def run_until(self, t: float) -> None:
        while self._heap and self._heap[0][0] <= t:
            self.step()
        self.now = max(self.now, t)

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def run_until_true(
        self, cond: Callable[[], bool], limit: float, check_every: float = 0.01
    ) -> bool:
        end = self.now + limit
        while self.now < end:
            if cond():
                return True
            self.run_for(check_every)
        return cond()

    @property
    def trace_hash(self) -> str:
        return self._trace.hexdigest()

    # -- observation ---------------------------------------------------------

    def live(self) -> list[SimNode]:
        return [sn for sn in self.nodes.values() if sn.alive]

    def converged(self) -> bool:
        live = self.live()
        if not live:
            return True
        h = live[0].node.state.hash
        return all(sn.node.state.hash == h for sn in live)

    def status_of(self, observer: str, member: str) -> Any:
        m = self.nodes[observer].node.members.get(member)
        return None if m is None else m.status


def bootstrap(
    n: int,
    seed: int,
    link: LinkModel | None = None,
    config: GossipConfig | None = None,
    keyring: Keyring | None = None,
    prefix: str = "node",
    bandwidth: float | None = None,
    state: dict[str, Any] | None = None,
    host: HostModel | None = None,
) -> SimNetwork:
    """N nodes that already know each other (a warm start), for steady-state
    measurements at sizes where replaying N joins would dominate the run.

    Each node is told of every other through the same code path a SYNACK
    takes (records applied as deltas), so the state is exactly what joins
    would have produced, minus the join traffic.
    """
    net = SimNetwork(
        seed, link=link, config=config, keyring=keyring, bandwidth=bandwidth, host=host
    )
    for i in range(n):
        net.add_node(f"{prefix}{i}")
    nodes = list(net.nodes.values())
    if state:
        for sn in nodes:
            for key, value in state.items():
                sn.node.own.set_local(key, value, net.now)
            sn.node.state.touched(sn.name)
    deltas = {sn.name: sn.node.own.delta_since(0, reset=True) for sn in nodes}
    for sn in nodes:
        sn.node._bc_records.clear()
        for other in nodes:
            if other is sn:
                continue
            rec = other.node.own
            delta = deltas[other.name]
            sn.node.state.apply_delta(delta, net.now)
            sn.node._new_member(rec.name, rec.generation, rec.addr, net.now)
        sn.node._bc_rumors.clear()  # nothing to announce: all known
        sn.node.take_events()
    return net
