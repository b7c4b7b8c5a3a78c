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

import bisect
import gc
import hashlib
import heapq
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gossip.config import GossipConfig
from gossip.core import Datagram, GossipEvent, GossipNode, StreamFrame
from gossip.crypto import Keyring
from gossip.wire import Addr

#: The simulated wall clock starts here (2026-01-01 UTC): node clocks are
#: virtual time plus their skew plus this, so timestamps look like real ones.
SIM_EPOCH = 1_767_225_600.0


@dataclass
class LinkModel:
    latency: float = 0.001  # one-way seconds
    jitter: float = 0.0  # uniform extra delay in [0, jitter]
    loss: float = 0.0
    duplicate: float = 0.0


@dataclass
class HostModel:
    """CPU as a shared resource, for simulating many daemons on one machine (or
    slow nodes), as a multi-server queue.

    Each node is one process that does one job at a time: a delivered message,
    a timer tick or a local change. Jobs wait in their node's socket buffer
    (FIFO) and nodes wait for one of `cores` cores (FIFO); a node that gets a
    core keeps it while it has jobs queued, for up to `slice` seconds, as an
    event loop drains its socket before it sleeps. A job runs the real core
    when it starts and costs `per_message` (delivered messages only: wake-up,
    authenticate, decode, apply) plus `per_send` for each datagram or frame it
    sends, one after another: each leaves when its send is done, and what the
    job reports is stamped when it finishes, as a daemon sends and then logs.
    So a first delivery that forwards to five peers costs more than a
    duplicate that forwards to none, as on a real host. A local change costs
    its sends plus `per_call` after them (e.g. answering the HTTP request that
    made it). What a process does besides messages (its timers, a daemon's
    once-per-interval loop) is `background` of a core, charged at its timer
    ticks for the time since the last one. A core that fell idle takes `wake`
    to start the next job (a halted virtual CPU, a deep sleep state)."""

    cores: int = 2
    per_message: float = 0.0005
    per_send: float = 0.0
    per_call: float = 0.0
    background: float = 0.0  # fraction of a core per node
    wake: float = 0.0  # a job that finds its core idle starts this much later
    slice: float = 0.003  # an OS time slice


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
    inbox: deque[tuple[str, Any]] = field(default_factory=deque)  # host model: jobs waiting
    running: bool = False  # host model: a job of this node holds a core
    waiting: bool = False  # host model: in the queue for a core
    on_core_since: float = 0.0  # host model: when its process got the core it holds
    last_tick: float | None = None  # host model: when its last tick ran
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
        # host model: when each free core fell idle
        self._free_cores: list[float] = [start] * host.cores if host else []
        self._ready: deque[SimNode] = deque()  # nodes with jobs, waiting for a core
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
        self._addr_text: dict[Addr, bytes] = {}  # str(addr), as traced (encoded once)
        self.delivered = 0
        self.dropped = 0
        self.bytes_sent: dict[str, int] = {}
        self.messages_sent: dict[str, int] = {}
        self.on_deliver: Callable[[SimNode, Datagram | StreamFrame], None] | None = None
        #: Called with each datagram or frame as its node sends it (under the
        #: host model, when its job's send is done). A hook rather than a
        #: patched `_send`: this class may run compiled (compiled_build.py).
        self.on_send: Callable[[SimNode, Datagram | StreamFrame], None] | None = None

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
            wall_offset=SIM_EPOCH,
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
        self.flush(sn)
        return node

    def crash(self, name: str) -> None:
        self.nodes[name].alive = False
        self.nodes[name].inbox.clear()

    def restart(self, name: str, join: list[str], generation: int | None = None) -> GossipNode:
        """A new process for `name`: by default one generation up; pass
        `generation` to model a lost disk or a clock set back."""
        old = self.nodes[name]
        gen = old.node.generation + 1 if generation is None else generation
        return self.add_node(name, join=join, generation=gen)

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

    def local_time(self, name: str) -> float:
        """What `name`'s own clock reads now (virtual time plus its skew)."""
        return self._local(self.nodes[name])

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

    def flush(self, sn: SimNode) -> None:
        """Collect a node's outgoing messages and reschedule its timer."""
        for out in sn.node.take_outgoing():
            self._send(sn, out)
        for ev in sn.node.take_events():
            sn.events.append((self.now, ev))
        deadline = sn.node.next_deadline() - (self._local(sn) - self.now)
        if deadline < sn.next_tick or sn.next_tick <= self.now:
            sn.next_tick = max(deadline, self.now)
            self._schedule(sn.next_tick, "tick", sn.name)

    def _send(self, sn: SimNode, out: Datagram | StreamFrame) -> None:
        if self.on_send is not None:
            self.on_send(sn, out)
        self.bytes_sent[sn.name] = self.bytes_sent.get(sn.name, 0) + len(out.data)
        self.messages_sent[sn.name] = self.messages_sent.get(sn.name, 0) + 1
        self._transmit(sn, out)

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
        if t > self.now:
            self.now = t
        # Arrivals first: they are most events (then ticks, then the rest).
        if kind == "datagram" or kind == "frame":
            self._arrive(kind, payload)
        elif kind == "tick":
            self._tick(t, payload)
        elif kind == "wake":
            sn = self.nodes[payload]
            if sn.alive:
                sn.next_tick = self.now
                self._schedule(self.now, "tick", sn.name)
                if self.host is not None:
                    self._make_ready(sn)
        elif kind == "done":
            self._finish(*payload)
        elif kind == "start":
            sn = payload
            if sn.alive and self.nodes.get(sn.name) is sn and sn.inbox:
                self._run_job(sn)
            else:
                sn.running = False
                self._release_core()
                self._dispatch()
        elif kind == "send":
            sn, out = payload
            if sn.alive and self.nodes.get(sn.name) is sn:  # else it died mid-job
                self._send(sn, out)
        return True

    def _tick(self, t: float, name: str) -> None:
        sn = self.nodes.get(name)
        if sn is None or not sn.alive or t != sn.next_tick:
            return  # superseded by an earlier deadline, or its node is gone
        if self.now < sn.paused_until:
            sn.next_tick = sn.paused_until
            self._schedule(sn.paused_until, "tick", sn.name)
            return
        sn.next_tick = float("inf")
        if self.host is not None:
            self._enqueue(sn, "tick", None)
        else:
            sn.node.tick(self._local(sn))
            self.flush(sn)

    def _arrive(self, kind: str, payload: Any) -> None:
        """A datagram or frame arriving at its destination's address."""
        src, out = payload
        dst = self.by_addr.get(out.dst)
        if dst is None or not dst.alive:
            return
        if self.grudges:
            sender = self.by_addr.get(src)
            if sender is not None and (dst.name, sender.name) in self.grudges:
                return
        if self.host is not None:
            self._enqueue(dst, kind, payload)  # in the socket buffer
            return
        if self.now < dst.paused_until:
            # Queued in the socket buffer until the process resumes.
            self._schedule(dst.paused_until + 1e-6, kind, payload)
            return
        self._deliver(dst, kind, payload)
        self.flush(dst)

    def _deliver(self, dst: SimNode, kind: str, payload: Any) -> None:
        src, out = payload
        text = self._addr_text
        src_text = text.get(src)
        if src_text is None:
            src_text = text[src] = str(src).encode()
        dst_text = text.get(dst.addr)
        if dst_text is None:
            dst_text = text[dst.addr] = str(dst.addr).encode()
        # The traced line: time, sender, receiver and the datagram's first 64
        # bytes, fed to the hash in one piece. `b"%.9f" % t` spells t as
        # f"{t:.9f}" does (both are CPython's correctly rounded 'f' format), and
        # one update of a concatenation digests as two updates of its parts, so
        # the hashes are those of the old two-update, f-string trace.
        self._trace.update(b"%.9f|%b|%b|%b" % (self.now, src_text, dst_text, out.data[:64]))
        self.delivered += 1
        if kind == "frame":
            dst.node.receive_stream(out.data, src, self._local(dst))
        else:
            dst.node.receive_datagram(out.data, src, self._local(dst))
        if self.on_deliver is not None:
            self.on_deliver(dst, out)

    # -- the host model: nodes as processes sharing cores ------------------------

    def local(self, name: str, change: Callable[[GossipNode, float], None]) -> None:
        """A local change at a node (`change(node, now)`), e.g. an operator's
        write. Under the host model it is a job like any other: it waits for
        the node and a core, and what it sends leaves when it finishes."""
        sn = self.nodes[name]
        if self.host is None:
            change(sn.node, self._local(sn))
            self.flush(sn)
        else:
            self._enqueue(sn, "call", change)

    def _enqueue(self, sn: SimNode, kind: str, payload: Any) -> None:
        sn.inbox.append((kind, payload))
        self._make_ready(sn)

    def _make_ready(self, sn: SimNode) -> None:
        if sn.inbox and not sn.running and not sn.waiting and self.now >= sn.paused_until:
            sn.waiting = True
            self._ready.append(sn)
        self._dispatch()

    def _dispatch(self) -> None:
        assert self.host is not None
        while self._free_cores and self._ready:
            sn = self._ready.popleft()
            sn.waiting = False
            if not sn.alive or self.nodes.get(sn.name) is not sn or not sn.inbox:
                continue
            if self.now < sn.paused_until:
                continue  # "wake" makes it ready again
            idle_since = self._free_cores.pop()  # the core freed last: it may not sleep yet
            sn.on_core_since = self.now
            if self.host.wake and self.now > idle_since:
                sn.running = True  # holds the core while it wakes up
                self._schedule(self.now + self.host.wake, "start", sn)
            else:
                self._run_job(sn)

    def _run_job(self, sn: SimNode) -> None:
        """Run the node's next job on the core it holds."""
        assert self.host is not None
        kind, payload = sn.inbox.popleft()
        sn.running = True
        cost = 0.0
        if kind == "tick":
            if sn.last_tick is not None:
                cost = self.host.background * (self.now - sn.last_tick)
            sn.last_tick = self.now
            sn.node.tick(self._local(sn))
        elif kind == "call":
            payload(sn.node, self._local(sn))
        else:
            self._deliver(sn, kind, payload)
            cost = self.host.per_message
        events = sn.node.take_events()
        for out in sn.node.take_outgoing():
            cost += self.host.per_send  # one send after another, as the daemon does
            self._schedule(self.now + cost, "send", (sn, out))
        if kind == "call":
            cost += self.host.per_call
        self.flush(sn)  # re-arms the timer (nothing else is left to send)
        self._schedule(self.now + cost, "done", (sn, events))

    def _finish(self, sn: SimNode, events: list[GossipEvent]) -> None:
        assert self.host is not None
        sn.running = False
        alive = sn.alive and self.nodes.get(sn.name) is sn  # else it died mid-job
        if alive:
            sn.events.extend((self.now, ev) for ev in events)
            if (
                sn.inbox
                and self.now >= sn.paused_until
                and self.now - sn.on_core_since < self.host.slice
            ):
                self._run_job(sn)  # drains its socket on the core it holds
                return
        self._release_core()
        if alive:
            self._make_ready(sn)
        else:
            self._dispatch()

    def _release_core(self) -> None:
        bisect.insort(self._free_cores, self.now)  # kept sorted: pop() takes the latest

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
    progress: Callable[[int], None] | None = None,
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
    # N^2 member records are made here, and all of them live on: the cyclic
    # garbage collector would walk the growing heap again and again (it took
    # half the setup time at N = 1,000), for no garbage.
    collecting = gc.isenabled()
    gc.disable()
    try:
        _warm_start(net, n, prefix, state, progress)
    finally:
        if collecting:
            gc.enable()
    return net


