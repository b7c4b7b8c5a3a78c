"""Decentralized placement on real daemons: the catalog and replica targets are
CRDTs; every node computes the same rendezvous assignment and loads or unloads
its share, with hysteresis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from node.cluster.placement import assign
from node.commands import spawn_node
from tests.waiting import wait_for


@pytest.fixture(scope="module")
def nodes() -> Iterator[dict[str, str]]:
    os.environ["RUMOR_PLACEMENT_HOLD"] = "0.5"
    os.environ["RUMOR_PLACEMENT_UNLOAD_HOLD"] = "2"
    procs: list[subprocess.Popen[str]] = []
    http: dict[str, str] = {}
    try:
        first = None
        for name in ("p0", "p1", "p2"):
            proc, bound = spawn_node(name, [first] if first else [], [])
            first = first or bound["gossip"]
            procs.append(proc)
            http[name] = bound["http"]
        wait_for(
            lambda: all(
                len(httpx.get(f"http://{h}/v1/cluster").json()["members"]) == 3
                for h in http.values()
            ),
            15,
            "3 members everywhere",
        )
        yield http
    finally:
        del os.environ["RUMOR_PLACEMENT_HOLD"], os.environ["RUMOR_PLACEMENT_UNLOAD_HOLD"]
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)


NOT_YET = (httpx.HTTPError, KeyError)  # the model is not in the placement view yet


def placement(http: str) -> dict:
    return httpx.get(f"http://{http}/v1/cluster").json()["placement"]


def test_targets_are_met_by_the_assigned_nodes_and_lowered_without_thrash(
    nodes: dict[str, str],
) -> None:
    api = f"http://{nodes['p1']}"
    r = httpx.post(f"{api}/v1/catalog", json={"name": "pm", "source": "builtin:mlp"})
    assert r.status_code == 201, r.text
    assert httpx.put(f"{api}/v1/catalog/pm/replicas", json={"replicas": 2}).status_code == 200
    expect = assign({"pm": 2}, {n: 1.0 for n in nodes})["pm"]

    def met() -> bool:
        views = [placement(h)["pm"] for h in nodes.values()]
        return all(
            v["target"] == 2 and sorted(v["ready"]) == sorted(expect) == sorted(v["assigned"])
            for v in views
        )

    took = wait_for(
        met, 30, "2 ready replicas on the assigned nodes, seen everywhere", errors=NOT_YET
    )
    print(f"placement converged {took:.2f} s after the change")
    # Served through the node that holds no replica.
    spare = next(n for n in nodes if n not in expect)
    x = {"name": "input", "shape": [1, 256], "datatype": "FP32", "data": [0.0] * 256}
    r = httpx.post(f"http://{nodes[spare]}/v2/models/pm/infer", json={"inputs": [x]})
    assert r.status_code == 200 and r.headers["x-rumor-served-by"] in expect

    out = subprocess.run(
        [sys.executable, "-m", "node.cli", "status", "--http", nodes["p0"]],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "target against actual" in out.stdout and "pm" in out.stdout

    assert httpx.put(f"{api}/v1/catalog/pm/replicas", json={"replicas": 1}).status_code == 200
    keep = assign({"pm": 1}, {n: 1.0 for n in nodes})["pm"]
    time.sleep(1.0)  # within the unload hold: nothing is unloaded yet (hysteresis)
    assert sorted(placement(nodes["p0"])["pm"]["ready"]) == sorted(expect)
    wait_for(
        lambda: all(placement(h)["pm"]["ready"] == keep for h in nodes.values()),
        30,
        "the replica beyond the new target unloaded",
        errors=NOT_YET,
    )
