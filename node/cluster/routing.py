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

The other policies are baselines for side-by-side measurements: `p2c` (power
of two choices on the stale reports alone), `least_loaded` (the shortest
reported queue: the one that herds), `random`, `round_robin`.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .view import ClusterView, num


@dataclass(frozen=True, slots=True)
class Candidate:
    name: str
    #: Requests waiting or running there, as its last gossiped report said.
    queue: float = 0.0
    #: Age of that report, seconds.
    age_s: float = 0.0
    #: Its mean service time per request (its gossiped EWMA); 0 if unknown.
    service_s: float = 0.0
    #: Requests every other router has in flight there (as gossiped, each
    #: router's count drained for its age like a load report).
    others_inflight: float = 0.0
    #: Ours, exact.
    own_inflight: int = 0
    #: Our sends there since its report.
    own_sent_since: int = 0
    local: bool = False


def drain(count: float, age_s: float, service_s: float) -> float:
    """A gossiped count of requests `age_s` old, less those served since at one
    per `service_s` (unknown service time: as reported)."""
    if service_s <= 0:
        return count
    return max(0.0, count - age_s / service_s)


def estimate(c: Candidate) -> float:
    """Expected requests ahead of a new one at `c`.

    The three views overlap (a request in flight from a router is also in
    the node's queue once it arrives), so they are not added: the report,
    drained for its age and topped up with our sends since, is one view;
    the routers' in-flight counts, ours exact, the other. The larger wins:
    the report sees work the counts miss, the counts see sends newer than
    the report.
    """
    drained = drain(c.queue, c.age_s, c.service_s)
    return max(drained + c.own_sent_since, c.others_inflight + c.own_inflight)


@dataclass
class RouterState:
    """One router's own bookkeeping: exact, never gossiped except `inflight`."""

    #: Our requests in flight, per destination (gossiped in our record).
    inflight: dict[str, int] = field(default_factory=dict)
    #: When we sent to each destination, since the last report we saw from it.
    sends: dict[str, deque[float]] = field(default_factory=dict)
    rr: int = 0

    def note_sent(self, dest: str, now: float) -> None:
        self.inflight[dest] = self.inflight.get(dest, 0) + 1
        self.sends.setdefault(dest, deque()).append(now)

    def note_done(self, dest: str) -> None:
        left = self.inflight.get(dest, 0) - 1
        if left > 0:
            self.inflight[dest] = left
        else:
            self.inflight.pop(dest, None)

    def sends_since(self, dest: str, report_at: float) -> int:
        """Our sends to `dest` after its report (earlier ones it has counted)."""
        q = self.sends.get(dest)
        if not q:
            return 0
        while q and q[0] <= report_at:
            q.popleft()
        return len(q)


class CandidateBuilder:
    """Builds (once each) the candidate for a name, from a view and our state:
    a policy that samples builds only the candidates it samples. Our own
    replica, given `local_queue`, is judged on its exact local queue."""

    def __init__(
        self,
        view: ClusterView,
        state: RouterState,
        me: str,
        now: float,
        local_queue: float | None = None,
    ) -> None:
        self.view, self.state, self.me, self.now = view, state, me, now
        self.local_queue = local_queue
        self._built: dict[str, Candidate] = {}

    def __call__(self, name: str) -> Candidate:
        c = self._built.get(name)
        if c is None:
            c = self._built[name] = self._build(name)
        return c

    def queue(self, name: str) -> float:
        """Only the reported queue (what the baselines look at): cheap."""
        if name == self.me and self.local_queue is not None:
            return self.local_queue
        r = self.view.report(name)
        return r.queue if r is not None else 0.0

    def _build(self, name: str) -> Candidate:
        if name == self.me and self.local_queue is not None:
            return Candidate(name, queue=self.local_queue, local=True)
        r = self.view.report(name)
        if r is None:
            return Candidate(name, own_inflight=self.state.inflight.get(name, 0))
        return Candidate(
            name,
            queue=r.queue,
            age_s=max(0.0, self.now - r.at),
            service_s=r.service_s,
            others_inflight=others_inflight(self.view, self.me, name, r.service_s, self.now),
            own_inflight=self.state.inflight.get(name, 0),
            own_sent_since=self.state.sends_since(name, r.at),
        )


