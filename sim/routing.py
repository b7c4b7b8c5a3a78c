"""Routing under stale information: the router policies against a service-time
model of the nodes.

Model: N nodes, each a FIFO server with exponential service times (mean
`service_s`); Poisson arrivals at rate load * N / service_s, each entering at
one of R routers chosen at random. Routers learn node load only as the
gossiped record carries it: a snapshot of each node's queue length, refreshed
every `interval_s` at a random phase (age 0 to interval). Under the `rumor`
policy every router also publishes its per-destination in-flight counts
(the per-origin counter CRDT) every interval, and knows its own exactly.

Policies (the names are a contract of `rumor sim routing --json`):
random, round_robin, least_loaded (stale snapshots), p2c (stale snapshots),
p2c_fresh (true queue lengths), rumor, oracle_jsq (true shortest queue).

The toy result this model reproduces (../shared/BRIEF.md): with info 10
service times old at load 0.9, least-loaded herds (mean time in system ~23)
and does worse than random (~10), while best-of-2 stays near 5.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from node.cluster.admission import admits
from node.cluster.routing import POLICIES as CLUSTER_POLICIES
from node.cluster.routing import CandidateBuilder, Policy, RouterState
from node.cluster.tries import Tries
from node.cluster.view import LoadReport

POLICIES = ("random", "round_robin", "least_loaded", "p2c", "p2c_fresh", "rumor", "oracle_jsq")
#: How each simulated policy maps onto the cluster layer: (policy, fresh view).
#: `p2c_fresh` and `oracle_jsq` see the true queues now (no router can).
PLAN: dict[str, tuple[str, bool]] = {
    "random": ("random", False),
    "round_robin": ("round_robin", False),
    "least_loaded": ("least_loaded", False),
    "p2c": ("p2c", False),
    "p2c_fresh": ("p2c", True),
    "rumor": ("rumor", False),
    "rumor_no_admission": ("rumor", False),
    "oracle_jsq": ("least_loaded", True),
}


@dataclass(frozen=True)
class RoutingResult:
    policy: str
    routers: int
    load: float
    interval_s: float
    mean_s: float
    p99_s: float
    rejected: int
    served: int

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "routers": self.routers,
            "load": self.load,
            "interval_s": self.interval_s,
            "mean_s": round(self.mean_s, 4),
            "p99_s": round(self.p99_s, 4),
            "rejected": self.rejected,
            "served": self.served,
        }


@dataclass
class _Router:
    """A router of the model: the cluster layer's state, and what it gossips."""

    state: RouterState = field(default_factory=RouterState)
    published: dict[str, int] = field(default_factory=dict)  # in flight, as last gossiped
    published_at: float = 0.0


class _View:
    """The simulated cluster as a node.cluster.view.ClusterView: every node
    ready, each seen through its last snapshot (or, `fresh`, as it is now)."""

    def __init__(self, sim: _Nodes, fresh: bool) -> None:
        self.sim, self.fresh = sim, fresh

    def ready_replicas(self, model: str) -> list[str]:
        return self.sim.names

    def report(self, name: str) -> LoadReport:
        i = int(name)
        s = self.sim
        if self.fresh:
            return LoadReport(float(s.queue[i]), s.per_request[i], s.now)
        return LoadReport(float(s.snapshot[i]), s.per_request[i], s.snap_at[i])

    def inflight_reports(self) -> Iterator[tuple[str, Mapping[str, Any], float]]:
        if self.fresh:
            return
        for r, rt in enumerate(self.sim.routers):
            if rt.published:
                yield f"r{r}", rt.published, rt.published_at


@dataclass
class _Nodes:
    names: list[str]
    queue: list[int]  # waiting + running, what a node reports
    snapshot: list[int]
    snap_at: list[float]
    per_request: list[float]  # each node's EWMA service time per request
    routers: list[_Router]
    now: float = 0.0


