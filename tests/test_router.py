"""node.router: the policy the daemon and `rumor sim routing` share."""

from __future__ import annotations

import random

from node.router import Candidate, estimate, pick
from sim.routing import simulate


def test_estimate_drains_the_report_and_takes_the_larger_view() -> None:
    # 10 queued, reported 0.5 s ago at 0.1 s a request: 5 left, plus our 2 sends since.
    assert estimate(Candidate("a", queue=10, age_s=0.5, service_s=0.1, own_sent_since=2)) == 7
    # In-flight counts of every router (ours exact) win when they say more.
    assert estimate(Candidate("a", queue=1, others_inflight=6, own_inflight=3)) == 9
    # No service time known: the report is not drained.
    assert estimate(Candidate("a", queue=4, age_s=9.0)) == 4


def test_pick_takes_the_better_of_two_and_breaks_ties_at_random() -> None:
    rng = random.Random(1)
    a, b = Candidate("a", queue=5), Candidate("b", queue=1)
    assert all(pick([a, b], rng) == b for _ in range(50))
    tie = [Candidate("x", queue=2), Candidate("y", queue=2)]
    assert {pick(tie, rng).name for _ in range(50)} == {"x", "y"}  # type: ignore[union-attr]
    assert pick([], rng) is None


def test_local_replica_is_kept_unless_worse_by_the_margin() -> None:
    rng = random.Random(2)
    local = Candidate("me", queue=2, local=True)
    other = Candidate("b", queue=1)
    assert pick([local, other], rng, local_margin=1.0) == local  # worse by 1: keep the hop saved
    assert pick([local, other], rng, local_margin=0.5) == other
    busy_local = Candidate("me", queue=9, local=True)
    assert pick([busy_local, other], rng, local_margin=1.0) == other


def test_targets_at_load_0_9() -> None:
    """Issue targets, CI-sized: ours <= 1.2x P2C with fresh information and
    <= 0.5x random, with 10 routers and load reports up to 1 s (10 service times) old."""
    kw = dict(nodes=100, routers=10, load=0.9, interval_s=1.0, service_s=0.1, requests=20_000)
    ours = simulate("rumor", **kw)
    assert ours.rejected == 0
    assert ours.mean_s <= 1.2 * simulate("p2c_fresh", **kw).mean_s
    assert ours.mean_s <= 0.5 * simulate("random", **kw).mean_s
