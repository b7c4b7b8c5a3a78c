"""`rumor sim llm`: prefix-cache-aware routing of LLM requests, with every
serving node a router, against a central router that knows everything.

Model. N serving nodes (sim.llm_node: continuous batching, chunked prefill,
a KV cache with LRU eviction); every node is also a router, and each request
enters at a random one (as behind a plain load balancer or DNS). A router
runs the daemon's code: node.cluster's policy over candidates built from its
view (node.cluster.candidates.CandidateBuilder), its own RouterState, and the
prefix summaries the nodes publish (node.cluster.prefix.SummaryPublisher, fed
with every block the node caches or evicts).

Staleness. Each node publishes its load (waiting + running) once per publish
interval (0.2 s, at its own phase, as the daemon's publish loop) and its
prefix summary's changes at most every SUMMARY_EVERY (1 s), and each router
its in-flight counts; a router sees each
publication `staleness_s` later (a fixed delay), or, with `staleness="gossip"`,
after a delay drawn from the real gossip core's measured dissemination of
summary writes in a cluster this size (sim.prefix_gossip).

Policies (the names are a contract of `rumor sim llm --json`): random,
round_robin, p2c (load only, stale reports), rumor (today's default: load
only), rumor_prefix (the default for LLMs), cache_aware (SGLang's rules on
the same gossiped views), and central_cache_aware: one router for the whole
cluster with perfect, fresh knowledge of every cache and queue, running
SGLang's cache-aware rules (the central router tier every published system
uses, as an oracle).

Load. `load` is the fraction of the cluster's prefill capacity that the
workload would take if nothing but the shared system prompt were ever reused
(what a cache-blind router roughly sees): arrival rate x mean prompt tokens
beyond the system prompt x prefill seconds per token / nodes. Decoding and
step overheads come on top.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from node.cluster.candidates import CandidateBuilder, RouterState
from node.cluster.prefix import SUMMARY_EVERY, PrefixRequest, Scheme, Summary, SummaryPublisher
from node.cluster.routing import POLICIES as CLUSTER_POLICIES
from node.cluster.routing import Policy, RumorPrefix
from node.cluster.view import LoadReport

from .llm_node import NodeModel, ServingNode
from .llm_workload import (
    BLOCK_SIZE,
    AgentWorkload,
    ChatWorkload,
    Request,
    Segments,
    Session,
    block_of,
)

POLICIES = (
    "random", "round_robin", "p2c", "rumor", "rumor_prefix", "cache_aware", "central_cache_aware",
)  # fmt: skip
#: Simulated policy -> (cluster policy, central router with a fresh, exact view).
PLAN: dict[str, tuple[str, bool]] = {
    "random": ("random", False),
    "round_robin": ("round_robin", False),
    "p2c": ("p2c", False),
    "rumor": ("rumor", False),
    "rumor_prefix": ("rumor_prefix", False),
    "cache_aware": ("cache_aware", False),
    "central_cache_aware": ("cache_aware", True),
}
#: Variants of a cluster policy, for ablations (not in the default grid).
VARIANTS: dict[str, Policy] = {"rumor_prefix_no_home": RumorPrefix(home=False)}
PLAN["rumor_prefix_no_home"] = ("rumor_prefix_no_home", False)
MODEL = "agent"
SCHEME: Scheme = (BLOCK_SIZE, "sim-mix64", MODEL)
INTERVAL = 0.2  # the daemon's publish loop
HORIZON_S = 2.0  # snapshots older than the delay plus this are dropped


@dataclass(frozen=True)
class LLMResult:
    policy: str
    workload: str
    nodes: int
    routers: int
    load: float
    staleness_s: float
    ttft_mean_s: float
    ttft_p99_s: float
    e2e_mean_s: float
    throughput_tok_s: float
    hit_rate: float
    rejected: int

    def to_json(self) -> dict[str, Any]:
        """Exactly the contract's fields."""
        return {
            "policy": self.policy,
            "workload": self.workload,
            "nodes": self.nodes,
            "routers": self.routers,
            "load": self.load,
            "staleness_s": round(self.staleness_s, 4),
            "ttft_mean_s": round(self.ttft_mean_s, 4),
            "ttft_p99_s": round(self.ttft_p99_s, 4),
            "e2e_mean_s": round(self.e2e_mean_s, 4),
            "throughput_tok_s": round(self.throughput_tok_s, 1),
            "hit_rate": round(self.hit_rate, 4),
            "rejected": self.rejected,
        }


