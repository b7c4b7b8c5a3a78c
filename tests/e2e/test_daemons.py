"""Real `rumor node` processes on loopback, driven over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from node.commands import spawn_node
from tests.waiting import wait_for

MLP = {"inputs": [{"name": "input", "shape": [1, 256], "datatype": "FP32", "data": [0.5] * 256}]}


def view(http: str) -> dict:
    return httpx.get(f"http://{http}/v1/cluster", timeout=5).json()


def status_of(http: str, member: str) -> str | None:
    for m in view(http)["members"]:
        if m["name"] == member:
            return m["status"]
    return None


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.bound: dict[str, dict[str, str]] = {}

    def start(
        self, name: str, models: list[str], join: list[str], extra: list[str] | None = None
    ) -> dict[str, str]:
        proc, bound = spawn_node(
            name, join, models, ["--data-dir", str(self.tmp / name), *(extra or [])]
        )
        self.procs[name], self.bound[name] = proc, bound
        return bound

    def http(self, name: str) -> str:
        return self.bound[name]["http"]

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        first = c.start("n0", ["mlp=builtin:mlp"], [])
        c.start("n1", ["transformer=builtin:transformer"], [first["gossip"]])
        c.start("n2", [], [first["gossip"]])
        for n in ("n0", "n1", "n2"):
            wait_for(
                lambda n=n: (
                    all(m["status"] == "alive" for m in view(c.http(n))["members"])
                    and len(view(c.http(n))["members"]) == 3
                ),
                15,
                f"{n} to see 3 alive members",
            )
        for model in ("mlp", "transformer"):
            wait_for(
                lambda m=model: (
                    httpx.get(f"http://{c.http('n2')}/v2/models/{m}/ready").status_code == 200
                ),
                15,
                f"{model} ready as seen from n2",
            )
        yield c
    finally:
        c.stop_all()


def test_three_nodes_converge(cluster: Cluster) -> None:
    views = [view(cluster.http(n)) for n in ("n0", "n1", "n2")]
    for v in views:
        assert {m["name"] for m in v["members"]} == {"n0", "n1", "n2"}
        models = {m["name"]: m["models"] for m in v["members"]}
        assert models["n0"]["mlp"]["state"] == "ready"
        assert models["n1"]["transformer"]["state"] == "ready"
        assert all(m["age_s"] is not None and "evidence" in m for m in v["members"])


def test_request_to_a_node_without_the_model_is_forwarded(cluster: Cluster) -> None:
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
    cluster: Cluster, body: bytes, status: int, words: str
) -> None:
    r = httpx.post(
        f"http://{cluster.http('n0')}/v2/models/mlp/infer",
        content=body,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == status
    assert words in r.json()["error"]


def test_unknown_model_is_404(cluster: Cluster) -> None:
    r = httpx.post(f"http://{cluster.http('n1')}/v2/models/nope/infer", json=MLP)
    assert r.status_code == 404 and "nope" in r.json()["error"]


def test_real_v2_client_library(cluster: Cluster) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=cluster.http("n1"))
    assert client.is_server_live()
    assert client.is_model_ready("mlp")
    inp = triton.InferInput("input", [2, 256], "FP32")
    inp.set_data_from_numpy(np.ones((2, 256), dtype=np.float32), binary_data=False)
    out = triton.InferRequestedOutput("output", binary_data=False)
    result = client.infer("mlp", [inp], outputs=[out])
    assert result.as_numpy("output").shape == (2, 16)


def test_metrics_are_prometheus_text(cluster: Cluster) -> None:
    text = httpx.get(f"http://{cluster.http('n0')}/metrics").text
    for name in (
        "rumor_requests_waiting",
        "rumor_requests_running",
        "rumor_gossip_bytes_sent_total",
        'rumor_members{status="alive"}',
        "rumor_request_duration_seconds",
    ):
        assert name in text


def test_kill_9_then_restart_with_a_new_generation(cluster: Cluster) -> None:
    gen_before = next(
        m["generation"] for m in view(cluster.http("n1"))["members"] if m["name"] == "n0"
    )
    os.killpg(cluster.procs["n0"].pid, signal.SIGKILL)
    cluster.procs["n0"].wait(10)
    t0 = time.monotonic()
    wait_for(
        lambda: (
            status_of(cluster.http("n1"), "n0") == "dead"
            and status_of(cluster.http("n2"), "n0") == "dead"
        ),
        15,
        "n0 declared dead",
    )
    assert time.monotonic() - t0 < 10
    # No routing to the dead node: the only mlp replica is gone.
    r = httpx.post(f"http://{cluster.http('n2')}/v2/models/mlp/infer", json=MLP, timeout=10)
    assert r.status_code == 503 and r.headers.get("retry-after")
    # Restart with the same data dir: a new generation, ready again, routed to again.
    cluster.start("n0", ["mlp=builtin:mlp"], [cluster.bound["n1"]["gossip"]])
    wait_for(lambda: status_of(cluster.http("n2"), "n0") == "alive", 15, "n0 rejoins")
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
        15,
        "mlp served again",
    )


def test_sigterm_shuts_down_cleanly(tmp_path: Path) -> None:
    proc, bound = spawn_node("solo", [], [])
    assert httpx.get(f"http://{bound['http']}/v2/health/live").status_code == 200
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0


def test_tags_events_and_admin_guard(cluster: Cluster) -> None:
    import threading

    got: list[dict] = []

    def listen() -> None:
        with httpx.stream("GET", f"http://{cluster.http('n2')}/v1/events", timeout=20) as r:
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
    time.sleep(0.5)
    big = {f"k{i}": "v" * 100 for i in range(20)}  # 2 KB of tags: past Serf's 512 bytes
    r = httpx.put(f"http://{cluster.http('n1')}/v1/node/tags", json=big)
    assert r.status_code == 200, r.text
    t.join(15)
    ev = [e for e in got if e["member"] == "n1" and "tags" in e.get("keys", [])]
    assert ev and ev[0]["type"] == "member-update" and isinstance(ev[0]["time"], float)
    wait_for(
        lambda: (
            next(m for m in view(cluster.http("n0"))["members"] if m["name"] == "n1")["tags"] == big
        ),
        10,
        "tags everywhere",
    )
    r = httpx.put(f"http://{cluster.http('n1')}/v1/node/tags", json={"k": 1})
    assert r.status_code == 400


def test_catalog_survives_kill_9_of_every_node(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    extra = ["--admin-token-file", str(token)]
    c = Cluster(tmp_path)
    try:
        a = c.start("a", [], [], extra)
        c.start("b", [], [a["gossip"]], extra)
        base = f"http://{a['http']}"
        spec = {"name": "enc", "source": "builtin:transformer", "max_batch_size": 8}
        assert httpx.post(f"{base}/v1/catalog", json=spec).status_code == 401
        auth = {"authorization": "Bearer s3cret"}
        assert httpx.post(f"{base}/v1/catalog", json=spec, headers=auth).status_code == 201
        assert httpx.post(f"{base}/v1/catalog", json={"name": "x"}, headers=auth).status_code == 400
        r = httpx.put(f"{base}/v1/catalog/enc/replicas", json={"replicas": 2}, headers=auth)
        assert r.status_code == 200
        r = httpx.put(f"{base}/v1/node/tags", json={"zone": "eu-1"}, headers=auth)
        assert r.status_code == 200
        b_base = f"http://{c.bound['b']['http']}"
        wait_for(
            lambda: httpx.get(f"{b_base}/v1/catalog").json()["replicas"] == {"enc": 2},
            10,
            "catalog on b",
        )
        time.sleep(0.5)  # let b persist what it received
        for p in c.procs.values():
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)
        # Restart both: nothing an operator wrote is lost.
        a = c.start("a", [], [], extra)
        c.start("b", [], [a["gossip"]], extra)
        for n in ("a", "b"):
            models = httpx.get(f"http://{c.bound[n]['http']}/v1/catalog").json()
            assert models["catalog"]["enc"]["source"] == "builtin:transformer"
            assert models["replicas"] == {"enc": 2}
        wait_for(
            lambda: (
                next(m for m in view(c.http("b"))["members"] if m["name"] == "a").get("tags")
                == {"zone": "eu-1"}
            ),
            15,
            "a's tags restored and gossiped",
        )
    finally:
        c.stop_all()


def test_rumor_demo_exits_zero() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    r = subprocess.run(
        [os.sys.executable, "-m", "node.cli", "demo", "--requests", "60"],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "all daemons stopped cleanly" in r.stdout


def test_status_and_infer_commands(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
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
        [os.sys.executable, "-m", "node.cli", "up", "--nodes", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        nodes = [json.loads(proc.stdout.readline()) for _ in range(2)]
        wait_for(lambda: len(view(nodes[1]["http"])["members"]) == 2, 15, "2 members")
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(45)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"rumor up ignored SIGINT: {proc.stdout.read()[-2000:]}") from None
        assert code == 0
        for n in nodes:  # every daemon is gone
            with pytest.raises(httpx.HTTPError):
                httpx.get(f"http://{n['http']}/v2/health/live", timeout=1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_pathological_json_is_a_400_not_a_500(cluster: Cluster) -> None:
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
