"""Real `rumor node` processes on loopback, driven over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from node.localcluster import LocalCluster, read_line
from node.store import NodeStore
from tests.waiting import wait_for

MLP = {"inputs": [{"name": "input", "shape": [1, 256], "datatype": "FP32", "data": [0.5] * 256}]}


def view(http: str) -> dict:
    return httpx.get(f"http://{http}/v1/cluster", timeout=5).json()


def status_of(http: str, member: str) -> str | None:
    for m in view(http)["members"]:
        if m["name"] == member:
            return m["status"]
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("cluster")) as c:
        c.start("n0", models=["mlp=builtin:mlp"])
        c.start("n1", models=["transformer=builtin:transformer"], join=["n0"])
        c.start("n2", join=["n0"])
        for n in ("n0", "n1", "n2"):
            c.wait_for(
                lambda n=n: c.alive_members(n) == {"n0", "n1", "n2"}, 30, f"{n} sees 3 alive"
            )
        for model in ("mlp", "transformer"):
            c.wait_for(
                lambda m=model: httpx.get(c.url("n2", f"/v2/models/{m}/ready")).status_code == 200,
                60,
                f"{model} ready as seen from n2",
            )
        yield c


def test_three_nodes_converge(cluster: LocalCluster) -> None:
    views = [view(cluster.http(n)) for n in ("n0", "n1", "n2")]
    for v in views:
        assert {m["name"] for m in v["members"]} == {"n0", "n1", "n2"}
        models = {m["name"]: m["models"] for m in v["members"]}
        assert models["n0"]["mlp"]["state"] == "ready"
        assert models["n1"]["transformer"]["state"] == "ready"
        assert all(m["age_s"] is not None and "evidence" in m for m in v["members"])


def test_request_to_a_node_without_the_model_is_forwarded(cluster: LocalCluster) -> None:
    r = httpx.post(
        f"http://{cluster.http('n2')}/v2/models/mlp/infer",
        json=MLP,
        headers={"x-rumor-trace-id": "trace-123"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["parameters"]["served_by"] == "n0"
    assert r.headers["x-rumor-served-by"] == "n0"
    assert r.headers["x-rumor-trace-id"] == "trace-123"  # propagated across the hop
    assert body["outputs"][0]["shape"] == [1, 16]


@pytest.mark.parametrize(
    "body,status,words",
    [
        (b"{not json", 400, "not valid JSON"),
        (
            json.dumps(
                {
                    "inputs": [
                        {"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}
                    ]
                }
            ).encode(),
            400,
            "shape",
        ),
        (
            json.dumps(
                {"inputs": [{"name": "input", "shape": [1, 256], "datatype": "FP32", "data": [1]}]}
            ).encode(),
            400,
            "needs 256",
        ),
        (json.dumps({"inputs": "x"}).encode(), 400, "inputs"),
        (b"[" + b"0," * 9_000_000 + b"0]", 413, "exceeds"),
    ],
)
def test_bad_requests_get_a_clear_4xx(
    cluster: LocalCluster, body: bytes, status: int, words: str
) -> None:
    r = httpx.post(
        f"http://{cluster.http('n0')}/v2/models/mlp/infer",
        content=body,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == status
    assert words in r.json()["error"]


def test_unknown_model_is_404(cluster: LocalCluster) -> None:
    r = httpx.post(f"http://{cluster.http('n1')}/v2/models/nope/infer", json=MLP)
    assert r.status_code == 404 and "nope" in r.json()["error"]


def test_real_v2_client_library(cluster: LocalCluster) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=cluster.http("n1"))
    assert client.is_server_live()
    assert client.is_model_ready("mlp")
    inp = triton.InferInput("input", [2, 256], "FP32")
    inp.set_data_from_numpy(np.ones((2, 256), dtype=np.float32), binary_data=False)
    out = triton.InferRequestedOutput("output", binary_data=False)
    result = client.infer("mlp", [inp], outputs=[out])
    assert result.as_numpy("output").shape == (2, 16)


def test_metrics_are_prometheus_text(cluster: LocalCluster) -> None:
    text = httpx.get(f"http://{cluster.http('n0')}/metrics").text
    for name in (
        "rumor_requests_waiting",
        "rumor_requests_running",
        "rumor_gossip_bytes_sent_total",
        'rumor_members{status="alive"}',
        "rumor_request_duration_seconds",
    ):
        assert name in text


def test_kill_9_then_restart_with_a_new_generation(cluster: LocalCluster) -> None:
    gen_before = next(
        m["generation"] for m in view(cluster.http("n1"))["members"] if m["name"] == "n0"
    )
    cluster.kill("n0")
    took = wait_for(
        lambda: (
            status_of(cluster.http("n1"), "n0") == "dead"
            and status_of(cluster.http("n2"), "n0") == "dead"
        ),
        60,
        "n0 declared dead",
    )
    print(f"n0 declared dead by n1 and n2 {took:.2f} s after its SIGKILL")
    # No routing to the dead node: the only mlp replica is gone.
    r = httpx.post(f"http://{cluster.http('n2')}/v2/models/mlp/infer", json=MLP, timeout=10)
    assert r.status_code == 503 and r.headers.get("retry-after")
    # Restart with the same data dir: a new generation, ready again, routed to again.
    cluster.start("n0", models=["mlp=builtin:mlp"], join=["n1"])
    wait_for(lambda: status_of(cluster.http("n2"), "n0") == "alive", 60, "n0 rejoins")
    gen_after = next(
        m["generation"] for m in view(cluster.http("n2"))["members"] if m["name"] == "n0"
    )
    assert gen_after > gen_before
    wait_for(
        lambda: (
            httpx.post(
                f"http://{cluster.http('n2')}/v2/models/mlp/infer", json=MLP, timeout=10
            ).status_code
            == 200
        ),
        60,
        "mlp served again",
    )


def test_sigterm_shuts_down_cleanly(tmp_path: Path) -> None:
    with LocalCluster(tmp_path) as c:  # reaps the daemon whatever happens
        c.start("solo")
        assert httpx.get(c.url("solo", "/v2/health/live")).status_code == 200
        assert c.stop("solo", grace=60) == 0


def test_tags_events_and_admin_guard(cluster: LocalCluster) -> None:
    got: list[dict] = []
    connected = threading.Event()

    def listen() -> None:
        with httpx.stream("GET", cluster.url("n2", "/v1/events"), timeout=60) as r:
            connected.set()  # subscribed: the stream's headers came back
            for line in r.iter_lines():
                if line.startswith("data: "):
                    item = json.loads(line[6:])
                    got.append(item)
                    if (
                        item["type"] == "member-update"
                        and item["member"] == "n1"
                        and "tags" in item.get("keys", [])
                    ):
                        return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    assert connected.wait(30), "the event stream did not open"
    big = {f"k{i}": "v" * 100 for i in range(20)}  # 2 KB of tags: past Serf's 512 bytes
    r = httpx.put(f"http://{cluster.http('n1')}/v1/node/tags", json=big)
    assert r.status_code == 200, r.text
    t.join(60)
    ev = [e for e in got if e["member"] == "n1" and "tags" in e.get("keys", [])]
    assert ev and ev[0]["type"] == "member-update" and isinstance(ev[0]["time"], float)
    wait_for(
        lambda: (
            next(m for m in view(cluster.http("n0"))["members"] if m["name"] == "n1")["tags"] == big
        ),
        30,
        "tags everywhere",
    )
    r = httpx.put(f"http://{cluster.http('n1')}/v1/node/tags", json={"k": 1})
    assert r.status_code == 400


def test_catalog_survives_kill_9_of_every_node(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    extra = ["--admin-token-file", str(token)]
    with LocalCluster(tmp_path) as c:
        c.start("a", extra=extra)
        c.start("b", join=["a"], extra=extra)
        base = c.url("a", "")
        spec = {"name": "enc", "source": "builtin:transformer", "max_batch_size": 8}
        assert httpx.post(f"{base}/v1/catalog", json=spec).status_code == 401
        auth = {"authorization": "Bearer s3cret"}
        assert httpx.post(f"{base}/v1/catalog", json=spec, headers=auth).status_code == 201
        assert httpx.post(f"{base}/v1/catalog", json={"name": "x"}, headers=auth).status_code == 400
        r = httpx.put(f"{base}/v1/catalog/enc/replicas", json={"replicas": 2}, headers=auth)
        assert r.status_code == 200
        r = httpx.put(f"{base}/v1/node/tags", json={"zone": "eu-1"}, headers=auth)
        assert r.status_code == 200

        def saved_by_b() -> bool:  # b got it by gossip and wrote it to its data dir
            state = NodeStore(str(c.workdir / "b")).cluster_state()
            return state is not None and state[1].value == {"enc": 2}

        wait_for(saved_by_b, 30, "the catalog gossiped to b and saved there")
        c.kill("a")
        c.kill("b")
        # Restart both: nothing an operator wrote is lost.
        c.start("a", extra=extra)
        c.start("b", join=["a"], extra=extra)
        for n in ("a", "b"):
            models = httpx.get(c.url(n, "/v1/catalog")).json()
            assert models["catalog"]["enc"]["source"] == "builtin:transformer"
            assert models["replicas"] == {"enc": 2}
        wait_for(
            lambda: (
                next(m for m in view(c.http("b"))["members"] if m["name"] == "a").get("tags")
                == {"zone": "eu-1"}
            ),
            30,
            "a's tags restored and gossiped",
        )


def test_rumor_demo_exits_zero() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    proc = subprocess.Popen(
        [sys.executable, "-m", "node.cli", "demo", "--requests", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        # SIGINT: the demo stops its daemons (they run in sessions of their
        # own, out of reach of a kill of the demo's group) before it exits.
        os.killpg(proc.pid, signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate(timeout=10)
        raise AssertionError(f"rumor demo did not finish within 240 s: {out[-2000:]}") from None
    assert proc.returncode == 0, out[-4000:]
    assert "all daemons stopped cleanly" in out


def test_status_and_infer_commands(
    cluster: LocalCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    from node.cli import main

    assert main(["status", "--http", cluster.http("n2"), "--json"]) == 0
    view_json = json.loads(capsys.readouterr().out)
    assert view_json["self"] == "n2" and len(view_json["members"]) == 3
    assert main(["status", "--http", cluster.http("n2")]) == 0
    table = capsys.readouterr().out
    assert "transformer" in table and "ready" in table and "alive" in table
    assert main(["infer", "--http", cluster.http("n2"), "transformer"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["parameters"]["served_by"] == "n1"


def test_rumor_up_starts_and_stops_a_cluster() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    proc = subprocess.Popen(
        [sys.executable, "-m", "node.cli", "up", "--nodes", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        lines = [read_line(proc.stdout, 120) for _ in range(2)]
        assert all(lines), f"rumor up printed no addresses: {lines}"
        nodes = [json.loads(line) for line in lines]
        wait_for(lambda: len(view(nodes[1]["http"])["members"]) == 2, 30, "2 members")
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            raise AssertionError("rumor up ignored SIGINT") from None
        assert code == 0
        for n in nodes:  # every daemon is gone
            with pytest.raises(httpx.HTTPError):
                httpx.get(f"http://{n['http']}/v2/health/live", timeout=1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # rumor up stops its daemons on SIGINT
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_pathological_json_is_a_400_not_a_500(cluster: LocalCluster) -> None:
    r = httpx.post(
        f"http://{cluster.http('n0')}/v2/models/mlp/infer",
        content=b"[" * 200_000,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    spec = {"name": "m", "source": "builtin:mlp", "max_batch_size": [1]}
    r = httpx.post(f"http://{cluster.http('n0')}/v1/catalog", json=spec, timeout=10)
    assert r.status_code == 400 and "max_batch_size" in r.json()["error"]
