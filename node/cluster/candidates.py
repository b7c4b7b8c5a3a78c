"""A policy's inputs: one candidate replica as a router sees it (`Candidate`),
the load estimate (`estimate`), the router's own bookkeeping (`RouterState`)
and the builder that makes candidates from a view (`CandidateBuilder`).

Load. Every router sees load only through gossip, seconds old, so a
candidate's load is estimated from three views of it: its last reported
queue, drained at its service rate for the report's age; the requests every
other router has in flight there (each router gossips its per-destination
in-flight counts in its own record: a per-origin counter map that nobody else
writes, so nothing needs pruning); and this router's own in-flight requests
and sends since the report, known exactly.

Prefix. For an LLM request the builder also reads, from the replica's
gossiped prefix summary (node/cluster/prefix.py), how many of the prompt's
tokens it holds in its KV cache.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from .prefix import PrefixRequest, Scheme, Summary
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
    #: LLM requests: the prompt's length, and how much of it the replica's
    #: prefix summary says it holds (0 when unknown or not an LLM request).
    prompt_tokens: int = 0
    cached_tokens: int = 0
    #: Blocks its cache holds in all (SGLang's "tree size"); 0 if unknown.
    cache_blocks: int = 0

    @property
    def uncached_tokens(self) -> int:
        """Prompt tokens it would have to prefill."""
        return max(0, self.prompt_tokens - self.cached_tokens)


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
    #: Prompt tokens the requests we routed had to prefill (an EWMA): what one
    #: request queued ahead costs, in the prefix policy's unit. 0: none yet.
    uncached_ewma: float = 0.0

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

    def note_uncached(self, tokens: int, weight: float = 0.1) -> None:
        if self.uncached_ewma <= 0:
            self.uncached_ewma = float(tokens)
        else:
            self.uncached_ewma += weight * (tokens - self.uncached_ewma)


class PrefixView(Protocol):
    """Where a replica's prefix summary of a model comes from (the gossip view,
    or the simulator's model of it)."""

    def prefix_summary(self, name: str, model: str) -> tuple[Scheme, Summary] | None: ...


class CandidateBuilder:
    """Builds (once each) the candidate for a name, from a view and our state:
    a policy that samples builds only the candidates it samples. Our own
    replica, given `local_queue`, is judged on its exact local queue. Given an
    LLM request's `prefix` and a view of summaries, each candidate also says
    how much of the prompt it holds."""

    def __init__(
        self,
        view: ClusterView,
        state: RouterState,
        me: str,
        now: float,
        local_queue: float | None = None,
        prefix: PrefixRequest | None = None,
        summaries: PrefixView | None = None,
    ) -> None:
        self.view, self.state, self.me, self.now = view, state, me, now
        self.local_queue = local_queue
        self.prefix, self.summaries = prefix, summaries
        self._built: dict[str, Candidate] = {}
        self._level = 0  # the highest summary level among the candidates built

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
        c = self._load(name)
        if self.prefix is None:
            return c
        prompt, cached, blocks = self._prefix(self.prefix, name)
        return replace(c, prompt_tokens=prompt, cached_tokens=cached, cache_blocks=blocks)

    def _load(self, name: str) -> Candidate:
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

    def affinity(self, tokens: int) -> int | None:
        """A key for the request's own content past its first `tokens` (a match
        read from summaries): the hash of the first block past them that a
        summary would have kept had any replica held it, so a block past the
        prefix the replicas share, and the same for every step of a session
        (its chain only grows). None for a request without a prefix."""
        req = self.prefix
        if req is None or not req.chains:
            return None
        scheme = min(req.chains)
        chain = req.chains[scheme]
        if not chain:
            return None
        for pos in req.sampled_positions(scheme, self._level):
            if (pos + 1) * scheme[0] > tokens:
                return chain[pos]
        return chain[-1]

    def _prefix(self, req: PrefixRequest, name: str) -> tuple[int, int, int]:
        """(prompt tokens, of which cached there, its cache's blocks)."""
        found = self.summaries.prefix_summary(name, req.model) if self.summaries else None
        if found is None:
            return req.prompt_tokens, 0, 0
        scheme, summary = found
        self._level = max(self._level, summary.level)
        return req.prompt_tokens, req.matched_tokens(scheme, summary), summary.blocks


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


class Builder(Protocol):
    """Candidates on demand: the whole candidate, or only its reported queue."""

    def __call__(self, name: str) -> Candidate: ...

    def queue(self, name: str) -> float: ...

    def affinity(self, tokens: int) -> int | None: ...


class Given:
    """A Builder over candidates already built (tests, tools)."""

    def __init__(self, cands: Sequence[Candidate]) -> None:
        self.by_name = {c.name: c for c in cands}

    def __call__(self, name: str) -> Candidate:
        return self.by_name[name]

    def queue(self, name: str) -> float:
        return self.by_name[name].queue

    def affinity(self, tokens: int) -> int | None:
        return None
