"""The simulator: determinism, scenarios, metrics, CLI and the theory check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node.cli import main
from sim.network import SimNetwork, bootstrap
from sim.runner import run_scenario
from sim.scenario import Scenario, ScenarioError, load_scenario, scenario_from_dict
from sim.theory import rounds_to_inform_all


def test_same_seed_same_run_different_seed_different_run() -> None:
    scn = Scenario(nodes=12, duration=10, seed=4, loss=0.1)
    a, b = run_scenario(scn), run_scenario(scn)
    assert a["trace_hash"] == b["trace_hash"]
    assert a["dissemination"] == b["dissemination"]
    c = run_scenario(scn.with_overrides(seed=5))
    assert c["trace_hash"] != a["trace_hash"]


def test_a_warm_start_is_the_state_joins_reach_and_is_not_news() -> None:
    n = 12
    warm = bootstrap(n, 3)
    cold = SimNetwork(3)
    cold.add_node("node0")
    for i in range(1, n):
        cold.add_node(f"node{i}", join=["node0"])
    assert cold.run_until_true(
        lambda: cold.converged() and all(len(sn.node.live_members()) == n for sn in cold.live()),
        30.0,
    )
    # The same records, so the same state hash, and the same live members.
    assert {sn.node.state.hash for sn in warm.live()} == {cold.nodes["node0"].node.state.hash}
    for name, sn in warm.nodes.items():
        assert sorted(m.name for m in sn.node.live_members()) == sorted(
            m.name for m in cold.nodes[name].node.live_members()
        )
    # Not news: a node warm-started by hand emits no JOIN event for the
    # members it starts with. (Nor does it queue rumors of them, which only
    # its messages would show: bench/trace_hashes.py, unchanged by this.)
    fresh = SimNetwork(3)
    me = fresh.add_node("node0")
    me.take_events()
    me.warm_start([sn.node.own.delta_since(0, reset=True) for sn in warm.live()], fresh.now)
    assert len(me.live_members()) == n
    assert me.take_events() == []


def test_timeline_scenario_measures_faults(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        """
        nodes = 16
        seed = 3
        duration = 40
        [[event]]
        at = 5
        action = "kill"
        node = "node7"
        [[event]]
        at = 10
        action = "partition"
        sizes = [8, 7]
        [[event]]
        at = 20
        action = "heal"
        [[event]]
        at = 25
        action = "restart"
        node = "node7"
        [[event]]
        at = 30
        action = "pause"
        node = "node2"
        duration = 3
        """
    )
    r = run_scenario(load_scenario(path))
    assert r["failure_detection"]["observers"] == 15
    assert 0 < r["failure_detection"]["max_s"] < 3
    assert r["convergence_after_heal_s"][0] is not None
    assert r["convergence_after_heal_s"][0] < 3  # knocks on the dead every second
    assert r["converged"] and r["false_deaths"] == 0
    assert r["verdicts_across_partitions"] > 0


@pytest.mark.parametrize(
    "data,field",
    [
        ({"nodes": 0}, "nodes"),
        ({"loss": 1.5}, "loss"),
        ({"colour": "red"}, "colour"),
        ({"event": [{"at": 1, "action": "explode"}]}, "event[0].action"),
        ({"event": [{"at": 1, "action": "kill", "node": "node99"}]}, "event[0].node"),
        ({"event": [{"at": 1, "action": "pause", "node": "node1"}]}, "event[0].duration"),
        ({"event": [{"at": 999, "action": "heal"}]}, "event[0].at"),
        ({"event": [{"at": 1, "action": "partition"}]}, "event[0]"),
    ],
)
def test_bad_scenarios_name_the_field(data: dict, field: str) -> None:
    with pytest.raises(ScenarioError) as exc:
        scenario_from_dict(data)
    assert str(exc.value).startswith(field)


def test_cli_json_has_the_contract_fields(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    png = tmp_path / "run.png"
    rc = main(
        [
            "sim",
            "--nodes",
            "10",
            "--seed",
            "2",
            "--duration",
            "8",
            "--kill-at",
            "3",
            "--json",
            "--plot",
            str(png),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    d = json.loads(out)  # exactly one JSON object on stdout
    for key in (
        "nodes",
        "seed",
        "sim_seconds",
        "wall_seconds",
        "false_deaths",
        "bytes_per_node_per_s",
        "messages",
        "converged",
        "trace_hash",
    ):
        assert key in d
    assert set(d["dissemination"]) >= {"p50_s", "p99_s", "max_s", "rounds_max"}
    assert set(d["failure_detection"]) >= {"p50_s", "max_s"}
    assert d["nodes"] == 10 and d["seed"] == 2 and isinstance(d["converged"], bool)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bad_flags_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["sim", "--loss", "2"]) == 2
    assert "loss" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("nodes = [")
    assert main(["sim", "--scenario", str(bad)]) == 2
    assert "invalid TOML" in capsys.readouterr().err
    assert main(["sim", "--scenario", str(tmp_path / "missing.toml")]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["sim", "--nodes", "many"])
    assert exc.value.code == 2


def test_human_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--nodes", "8", "--duration", "5"]) == 0
    out = capsys.readouterr().out
    assert "dissemination" in out and "converged" in out


def test_theory_check_tracks_the_epidemic_bounds() -> None:
    import math

    n = 64
    push = rounds_to_inform_all(n, "push", 0)
    pull = rounds_to_inform_all(n, "push-pull", 0)
    # Push needs about log2 N + ln N rounds; push-pull about log3 N + O(ln ln N).
    assert math.log2(n) <= push <= 2 * (math.log2(n) + math.log(n))
    assert math.log(n, 3) <= pull <= math.log(n, 3) + 2 * math.log(math.log(n)) + 2
    assert pull < push


def test_a_scenarios_gossip_table_reaches_every_core(tmp_path: Path) -> None:
    from sim.scenario import ScenarioError, load_scenario

    f = tmp_path / "s.toml"
    f.write_text("nodes = 5\nduration = 2\n[gossip]\nsuspicion_max = 4.5\nfanout = 2\n")
    scn = load_scenario(f)
    g = scn.gossip_config()
    assert (g.suspicion_max, g.fanout, g.interval) == (4.5, 2, scn.interval)
    f.write_text("nodes = 5\n[gossip]\nbogus = 1\n")
    with pytest.raises(ScenarioError, match=r"gossip\.bogus"):
        load_scenario(f)