@dataclass
class _Published:
    """One publication: a node's load and summary, or a router's in-flight counts."""

    at: float
    arrive: list[float]  # when each router sees it
    queue: float = 0.0
    summary: Summary | None = None
    inflight: dict[str, int] = field(default_factory=dict)


class _History:
    """A publisher's recent publications; each router sees the newest arrived."""

    def __init__(self) -> None:
        self.items: list[_Published] = []
        self.times: list[float] = []

    def add(self, p: _Published, now: float, oldest_needed: float) -> None:
        self.items.append(p)
        self.times.append(p.at)
        cut = bisect.bisect_left(self.times, oldest_needed) - 1
        if cut > 0:
            del self.items[:cut], self.times[:cut]

    def seen_by(self, router: int, now: float, fixed: float | None) -> _Published | None:
        if fixed is not None:  # every router sees it `fixed` later: a bisection
            i = bisect.bisect_right(self.times, now - fixed) - 1
            return self.items[i] if i >= 0 else None
        for p in reversed(self.items):
            if p.arrive[router] <= now:
                return p
        return None


class _StaleView:
    """A router's view: node.cluster's ClusterView and PrefixView protocols
    over what the publications it has seen say."""

    def __init__(self, sim: _Sim, router: int) -> None:
        self.sim, self.router = sim, router

    def ready_replicas(self, model: str) -> list[str]:
        return self.sim.names

    def _seen(self, h: _History) -> _Published | None:
        return h.seen_by(self.router, self.sim.now, self.sim.fixed_delay)

    def report(self, name: str) -> LoadReport | None:
        p = self._seen(self.sim.node_pubs[int(name)])
        if p is None:
            return None
        # As GossipView: `at` is when the report arrived here (no clock is shared).
        return LoadReport(p.queue, 0.0, p.arrive[self.router])

    def inflight_reports(self) -> Iterator[tuple[str, Mapping[str, Any], float]]:
        for r, h in enumerate(self.sim.router_pubs):
            p = self._seen(h)
            if p is not None and p.inflight:
                yield str(r), p.inflight, p.arrive[self.router]

    def prefix_summary(self, name: str, model: str) -> tuple[Scheme, Summary] | None:
        p = self._seen(self.sim.node_pubs[int(name)])
        return (SCHEME, p.summary) if p is not None and p.summary is not None else None


@dataclass(frozen=True)
class _ExactCache(Summary):
    """A node's cache as it is now, read through the hash's segment and index."""

    node: ServingNode | None = None

    def held(self, block_hash: int) -> bool:
        assert self.node is not None
        return self.node.holds(*block_of(block_hash))


class _FreshView:
    """The central router's view: every queue and cache exactly, now."""

    def __init__(self, sim: _Sim) -> None:
        self.sim = sim

    def ready_replicas(self, model: str) -> list[str]:
        return self.sim.names

    def report(self, name: str) -> LoadReport:
        return LoadReport(float(self.sim.nodes[int(name)].queue), 0.0, self.sim.now)

    def inflight_reports(self) -> Iterator[tuple[str, Mapping[str, Any], float]]:
        return iter(())

    def prefix_summary(self, name: str, model: str) -> tuple[Scheme, Summary]:
        node = self.sim.nodes[int(name)]
        return SCHEME, _ExactCache(0, frozenset(), node.cached, True, node)


class _Sim:
    def __init__(self, n: int, fixed_delay: float | None, delays: list[float]) -> None:
        self.names = [str(i) for i in range(n)]
        self.nodes: list[ServingNode] = []
        self.node_pubs = [_History() for _ in range(n)]
        self.router_pubs = [_History() for _ in range(n)]
        self.fixed_delay = fixed_delay
        self.delays = delays
        self.now = 0.0