def simulate(
    policy: str,
    *,
    nodes: int = 100,
    routers: int = 10,
    load: float = 0.9,
    interval_s: float = 1.0,
    service_s: float = 0.1,
    requests: int = 100_000,
    queue_bound: int = 1_000,
    batch_max: int = 1,
    batch_cost: float = 0.1,
    busy_queue: int = 3,
    retries: int = 3,
    rtt_s: float = 0.001,
    seed: int = 1,
) -> RoutingResult:
    """Mean and p99 time in system of one policy.

    Nodes serve up to `batch_max` waiting requests at once; a batch of b takes
    Exp(service_s) * (1 + batch_cost * (b - 1)) and they finish together
    (`load` is relative to the unbatched capacity). Every router runs the
    daemon's code: node.cluster.routing's policy over candidates built from
    its view, its RouterState, and node.cluster.tries. Under `rumor`, a node
    holding `busy_queue` or more answers "busy" at once (node.cluster.admission)
    and the router tries another candidate after `rtt_s`, up to `retries`
    times; the last try is admitted up to `queue_bound`. `rumor_no_admission`
    is the same router without it. Every policy rejects past `queue_bound`.
    """
    if policy not in PLAN:
        raise ValueError(f"unknown policy {policy!r}; have {', '.join(POLICIES)}")
    name, fresh = PLAN[policy]
    chooser: Policy = CLUSTER_POLICIES[name]
    rng = random.Random(f"{seed}/{policy}/{routers}/{load}/{interval_s}")
    admission = policy == "rumor"
    sim = _Nodes(
        names=[str(i) for i in range(nodes)],
        queue=[0] * nodes,
        snapshot=[0] * nodes,
        snap_at=[0.0] * nodes,
        per_request=[service_s] * nodes,
        routers=[_Router() for _ in range(routers)],
    )
    view = _View(sim, fresh)
    queue, rts = sim.queue, sim.routers
    heap: list[tuple[float, int, int, int, Any]] = []  # (t, seq, kind, a, payload)
    seq = 0

    def push(t: float, kind: int, a: int = 0, payload: Any = None) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(heap, (t, seq, kind, a, payload))

    arrival_rate = load * nodes / service_s
    ARRIVE, DONE, SNAP, PUBLISH, RETRY = 0, 1, 2, 3, 4
    push(rng.expovariate(arrival_rate), ARRIVE)
    for i in range(nodes):
        push(rng.uniform(0, interval_s), SNAP, i)
    for r in range(routers):
        push(rng.uniform(0, interval_s), PUBLISH, r)
    waiting: list[list[tuple[float, int]]] = [[] for _ in range(nodes)]  # (arrival, router)
    wait_head = [0] * nodes
    running: list[list[tuple[float, int]]] = [[] for _ in range(nodes)]
    times: list[float] = []
    rejected = arrivals = 0
    warmup = requests // 10

    def start_batch(i: int) -> None:
        w = waiting[i]
        b = min(batch_max, len(w) - wait_head[i])
        running[i] = w[wait_head[i] : wait_head[i] + b]
        wait_head[i] += b
        if wait_head[i] > 1024:
            del w[: wait_head[i]]
            wait_head[i] = 0
        took = rng.expovariate(1 / service_s) * (1 + batch_cost * (b - 1))
        sim.per_request[i] = 0.9 * sim.per_request[i] + 0.1 * (took / b)
        push(sim.now + took, DONE, i)

    def route(t_in: float, r: int, tries: Tries) -> None:
        nonlocal rejected
        state = rts[r].state
        cand = CandidateBuilder(view, state, f"r{r}", sim.now)

        def choose(exclude: set[str]) -> str | None:
            names = [n for n in sim.names if n not in exclude] if exclude else sim.names
            return chooser.choose(names, cand, rng, state) if names else None

        target = tries.next(choose)
        if target is None:
            rejected += 1
            return
        i = int(target)
        if admission and not admits(queue[i], busy_queue, tries.final):
            tries.busy()  # "busy": try another after a round trip
            push(sim.now + rtt_s, RETRY, r, (t_in, tries))
            return
        tries.done()
        if queue[i] >= queue_bound:
            rejected += 1
            return
        queue[i] += 1
        waiting[i].append((t_in, r))
        state.note_sent(target, sim.now)
        if not running[i]:
            start_batch(i)

    while heap and arrivals < requests + warmup:
        sim.now, _, kind, a, payload = heapq.heappop(heap)
        now = sim.now
        if kind == ARRIVE:
            arrivals += 1
            push(now + rng.expovariate(arrival_rate), ARRIVE)
            route(now, rng.randrange(routers), Tries(retries + 1))
        elif kind == RETRY:
            route(payload[0], a, payload[1])
        elif kind == DONE:
            for t_in, r in running[a]:
                queue[a] -= 1
                rts[r].state.note_done(str(a))
                if arrivals > warmup:
                    times.append(now - t_in)
            running[a] = []
            if queue[a] > 0:
                start_batch(a)
        elif kind == SNAP:
            sim.snapshot[a] = queue[a]
            sim.snap_at[a] = now
            push(now + interval_s, SNAP, a)
        else:  # PUBLISH: a router gossips its in-flight counts
            rt = rts[a]
            rt.published = {k: v for k, v in rt.state.inflight.items() if v}
            rt.published_at = now
            push(now + interval_s, PUBLISH, a)
    times.sort()
    mean = sum(times) / len(times) if times else math.nan
    p99 = times[int(0.99 * (len(times) - 1))] if times else math.nan
    return RoutingResult(policy, routers, load, interval_s, mean, p99, rejected, len(times))
