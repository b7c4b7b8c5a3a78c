"""The router policy: which ready replica gets a request. Pure: no I/O, no clock,
no global random, so the daemon (node/daemon.py) and the simulator
(`rumor sim routing`, sim/routing.py) run exactly this code.

Every router sees load only through gossip, seconds old. "Send to the least
loaded" then herds every router onto the same node. So:

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
  candidates: the caller passes only ready replicas on alive members.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass


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


def pick(
    candidates: Sequence[Candidate],
    rng: random.Random,
    d: int = 2,
    local_margin: float = 1.0,
) -> Candidate | None:
    """Power-of-d choices with random tie-breaks, preferring the local replica
    unless it is worse than the best sampled by more than `local_margin`."""
    if not candidates:
        return None
    sample = rng.sample(list(candidates), min(d, len(candidates)))
    best = min(sample, key=lambda c: (estimate(c), rng.random()))
    local = next((c for c in candidates if c.local), None)
    if local is not None and estimate(local) <= estimate(best) + local_margin:
        return local
    return best
