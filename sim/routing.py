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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

POLICIES = ("random", "round_robin", "least_loaded", "p2c", "p2c_fresh", "rumor", "oracle_jsq")


@dataclass
class _Router:
    rr: int = 0
    inflight: dict[int, int] = field(default_factory=dict)  # exact, own
    published: dict[int, int] = field(default_factory=dict)  # as last gossiped
    sent_since: dict[int, int] = field(default_factory=dict)  # own sends since snapshot


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


def rumor_estimate(
    queue_reported: int,
    report_age_s: float,
    service_s: float,
    others_inflight: int,
    own_inflight: int,
    own_sent_since_report: int,
) -> float:
    """The `rumor` policy's load estimate of one candidate.

    The reported queue drains at one request per service time while the report
    ages; what other routers have in flight there is known (as gossiped), our own
    is known exactly. The larger of the two views wins: the report sees load
    that routers' counts miss (requests from other entry paths), the counts see
    sends newer than the report.
    """
    drained = max(0.0, queue_reported - report_age_s / service_s) + own_sent_since_report
    return max(drained, float(others_inflight + own_inflight))


def choose(
    policy: str,
    rng: random.Random,
    n: int,
    router: _Router,
    snapshot: list[int],
    snapshot_age: Callable[[int], float],
    true_queue: list[int],
    others_inflight: Callable[[int], int],
    service_s: float,
) -> int:
    if policy == "random":
        return rng.randrange(n)
    if policy == "round_robin":
        router.rr = (router.rr + 1) % n
        return router.rr
    if policy == "oracle_jsq":
        best = min(true_queue)
        return rng.choice([i for i, q in enumerate(true_queue) if q == best])
    if policy == "least_loaded":
        best = min(snapshot)
        return rng.choice([i for i, q in enumerate(snapshot) if q == best])
    a, b = rng.sample(range(n), 2)
    if policy == "p2c_fresh":
        la, lb = true_queue[a], true_queue[b]
    elif policy == "p2c":
        la, lb = snapshot[a], snapshot[b]
    else:  # rumor
        la, lb = (
            rumor_estimate(
                snapshot[i],
                snapshot_age(i),
                service_s,
                others_inflight(i),
                router.inflight.get(i, 0),
                router.sent_since.get(i, 0),
            )
            for i in (a, b)
        )
    if la == lb:
        return a if rng.random() < 0.5 else b
    return a if la < lb else b


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
    seed: int = 1,
) -> RoutingResult:
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; have {', '.join(POLICIES)}")
    rng = random.Random(f"{seed}/{policy}/{routers}/{load}/{interval_s}")
    queue = [0] * nodes
    snapshot = [0] * nodes
    snap_at = [0.0] * nodes
    rts = [_Router() for _ in range(routers)]
    heap: list[tuple[float, int, int, int, int]] = []  # (t, seq, kind, a, b)
    seq = 0

    def push(t: float, kind: int, a: int = 0, b: int = 0) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(heap, (t, seq, kind, a, b))

    arrival_rate = load * nodes / service_s
    ARRIVE, DONE, SNAP, PUBLISH = 0, 1, 2, 3
    push(rng.expovariate(arrival_rate), ARRIVE)
    for i in range(nodes):
        push(rng.uniform(0, interval_s), SNAP, i)
    for r in range(routers):
        push(rng.uniform(0, interval_s), PUBLISH, r)
    # Per node: a FIFO of (arrival time, router) for the requests it holds.
    fifo: list[list[tuple[float, int]]] = [[] for _ in range(nodes)]
    head = [0] * nodes
    times: list[float] = []
    rejected = arrivals = 0
    warmup = requests // 10
    now = 0.0

    def others(r: int) -> Callable[[int], int]:
        return lambda i: sum(rt.published.get(i, 0) for j, rt in enumerate(rts) if j != r)

    while heap and arrivals < requests + warmup:
        now, _, kind, a, _b = heapq.heappop(heap)
        if kind == ARRIVE:
            arrivals += 1
            push(now + rng.expovariate(arrival_rate), ARRIVE)
            r = rng.randrange(routers)
            rt = rts[r]
            target = choose(
                policy,
                rng,
                nodes,
                rt,
                snapshot,
                lambda i, now=now: now - snap_at[i],
                queue,
                others(r),
                service_s,
            )
            if queue[target] >= queue_bound:
                rejected += 1
                continue
            queue[target] += 1
            fifo[target].append((now, r))
            rt.inflight[target] = rt.inflight.get(target, 0) + 1
            rt.sent_since[target] = rt.sent_since.get(target, 0) + 1
            if queue[target] == 1:
                push(now + rng.expovariate(1 / service_s), DONE, target)
        elif kind == DONE:
            t_in, r = fifo[a][head[a]]
            head[a] += 1
            if head[a] > 1024:
                del fifo[a][: head[a]]
                head[a] = 0
            queue[a] -= 1
            rts[r].inflight[a] -= 1
            if arrivals > warmup:
                times.append(now - t_in)
            if queue[a] > 0:
                push(now + rng.expovariate(1 / service_s), DONE, a)
        elif kind == SNAP:
            snapshot[a] = queue[a]
            snap_at[a] = now
            for rt in rts:
                rt.sent_since.pop(a, None)
            push(now + interval_s, SNAP, a)
        else:  # PUBLISH: a router gossips its in-flight counts
            rts[a].published = dict(rts[a].inflight)
            push(now + interval_s, PUBLISH, a)
    times.sort()
    mean = sum(times) / len(times) if times else math.nan
    p99 = times[int(0.99 * (len(times) - 1))] if times else math.nan
    return RoutingResult(policy, routers, load, interval_s, mean, p99, rejected, len(times))