def others_inflight(view: ClusterView, me: str, dest: str, service_s: float, now: float) -> float:
    """What every other router has in flight at `dest`, from their gossiped
    counts, each drained for its age like a load report."""
    total = 0.0
    for router, counts, at in view.inflight_reports():
        if router != me:
            n = num(counts.get(dest))
            if n:
                total += drain(n, now - at, service_s)
    return total


# -- policies ---------------------------------------------------------------------


class Builder(Protocol):
    """Candidates on demand: the whole candidate, or only its reported queue."""

    def __call__(self, name: str) -> Candidate: ...

    def queue(self, name: str) -> float: ...


class Given:
    """A Builder over candidates already built (tests, tools)."""

    def __init__(self, cands: Sequence[Candidate]) -> None:
        self.by_name = {c.name: c for c in cands}

    def __call__(self, name: str) -> Candidate:
        return self.by_name[name]

    def queue(self, name: str) -> float:
        return self.by_name[name].queue


class Policy(Protocol):
    """Choose one of `names` (never empty); `cand` builds a name's candidate
    on demand, so a policy that samples builds only what it samples."""

    name: str

    def choose(
        self,
        names: Sequence[str],
        cand: Builder,
        rng: random.Random,
        state: RouterState,
        local: str | None = None,
        local_margin: float = 1.0,
    ) -> str: ...


@dataclass(frozen=True)
class Rumor:
    """Power-of-d choices on `estimate`, random ties, the local replica kept
    within `local_margin`."""

    d: int = 2
    name: str = "rumor"

    def choose(
        self,
        names: Sequence[str],
        cand: Builder,
        rng: random.Random,
        state: RouterState,
        local: str | None = None,
        local_margin: float = 1.0,
    ) -> str:
        sample = rng.sample(list(names), min(self.d, len(names)))
        scored = [(estimate(cand(n)), rng.random(), n) for n in sample]
        best_est, _, best = min(scored)
        if local is None or local not in names:
            return best
        return local if estimate(cand(local)) <= best_est + local_margin else best


@dataclass(frozen=True)
class P2C:
    """Power of two choices on the reported queues alone (stale, undrained)."""

    name: str = "p2c"

    def choose(
        self,
        names: Sequence[str],
        cand: Builder,
        rng: random.Random,
        state: RouterState,
        local: str | None = None,
        local_margin: float = 1.0,
    ) -> str:
        sample = rng.sample(list(names), min(2, len(names)))
        return min((cand.queue(n), rng.random(), n) for n in sample)[2]


@dataclass(frozen=True)
class LeastLoaded:
    """The shortest reported queue, random ties: what herds on stale reports."""

    name: str = "least_loaded"

    def choose(
        self,
        names: Sequence[str],
        cand: Builder,
        rng: random.Random,
        state: RouterState,
        local: str | None = None,
        local_margin: float = 1.0,
    ) -> str:
        queues = [(cand.queue(n), n) for n in names]
        best = min(q for q, _ in queues)
        return rng.choice([n for q, n in queues if q == best])


@dataclass(frozen=True)
class Random:
    name: str = "random"

    def choose(
        self,
        names: Sequence[str],
        cand: Builder,
        rng: random.Random,
        state: RouterState,
        local: str | None = None,
        local_margin: float = 1.0,
    ) -> str:
        return rng.choice(list(names))


@dataclass(frozen=True)
class RoundRobin:
    name: str = "round_robin"

    def choose(
        self,
        names: Sequence[str],
        cand: Builder,
        rng: random.Random,
        state: RouterState,
        local: str | None = None,
        local_margin: float = 1.0,
    ) -> str:
        state.rr += 1
        return names[state.rr % len(names)]


POLICIES: dict[str, Policy] = {
    p.name: p for p in (Rumor(), P2C(), LeastLoaded(), Random(), RoundRobin())
}


def policy(name: str) -> Policy:
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown router policy {name!r}; have {', '.join(POLICIES)}") from None
