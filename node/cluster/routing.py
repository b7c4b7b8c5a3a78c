"""Which ready replica gets a request. Pure, so the daemon and the simulator
(`rumor sim routing`) run exactly this code.

Every router sees load only through gossip, seconds old. "Send to the least
loaded" then herds every router onto the same node (Mitzenmacher, "How useful
is old information?"). So the default policy, `rumor`:

* power-of-d choices (d = 2): sample d ready candidates, take the better;
* each candidate's load is estimated from three views of it (`estimate`):
  its last reported queue, drained at its service rate for the report's age;
  the requests every other router has in flight there (each router gossips
  its per-destination in-flight counts in its own record: a per-origin
  counter map that nobody else writes, so nothing needs pruning); and this
  router's own in-flight requests and sends since the report, known exactly;
* ties are broken at random;
* the local replica is kept unless it is worse than the best sampled one by
  more than `local_margin` requests (it saves a network hop);
* suspected or dead members and models that are not ready are never
  candidates: only ready replicas on alive members are offered.

For LLM models the default is `rumor_prefix` (`RumorPrefix`): the same load
estimate, weighed against the prompt tokens each replica would have to
prefill, as its gossiped prefix summary says (node/cluster/prefix.py).

The other policies are baselines for side-by-side measurements: `p2c` (power
of two choices on the stale reports alone), `least_loaded` (the shortest
reported queue: the one that herds), `random`, `round_robin`, and
`cache_aware` (SGLang's router's rules, for a central router that knows every
cache and queue).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

from .candidates import Builder as Builder
from .candidates import Candidate as Candidate
from .candidates import CandidateBuilder as CandidateBuilder
from .candidates import Given as Given
from .candidates import RouterState as RouterState
from .candidates import drain as drain
from .candidates import estimate as estimate
from .candidates import others_inflight as others_inflight


@dataclass(frozen=True)
class Pick:
    """One routing decision's inputs: the ready replicas (never empty), a
    builder of their candidates on demand, the router's generator and state,
    and the local replica with the margin it is kept within."""

    names: Sequence[str]
    cand: Builder
    rng: random.Random
    state: RouterState
    local: str | None = None
    local_margin: float = 1.0


class Policy:
    """Chooses one of `names` (never empty); `cand` builds a name's candidate
    on demand, so a policy that samples builds only what it samples. `choose`
    is the signature every caller uses, stated once; each policy (a frozen
    dataclass with its `name`) implements `pick` over a `Pick`."""

    name: str

    def choose(
        self,
        names: Sequence[str],
        cand: Builder,
        rng: random.Random,
        state: RouterState,
        local: str | None = None,
        local_margin: float = 1.0,
    ) -> str:
        return self.pick(Pick(names, cand, rng, state, local, local_margin))

    def pick(self, p: Pick) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Rumor(Policy):
    """Power-of-d choices on `estimate`, random ties, the local replica kept
    within `local_margin`."""

    d: int = 2
    name: str = "rumor"

    def pick(self, p: Pick) -> str:
        return best_of(p.rng.sample(list(p.names), min(self.d, len(p.names))), p)


def best_of(sample: Sequence[str], p: Pick) -> str:
    """The sampled name with the lowest `estimate` (random ties), or the local
    replica if it is within `local_margin` of it."""
    scored = [(estimate(p.cand(n)), p.rng.random(), n) for n in sample]
    best_est, _, best = min(scored)
    if p.local is None or p.local not in p.names:
        return best
    return p.local if estimate(p.cand(p.local)) <= best_est + p.local_margin else best


@dataclass(frozen=True)
class P2C(Policy):
    """Power of two choices on the reported queues alone (stale, undrained)."""

    name: str = "p2c"

    def pick(self, p: Pick) -> str:
        sample = p.rng.sample(list(p.names), min(2, len(p.names)))
        return min((p.cand.queue(n), p.rng.random(), n) for n in sample)[2]


@dataclass(frozen=True)
class LeastLoaded(Policy):
    """The shortest reported queue, random ties: what herds on stale reports."""

    name: str = "least_loaded"

    def pick(self, p: Pick) -> str:
        queues = [(p.cand.queue(n), n) for n in p.names]
        best = min(q for q, _ in queues)
        return p.rng.choice([n for q, n in queues if q == best])


@dataclass(frozen=True)
class Random(Policy):
    name: str = "random"

    def pick(self, p: Pick) -> str:
        return p.rng.choice(list(p.names))


@dataclass(frozen=True)
class RoundRobin(Policy):
    name: str = "round_robin"

    def pick(self, p: Pick) -> str:
        p.state.rr += 1
        return p.names[p.state.rr % len(p.names)]


@dataclass(frozen=True)
class RumorPrefix(Policy):
    """Prefix-cache affinity against load, for LLM requests; pure and sampled.

    Cost of a replica, in prefill tokens (Dynamo's KV router minimises the
    same form, `prefill_load_scale * uncached_blocks + decode_blocks`):

        uncached prompt tokens there + w * estimate(replica)

    where `estimate` is `rumor`'s load (requests ahead, from drained reports,
    every router's gossiped in-flight counts and our own sends) and `w` is
    what one request queued ahead costs: an EWMA of the prompt tokens the
    requests this router sent had to prefill (at least `min_request_tokens`).

    Which replicas are scored (never all: on stale information "the best"
    herds every router onto one node, Mitzenmacher): `d` sampled at random,
    as `rumor` does; those holding more than the prefix that more than `d`
    replicas share (an agent session's history, as far as gossip has told
    us); and, once some prefix is that widely shared (a system prompt), the
    request's *home pair*: the `d` replicas (of all) that rank highest for
    the first block past it (rendezvous hashing on the request's own content,
    the same for every step of a session). The first of the pair, the home,
    costs `home_bias` requests less. So every router sends one session's
    steps to its home, however stale its view, unless gossip shows the
    history elsewhere or the home is loaded, and sessions spread over all
    replicas, a cold one (restarted, or new) included; with views 5 s old the
    hit rate is that of fresh ones in `rumor sim llm` (docs/benchmarks.md).

    Imbalance guard (SGLang's rule, on the scored ones): if the cheapest
    replica's load exceeds the least loaded one's by more than `balance_abs`
    requests and `balance_rel` times, take the least loaded instead, so a hot
    prefix cannot pile onto one node however much it saves.

    The local replica saves a hop, but a hop is cheap next to a prefill: it
    is kept only if it was scored and costs at most `local_margin` requests
    more. Without any match anywhere this is exactly `rumor`.
    """

    d: int = 2
    #: Score the home pair (False: only the sample and the deeper holders; the
    #: ablation `rumor sim llm` runs as rumor_prefix_no_home).
    home: bool = True
    home_bias: float = 4.0
    balance_abs: float = 8.0
    balance_rel: float = 1.5
    min_request_tokens: float = 64.0
    name: str = "rumor_prefix"

    def pick(self, p: Pick) -> str:
        names, cand, rng, state = list(p.names), p.cand, p.rng, p.state
        sample = rng.sample(names, min(self.d, len(names)))
        ranked = sorted((cand(n).cached_tokens for n in names), reverse=True)
        if ranked[0] <= 0:
            choice = best_of(sample, p)
            state.note_uncached(cand(choice).uncached_tokens)
            return choice
        shared = ranked[self.d] if len(ranked) > self.d else 0
        deep = [n for n in names if cand(n).cached_tokens > shared]
        pool = sample + deep
        key = cand.affinity(shared) if shared > 0 and self.home else None
        home = None
        if key is not None:
            pair = sorted(names, key=lambda n: rendezvous(key, n))[: self.d]
            home = pair[0]
            pool += pair
        pool = list(dict.fromkeys(pool))
        w = max(self.min_request_tokens, state.uncached_ewma)
        load = {n: estimate(cand(n)) for n in pool}
        cost = {n: cand(n).uncached_tokens + w * load[n] for n in pool}
        if home is not None:
            cost[home] -= w * self.home_bias
        _, _, choice = min((cost[n], rng.random(), n) for n in pool)
        least = min(load.values())
        if load[choice] - least > self.balance_abs and load[choice] > self.balance_rel * least:
            choice = min((load[n], rng.random(), n) for n in pool)[2]
        local = p.local
        if local in cost and local != choice and cost[local] <= cost[choice] + w * p.local_margin:
            choice = local
        state.note_uncached(cand(choice).uncached_tokens)
        return choice


def rendezvous(key: int, name: str) -> bytes:
    """Highest-random-weight order of `name` for `key` (the same on every router)."""
    return hashlib.blake2b(key.to_bytes(8, "little") + name.encode(), digest_size=8).digest()


@dataclass(frozen=True)
class CacheAware(Policy):
    """SGLang's router (`sgl-router` cache_aware policy) over whatever the view
    says: if the loads are imbalanced (max - min > `balance_abs` and max >
    `balance_rel` * min), the least loaded; else, if some replica holds more
    than `cache_threshold` of the prompt, the longest match (ties: the least
    loaded); else the replica with the smallest cache. With a fresh view of
    every cache and queue this is the central, omniscient baseline
    (`central_cache_aware` in `rumor sim llm`)."""

    balance_abs: float = 64.0
    balance_rel: float = 1.5
    cache_threshold: float = 0.3
    name: str = "cache_aware"

    def pick(self, p: Pick) -> str:
        cands, rng = [p.cand(n) for n in p.names], p.rng
        load = {c.name: estimate(c) for c in cands}
        hi, lo = max(load.values()), min(load.values())
        if hi - lo > self.balance_abs and hi > self.balance_rel * lo:
            return min((load[n], rng.random(), n) for n in p.names)[2]
        best = max(cands, key=lambda c: c.cached_tokens)
        if best.prompt_tokens and best.cached_tokens > self.cache_threshold * best.prompt_tokens:
            top = [c for c in cands if c.cached_tokens == best.cached_tokens]
            return min((load[c.name], rng.random(), c.name) for c in top)[2]
        return min((c.cache_blocks, rng.random(), c.name) for c in cands)[2]


POLICIES: dict[str, Policy] = {
    p.name: p
    for p in (Rumor(), P2C(), LeastLoaded(), Random(), RoundRobin(), RumorPrefix(), CacheAware())
}


def policy(name: str) -> Policy:
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown router policy {name!r}; have {', '.join(POLICIES)}") from None