def _warm_start(
    net: SimNetwork,
    n: int,
    prefix: str,
    state: dict[str, Any] | None,
    progress: Callable[[int], None] | None,
) -> None:
    for i in range(n):
        net.add_node(f"{prefix}{i}")
    nodes = list(net.nodes.values())
    if state:
        for sn in nodes:
            for key, value in state.items():
                sn.node.own.set_local(key, value, net.now)
            sn.node.state.touched(sn.name)
    deltas = [sn.node.own.delta_since(0, reset=True) for sn in nodes]
    for i, sn in enumerate(nodes):
        sn.node.warm_start(deltas, net.now)
        sn.node.take_events()
        if progress is not None:
            progress(i + 1)  # nodes warm-started so far


def drop_in_flight(net: SimNetwork, name: str) -> int:
    """Lose what `name` has sent that has not arrived yet (its crash takes the
    packets on the wire with it: a loss the link model may inflict anyway).
    Tests that track where data lives use it, so that only live processes and
    data dirs hold copies. Returns how many messages were dropped."""
    addr = net.nodes[name].addr
    keep = []
    for item in net._heap:
        kind, payload = item[2], item[3]
        if kind in ("datagram", "frame") and payload[0] == addr:
            continue
        if kind == "send" and payload[0].name == name:
            continue
        keep.append(item)
    dropped = len(net._heap) - len(keep)
    heapq.heapify(keep)
    net._heap = keep
    net.dropped += dropped
    return dropped