def simulate_llm(
    policy: str,
    workload: str = "agent",
    *,
    nodes: int = 16,
    load: float = 0.8,
    staleness_s: float | str = 0.5,
    sessions: int = 400,
    requests: int = 8_000,
    node_model: NodeModel | None = None,
    agent: AgentWorkload | None = None,
    chat: ChatWorkload | None = None,
    local_margin: float = 1.0,
    seed: int = 1,
    gossip_delays: list[float] | None = None,
) -> LLMResult:
    """One cell: `policy` on `workload` at `load` with views `staleness_s` old
    ("gossip": drawn from `gossip_delays`, measured when not given).
    `sessions` agent sessions or `requests` chat prompts arrive; the first
    quarter of the arrivals warms the caches (and brings agent sessions, which
    last a minute, to a steady state) and is not measured."""
    if policy not in PLAN:
        raise ValueError(f"unknown policy {policy!r}; have {', '.join(POLICIES)}")
    if workload not in ("agent", "chat"):
        raise ValueError(f"unknown workload {workload!r}; have agent, chat")
    name, central = PLAN[policy]
    chooser: Policy = VARIANTS[name] if name in VARIANTS else CLUSTER_POLICIES[name]
    m = node_model or NodeModel()
    agent = agent or AgentWorkload()
    chat = chat or ChatWorkload()
    rng = random.Random(f"{seed}/{policy}/{workload}/{nodes}/{load}/{staleness_s}")
    wl_rng = random.Random(f"{seed}/workload/{workload}/{nodes}/{load}")  # same arrivals for all
    if staleness_s == "gossip":
        if gossip_delays is None:
            from .prefix_gossip import gossip_delays as measure_delays

            gossip_delays = measure_delays(nodes=nodes, seed=seed)
        delays = gossip_delays or [0.0]
        fixed: float | None = None
        staleness_mean = sum(delays) / len(delays)
    else:
        delays = []
        fixed = float(staleness_s)
        staleness_mean = fixed
    sim = _Sim(nodes, fixed, delays)
    floor = SummaryPublisher(MODEL, kv_blocks=m.kv_blocks).floor
    segments = Segments(floor)
    sim.nodes = [
        ServingNode(i, m, segments, SummaryPublisher(MODEL, kv_blocks=m.kv_blocks))
        for i in range(nodes)
    ]
    routers = 1 if central else nodes
    states = [RouterState() for _ in range(routers)]
    fresh = _FreshView(sim) if central else None
    views = [_StaleView(sim, r) for r in range(nodes)]
    max_delay = fixed if fixed is not None else max(delays)
    heap: list[tuple[float, int, int, int, Any]] = []
    seq = 0

    def push(t: float, kind: int, a: int = 0, payload: Any = None) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(heap, (t, seq, kind, a, payload))

    ARRIVE, STEP, PUBLISH, NEXT_STEP = 0, 1, 2, 3
    if workload == "agent":
        systems = agent.system_lengths(wl_rng)
        per_session = agent.prefill_tokens_per_session(random.Random(seed))
        rate = load * nodes / (m.prefill_s_per_token * per_session)  # sessions per second
        budget = sessions
    else:
        systems = []
        rate = load * nodes / (m.prefill_s_per_token * chat.prefill_tokens())
        budget = requests
    push(wl_rng.expovariate(rate), ARRIVE)
    for i in range(nodes):
        push(rng.uniform(0, INTERVAL), PUBLISH, i)
    arrivals = 0
    rid = 0
    warm_until = math.inf
    done: list[Request] = []
    rejected = 0
    last_arrival = 0.0
    open_work = 0  # sessions (or chat requests) not yet over
    snap_cache: dict[int, tuple[int, Summary, float]] = {}

    def publish(i: int) -> None:
        """Node i's publish loop: its load every interval, its summary's changes
        at most every SUMMARY_EVERY (as node.prefixes does)."""
        node = sim.nodes[i]
        arrive = [sim.now + (fixed if fixed is not None else rng.choice(delays))
                  for _ in range(nodes)]  # fmt: skip
        cached = snap_cache.get(i)
        due = cached is None or sim.now - cached[2] >= SUMMARY_EVERY - 1e-9
        if cached is None or (due and cached[0] != node.changes):
            node.summary.blocks = node.cached
            cached = snap_cache[i] = (node.changes, node.summary.snapshot(), sim.now)
        oldest = sim.now - max_delay - HORIZON_S
        sim.node_pubs[i].add(_Published(sim.now, arrive, float(node.queue), cached[1]), sim.now,
                             oldest)  # fmt: skip
        if not central:
            counts = {k: v for k, v in states[i].inflight.items() if v}
            sim.router_pubs[i].add(_Published(sim.now, arrive, inflight=counts), sim.now, oldest)

    def route(r: Request) -> None:
        nonlocal rejected
        router = 0 if central else rng.randrange(nodes)
        r.router = router
        state = states[router]
        prefix = PrefixRequest(MODEL, r.prompt_tokens, {SCHEME: r.chain(BLOCK_SIZE)})
        _sampled_positions(prefix, r, segments, floor)
        if fresh is not None:
            cand = CandidateBuilder(fresh, state, "central", sim.now, prefix=prefix,
                                    summaries=fresh)  # fmt: skip
            target = chooser.choose(sim.names, cand, rng, state)
        else:
            me = str(router)
            local_queue = float(sim.nodes[router].queue)
            cand = CandidateBuilder(views[router], state, me, sim.now, local_queue, prefix,
                                    views[router])  # fmt: skip
            target = chooser.choose(sim.names, cand, rng, state, me, local_margin)
        i = int(target)
        node = sim.nodes[i]
        if len(node.waiting) >= m.queue_bound:
            rejected += 1
            end_of(r)
            return
        r.node = i
        state.note_sent(target, sim.now)
        node.waiting.append(r)
        if not node.busy:
            end = node.plan(sim.now)
            if end is not None:
                push(end, STEP, i, node.epoch)
        else:
            end = node.interrupt(sim.now)
            if end is not None:
                push(end, STEP, i, node.epoch)

    def end_of(r: Request) -> None:
        """The request's session (or the chat request) leaves the system."""
        nonlocal open_work
        open_work -= 1

    def finished(r: Request) -> None:
        states[r.router].note_done(str(r.node))
        done.append(r)
        s = r.session
        if s is not None and s.steps_left > 0:
            s.tokens += r.output_tokens
            push(sim.now + agent.think(s), NEXT_STEP, 0, s)
        else:
            end_of(r)

    while heap:
        sim.now, _, kind, a, payload = heapq.heappop(heap)
        if kind == ARRIVE:
            arrivals += 1
            last_arrival = sim.now
            if arrivals < budget:
                push(sim.now + wl_rng.expovariate(rate), ARRIVE)
            if arrivals == max(1, budget // 4):
                warm_until = sim.now
            rid += 1
            open_work += 1
            if workload == "agent":
                s = agent.new_session(rid, wl_rng, systems)
                route(agent.next_request(s, rid, sim.now))
            else:
                route(chat.request(rid, sim.now, wl_rng))
        elif kind == NEXT_STEP:
            s = payload
            rid += 1
            route(agent.next_request(s, rid, sim.now))
        elif kind == STEP:
            node = sim.nodes[a]
            if payload != node.epoch:
                continue  # replanned since
            for r in node.finish_step(sim.now):
                finished(r)
            end = node.plan(sim.now)
            if end is not None:
                push(end, STEP, a, node.epoch)
        else:  # PUBLISH
            publish(a)
            if arrivals < budget or open_work > 0:
                push(sim.now + INTERVAL, PUBLISH, a)
    staleness_mean = 0.0 if central else staleness_mean
    return _result(policy, workload, nodes, routers, load, staleness_mean, done, warm_until,
                   last_arrival, rejected)  # fmt: skip


def _sampled_positions(prefix: PrefixRequest, r: Request, segments: Segments, floor: int) -> None:
    """Fill the request's sampled positions from the segments' kept hashes
    (levels floor..floor+8), so the router need not hash its whole chain."""
    blocks = r.prompt_tokens // BLOCK_SIZE
    kept = []
    if r.system is not None:
        kept += segments.positions(r.system, 0, min(blocks, r.system_blocks))
    kept += segments.positions(r.own, r.system_blocks, blocks)
    for level in range(floor, floor + 9):
        mask = (1 << level) - 1
        prefix.positions[(SCHEME, level)] = [i for i, h in kept if h & mask == 0]


def _result(
    policy: str,
    workload: str,
    nodes: int,
    routers: int,
    load: float,
    staleness: float,
    done: list[Request],
    warm_until: float,
    last_arrival: float,
    rejected: int,
) -> LLMResult:
    measured = [r for r in done if r.arrival >= warm_until]
    ttft = sorted(r.first_token_at - r.arrival for r in measured)
    e2e = [r.done_at - r.arrival for r in measured]
    # Tokens of the requests completed within the measured arrival window, per
    # second of it: the offered rate when the nodes keep up, less when not.
    span = last_arrival - warm_until
    out_tokens = sum(r.output_tokens for r in done if warm_until <= r.done_at <= last_arrival)
    prompt = sum(r.prompt_tokens for r in measured)
    hits = sum(r.cached_tokens for r in measured)

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs) if xs else math.nan

    return LLMResult(
        policy=policy,
        workload=workload,
        nodes=nodes,
        routers=routers,
        load=load,
        staleness_s=staleness,
        ttft_mean_s=mean(ttft),
        ttft_p99_s=ttft[int(0.99 * (len(ttft) - 1))] if ttft else math.nan,
        e2e_mean_s=mean(e2e),
        throughput_tok_s=out_tokens / span if span > 0 else 0.0,
        hit_rate=hits / prompt if prompt else 0.0,
        rejected=rejected,
    )


__all__ = ["POLICIES", "LLMResult", "NodeModel", "Session", "simulate_llm"]
