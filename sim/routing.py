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

from node.router import Candidate, drain, estimate, pick

POLICIES = ("random", "round_robin", "least_loaded", "p2c", "p2c_fresh", "rumor", "oracle_jsq")


@dataclass
class _Router:
    rr: int = 0
    inflight: dict[int, int] = field(default_factory=dict)  # exact, own
    published: dict[int, int] = field(default_factory=dict)  # as last gossiped
    published_at: float = 0.0
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
    """The `rumor` policy's load estimate: node.router.estimate, which the daemon runs."""
    return estimate(
        Candidate(
            "",
            queue=queue_reported,
            age_s=report_age_s,
            service_s=service_s,
            others_inflight=others_inflight,
            own_inflight=own_inflight,
            own_sent_since=own_sent_since_report,
        )
    )


def choose(
    policy: str,
    rng: random.Random,
    n: int,
    router: _Router,
    snapshot: list[int],
    snapshot_age: Callable[[int], float],
    true_queue: list[int],
    others_inflight: Callable[[int], float],
    service_of: Callable[[int], float],
    exclude: set[int],
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
    if policy.startswith("rumor"):
        # The daemon's own code: node.router.pick over the ready replicas.
        sample = rng.sample(range(n), 2 + len(exclude))
        cands = [
            Candidate(
                str(i),
                queue=snapshot[i],
                age_s=snapshot_age(i),
                service_s=service_of(i),
                others_inflight=others_inflight(i),
                own_inflight=router.inflight.get(i, 0),
                own_sent_since=router.sent_since.get(i, 0),
            )
            for i in sample
            if i not in exclude
        ][:2]
        chosen = pick(cands, rng)
        assert chosen is not None
        return int(chosen.name)
    a, b = rng.sample(range(n), 2)
    if policy == "p2c_fresh":
        la, lb = true_queue[a], true_queue[b]
    else:  # p2c on the stale snapshots
        la, lb = snapshot[a], snapshot[b]
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
    (`load` is relative to the unbatched capacity). Under `rumor`, a node
    holding `busy_queue` or more answers "busy" at once and the router tries
    another candidate after `rtt_s`, up to `retries` times; the last try is
    admitted up to `queue_bound`. `rumor_no_admission` is the same router
    without it. Every policy rejects past `queue_bound` (counted).
    """
    if policy not in POLICIES and policy != "rumor_no_admission":
        raise ValueError(f"unknown policy {policy!r}; have {', '.join(POLICIES)}")
    rng = random.Random(f"{seed}/{policy}/{routers}/{load}/{interval_s}")
    admission = policy == "rumor"
    queue = [0] * nodes  # waiting + running, what a node reports
    snapshot = [0] * nodes
    snap_at = [0.0] * nodes
    per_request = [service_s] * nodes  # each node's EWMA service time per request
    rts = [_Router() for _ in range(routers)]
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
    now = 0.0

    def others(r: int) -> Callable[[int], float]:
        # Each router's gossiped count, drained for its age like a load report.
        def at(i: int) -> float:
            total = 0.0
            for j, rt in enumerate(rts):
                n = rt.published.get(i, 0)
                if n and j != r:
                    total += drain(n, now - rt.published_at, per_request[i])
            return total

        return at

    def start_batch(i: int) -> None:
        w = waiting[i]
        b = min(batch_max, len(w) - wait_head[i])
        running[i] = w[wait_head[i] : wait_head[i] + b]
        wait_head[i] += b
        if wait_head[i] > 1024:
            del w[: wait_head[i]]
            wait_head[i] = 0
        took = rng.expovariate(1 / service_s) * (1 + batch_cost * (b - 1))
        per_request[i] = 0.9 * per_request[i] + 0.1 * (took / b)
        push(now + took, DONE, i)

    def route(t_in: int | float, r: int, tried: set[int]) -> None:
        nonlocal rejected
        rt = rts[r]
        target = choose(
            policy,
            rng,
            nodes,
            rt,
            snapshot,
            lambda i: now - snap_at[i],
            queue,
            others(r),
            lambda i: per_request[i],
            tried,
        )
        if admission and queue[target] >= busy_queue and len(tried) < retries:
            push(now + rtt_s, RETRY, r, (t_in, tried | {target}))  # "busy": try another
            return
        if queue[target] >= queue_bound:
            rejected += 1
            return
        queue[target] += 1
        waiting[target].append((t_in, r))
        rt.inflight[target] = rt.inflight.get(target, 0) + 1
        rt.sent_since[target] = rt.sent_since.get(target, 0) + 1
        if not running[target]:
            start_batch(target)

    while heap and arrivals < requests + warmup:
        now, _, kind, a, payload = heapq.heappop(heap)
        if kind == ARRIVE:
            arrivals += 1
            push(now + rng.expovariate(arrival_rate), ARRIVE)
            route(now, rng.randrange(routers), set())
        elif kind == RETRY:
            route(payload[0], a, payload[1])
        elif kind == DONE:
            for t_in, r in running[a]:
                queue[a] -= 1
                rts[r].inflight[a] -= 1
                if arrivals > warmup:
                    times.append(now - t_in)
            running[a] = []
            if queue[a] > 0:
                start_batch(a)
        elif kind == SNAP:
            snapshot[a] = queue[a]
            snap_at[a] = now
            for rt in rts:
                rt.sent_since.pop(a, None)
            push(now + interval_s, SNAP, a)
        else:  # PUBLISH: a router gossips its in-flight counts
            rts[a].published = {k: v for k, v in rts[a].inflight.items() if v}
            rts[a].published_at = now
            push(now + interval_s, PUBLISH, a)
    times.sort()
    mean = sum(times) / len(times) if times else math.nan
    p99 = times[int(0.99 * (len(times) - 1))] if times else math.nan
    return RoutingResult(policy, routers, load, interval_s, mean, p99, rejected, len(times))
