"""The daemon's own logic, in this process (no subprocess): a real Daemon
(gossip on loopback, the inference service, the publish loop) and its ASGI
app, for the paths the end-to-end tests cannot reach: unreadable state
files, the drain that cancels requests with a 503, invalid catalog specs met
by placement, the admin guard for non-loopback clients, a replica target
too large to store, and the tags rollback past the state limit."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from crdt import LWWMap
from node.catalog import REPLICAS
from node.config import NodeConfig
from node.store import NodeStore

from .inprocess import running, wait_until

MLP_ROW = {"name": "input", "shape": [1, 256], "datatype": "FP32", "data": [0.5] * 256}


def config(**kw: Any) -> NodeConfig:
    return NodeConfig(**{"name": "solo", "log_level": "warning", **kw})


# ---------------------------------------------------------------- the data dir


@pytest.mark.parametrize("damage", ["garbage", "directory"])
async def test_unreadable_state_files_are_ignored_not_fatal(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in ["generation", "cluster-state.msgpack", "members.json", "tags.json"]:
        if damage == "garbage" or name == "generation":  # the generation is written at start
            (data / name).write_bytes(b"\xc1\x00{[not what was written")
        else:  # reading raises an OSError (EISDIR), as an unreadable disk would
            (data / name).mkdir()
    caplog.set_level(logging.ERROR, logger="rumor.node")
    async with running(config(data_dir=str(data))) as (daemon, client):
        assert daemon.generation > 1_700_000_000_000  # from the wall clock: nothing read
        r = await client.get("/v1/catalog")
        assert r.status_code == 200 and r.json() == {"catalog": {}, "replicas": {}}
        assert daemon.record.tags() == {}
        assert (await client.get("/v2/health/live")).status_code == 200
    logged = " ".join(rec.getMessage() for rec in caplog.records)
    assert "unreadable" in logged, logged


async def test_a_write_after_garbage_replaces_it_atomically(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "cluster-state.msgpack").write_bytes(b"\x93garbage")
    spec = {"name": "m", "source": "builtin:mlp"}
    async with running(config(data_dir=str(data))) as (_daemon, client):
        assert (await client.post("/v1/catalog", json=spec)).status_code == 201
    saved = NodeStore(str(data)).cluster_state()
    assert saved is not None and saved[0].value == {"m": spec}
    assert not list(data.glob("*.tmp"))


def test_a_write_that_cannot_be_saved_is_refused_and_not_applied(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "cluster-state.msgpack").mkdir()  # every save of the operator data fails
    spec = {"name": "m", "source": "builtin:mlp"}

    async def write() -> tuple[httpx.Response, dict[str, Any]]:
        async with running(config(data_dir=str(data))) as (daemon, client):
            return await client.post("/v1/catalog", json=spec), daemon.operator.catalog()

    r, held = trio.run(write)  # not a trio test: its failure is not wrapped in a group
    assert r.status_code == 503 and "data dir" in r.json()["error"], r.text
    assert held == {}, "the write answered with an error was applied"


# ---------------------------------------------------------------- admin calls


async def test_admin_calls_from_a_non_loopback_client_are_refused_without_a_token() -> None:
    spec = {"name": "m", "source": "builtin:mlp"}
    async with running(config(), client_addr=("10.1.2.3", 40000)) as (daemon, client):
        for method, path, body in [
            ("POST", "/v1/catalog", spec),
            ("DELETE", "/v1/catalog/m", None),
            ("PUT", "/v1/catalog/m/replicas", {"replicas": 1}),
            ("PUT", "/v1/node/tags", {"zone": "eu"}),
        ]:
            r = await client.request(method, path, json=body)
            assert r.status_code == 403, (method, path, r.text)
            assert "loopback" in r.json()["error"]
        # Reading is not an admin call, and nothing was written.
        r = await client.get("/v1/catalog")
        assert r.status_code == 200 and r.json() == {"catalog": {}, "replicas": {}}
        assert daemon.record.tags() == {}


async def test_a_token_admits_any_client_and_only_with_the_token(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    spec = {"name": "m", "source": "builtin:mlp"}
    cfg = config(admin_token_file=str(token))
    async with running(cfg, client_addr=("10.1.2.3", 40000)) as (daemon, client):
        r = await client.post("/v1/catalog", json=spec)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        bad = {"authorization": "Bearer s3cre"}
        assert (await client.post("/v1/catalog", json=spec, headers=bad)).status_code == 401
        assert daemon.operator.catalog() == {}
        good = {"authorization": "Bearer s3cret"}
        assert (await client.post("/v1/catalog", json=spec, headers=good)).status_code == 201
        assert daemon.operator.catalog() == {"m": spec}


@pytest.mark.parametrize(
    "body", [{"replicas": 10**30}, {"replicas": -1}, {"replicas": 10_001}, {"replicas": True}]
)
async def test_a_replica_target_out_of_bounds_is_refused_and_nothing_is_stored(
    tmp_path: Path, body: dict[str, Any]
) -> None:
    data = tmp_path / "data"
    async with running(config(data_dir=str(data))) as (daemon, client):
        spec = {"name": "m", "source": "builtin:mlp"}
        assert (await client.post("/v1/catalog", json=spec)).status_code == 201
        ok = await client.put("/v1/catalog/m/replicas", json={"replicas": 2})
        assert ok.status_code == 200 and ok.json()["replicas"] == 2
        before = daemon.node.crdt(REPLICAS).copy()
        on_disk = (data / "cluster-state.msgpack").read_bytes()
        r = await client.put("/v1/catalog/m/replicas", json=body)
        assert r.status_code == 400 and "replicas" in r.json()["error"]
        after = daemon.node.crdt(REPLICAS)
        assert isinstance(after, LWWMap) and after == before
        assert (data / "cluster-state.msgpack").read_bytes() == on_disk
        assert (await client.get("/v1/catalog")).json()["replicas"] == {"m": 2}


async def test_tags_past_the_state_limit_are_refused_and_the_old_ones_kept(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    cfg = config(data_dir=str(data), gossip_table={"max_node_state": 64 * 1024})
    async with running(cfg) as (daemon, client):
        old = {"a": "old", "z": "kept"}
        assert (await client.put("/v1/node/tags", json=old)).status_code == 200
        # "a" changes first (sorted order), then "b" overflows: all or nothing.
        new = {"a": "new", "b": "x" * (80 * 1024)}
        r = await client.put("/v1/node/tags", json=new)
        assert r.status_code == 413 and "max_node_state" in r.json()["error"]
        assert daemon.record.tags() == old
        rec = daemon.node.record(daemon.name)
        assert rec is not None and "tag:b" not in rec.items()
        assert json.loads((data / "tags.json").read_text()) == old


# ---------------------------------------------------------------- placement


async def test_an_invalid_catalog_spec_is_skipped_by_placement_and_the_rest_placed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="rumor.node")
    cfg = config(placement_hold=0.05, interval=0.05)
    async with running(cfg) as (daemon, client):
        now = trio.current_time()
        # Written as a peer (or an older version) could have: the admin API
        # validates specs, gossip cannot.
        daemon.operator.put("bad", {"name": "bad", "source": "builtin:mlp", "device": 7}, now)
        daemon.operator.put("odd", {"name": "odd", "source": "nowhere:x"}, now)
        good = {"name": "good", "source": "builtin:mlp", "max_batch_size": 4}
        assert (await client.post("/v1/catalog", json=good)).status_code == 201
        await wait_until(lambda: daemon.models.ready("good"), 60, "the valid model placed here")
        assert daemon.inference.status("bad") is None
        assert daemon.inference.status("odd") is None
        assert (await client.get("/v2/health/ready")).status_code == 200
        r = await client.post("/v2/models/good/infer", json={"inputs": [MLP_ROW]})
        assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [1, 16]
    logged = " ".join(rec.getMessage() for rec in caplog.records)
    assert "'bad' is invalid" in logged and "'odd' is invalid" in logged, logged


# ---------------------------------------------------------------- draining


async def test_a_request_outliving_the_drain_is_cancelled_with_a_503(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = config(models=("mlp=builtin:mlp",), drain_timeout=0.2)
    async with running(cfg) as (daemon, client):
        await wait_until(lambda: daemon.ready_replicas("mlp") == ["solo"], 60, "mlp ready")
        started = trio.Event()

        async def stuck(*args: Any, **kwargs: Any) -> Any:
            started.set()
            await trio.sleep_forever()  # an inference that outlives any drain

        monkeypatch.setattr(daemon.inference, "infer", stuck)
        answers: list[httpx.Response] = []

        async def ask() -> None:
            answers.append(await client.post("/v2/models/mlp/infer", json={"inputs": [MLP_ROW]}))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask)
            with trio.fail_after(30):
                await started.wait()
            assert daemon.in_flight == 1
            await daemon.shutdown()
        (r,) = answers
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "drain timeout" in r.json()["error"]
        assert daemon.in_flight == 0 and not daemon.request_scopes
        # Draining: new requests are refused at once, and readiness says so.
        r = await client.post("/v2/models/mlp/infer", json={"inputs": [MLP_ROW]})
        assert r.status_code == 503 and "shutting down" in r.json()["error"]
        assert (await client.get("/v2/health/ready")).status_code == 503


# ---------------------------------------------------------------- the publish loop


async def test_a_quiet_node_publishes_once_a_second_and_a_poke_wakes_it() -> None:
    from node.daemon import QUIET_AFTER, QUIET_PUBLISH

    cfg = config()
    async with running(cfg) as (daemon, client):
        # Quiet after QUIET_AFTER unchanged runs; then one run per QUIET_PUBLISH.
        await trio.sleep(cfg.interval * (QUIET_AFTER + 2) + QUIET_PUBLISH)
        before, on_tick = daemon.publish_runs, daemon.publish_runs_on_tick
        await trio.sleep(3 * QUIET_PUBLISH)
        runs = daemon.publish_runs - before
        # 3 expected; every interval would be 15 (a busy host only makes it fewer).
        assert runs <= 6, f"{runs} publish runs in {3 * QUIET_PUBLISH:g} s of quiet"
        # Each quiet run rode a gossip tick's wake-up rather than its own timer.
        assert daemon.publish_runs_on_tick - on_tick == runs >= 1
        # A request (or a gossip event, an admin write) wakes it, and it runs
        # every interval again until quiet: 4-5 runs in the next 0.8 s, where
        # staying quiet would give at most 1.
        r = await client.post("/v2/models/nope/infer", json={"inputs": []})
        assert r.status_code in (400, 404, 503), r.text
        before = daemon.publish_runs
        await trio.sleep(4 * cfg.interval)
        runs = daemon.publish_runs - before
        assert runs >= 3, f"only {runs} publish runs in the 0.8 s after a request"
