"""bench/fuzz_daemons.py with a CI-sized budget (RUMOR_FUZZ_BUDGET, default 20,000
datagrams; the benchmark runs 1,000,000) against three running daemons."""

from __future__ import annotations

import os

from bench.fuzz_daemons import run_fuzz


def test_fuzzed_daemons_survive_account_for_everything_and_keep_state() -> None:
    budget = int(os.environ.get("RUMOR_FUZZ_BUDGET", "20000"))
    r = run_fuzz(budget, seed=7, http_requests=300)
    assert r["daemons_alive"]
    un, auth = r["unauthenticated"], r["authenticated"]
    assert un["state_unchanged"], "unauthenticated input changed the cluster state"
    assert un["sent"] == un["counted_dropped"] and un["unaccounted"] == 0, un
    assert auth["unaccounted"] == 0 and auth["handler_errors"] == 0, auth
    assert auth["dropped"] > 0 and auth["handled"] > 0  # both paths were exercised
    assert r["http"].get("server_errors", 0) == 0, r["http"]
    # A dropped connection is recorded with its request (r["http"]["findings"]);
    # only a request the daemon does not answer on a fresh connection either fails.
    assert r["http"].get("unanswered", 0) == 0, r["http"].get("findings")
    assert r["http"].get("4xx", 0) > 0
    assert r["converged_and_serving"], r.get("final_views")
