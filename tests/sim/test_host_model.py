"""The simulator's host model: CPU shared by every node on one machine."""

from __future__ import annotations

import pytest

from sim.runner import run_scenario
from sim.scenario import Scenario, ScenarioError


def _run(**kw: object) -> dict:
    return run_scenario(Scenario(nodes=20, seed=3, duration=8, updates_every=1.0, **kw))


def test_messages_wait_for_a_core_and_for_their_node() -> None:
    free = _run()
    busy = _run(cores=1, cpu_us=2000)  # 2 ms per message on one core for 20 nodes
    assert busy["dissemination"]["p50_s"] > free["dissemination"]["p50_s"] + 0.004
    assert busy["converged"] and busy["false_deaths"] == 0


def test_host_model_is_deterministic() -> None:
    a, b = _run(cores=2, cpu_us=500), _run(cores=2, cpu_us=500)
    assert a["trace_hash"] == b["trace_hash"]
    assert a["trace_hash"] != _run()["trace_hash"]


def test_bad_host_model_is_a_scenario_error() -> None:
    with pytest.raises(ScenarioError, match="cores"):
        Scenario(cores=-1)
    with pytest.raises(ScenarioError, match="cpu_us"):
        Scenario(cores=2, cpu_us=-5.0)
