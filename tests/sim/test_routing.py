"""The routing model reproduces the stale-information trap and its cure."""

from __future__ import annotations

import pytest

from sim.routing import POLICIES, simulate


def test_stale_least_loaded_herds_and_power_of_two_does_not() -> None:
    # 100 nodes at load 0.9, load reports 10 service times old (BRIEF's toy table:
    # least-loaded 23.3, random 10.0, best of 2 5.1 mean service times).
    kw = dict(nodes=100, routers=1, load=0.9, interval_s=1.0, service_s=0.1, requests=30_000)
    mean = {
        p: simulate(p, **kw).mean_s / 0.1
        for p in ("random", "least_loaded", "p2c", "rumor", "oracle_jsq")
    }
    assert mean["least_loaded"] > mean["random"] > mean["p2c"]
    assert mean["rumor"] <= mean["p2c"]
    assert mean["oracle_jsq"] < 1.5
    assert 3.5 < mean["p2c"] < 7


def test_results_are_deterministic_and_complete() -> None:
    a = simulate("rumor", routers=10, requests=5_000, seed=3)
    b = simulate("rumor", routers=10, requests=5_000, seed=3)
    assert a == b and a.served > 4_000 and a.rejected == 0
    assert set(a.to_json()) >= {
        "policy",
        "routers",
        "load",
        "interval_s",
        "mean_s",
        "p99_s",
        "rejected",
    }


def test_unknown_policy_is_refused() -> None:
    assert "rumor" in POLICIES
    with pytest.raises(ValueError, match="unknown policy"):
        simulate("fastest")


def test_cli_json_contract(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from node.cli import main

    rc = main(
        [
            "sim",
            "routing",
            "--routers",
            "2",
            "--load",
            "0.5",
            "--interval",
            "1",
            "--requests",
            "2000",
            "--json",
        ]
    )
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    names = {r["policy"] for r in d["results"]}
    assert names == {
        "random",
        "round_robin",
        "least_loaded",
        "p2c",
        "p2c_fresh",
        "rumor",
        "oracle_jsq",
    }
    for r in d["results"]:
        assert set(r) >= {"policy", "routers", "load", "interval_s", "mean_s", "p99_s", "rejected"}
    assert main(["sim", "routing", "--policies", "nope"]) == 2
