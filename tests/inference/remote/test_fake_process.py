"""The fake engine as a process (how the e2e tests start it beside a daemon), and a
RemoteEngine's prefix state fed by the fake's own KV events."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import trio

from inference.config import ModelConfig
from inference.llm.prefix import block_hashes
from inference.remote import open_remote_engine
from tests.fakes.fake_engine import FakeSettings
from tests.fakes.fake_kv import FakeKVPublisher

from .conftest import fake_and_engine

ROOT = Path(__file__).resolve().parents[3]


async def test_requests_show_up_in_the_prefix_state() -> None:
    """A chat request's prompt blocks (the fake tokenizes to UTF-8 bytes) become
    exactly the hashes a router computes from the same tokens."""
    kv = FakeKVPublisher()
    try:
        async with fake_and_engine(FakeSettings(served_names=("served",), block_size=16),
                                   kv=kv) as (_fake, engine):
            with trio.fail_after(5):
                while engine.prefix_state is None or not engine.prefix_state.exact:
                    await trio.sleep(0.01)
            cursor = (await engine.kv_events_since(0)).cursor
            prompt = "user: " + "the same long system prompt " * 4 + "\n"
            resp = await engine.send("/v1/chat/completions", {
                "messages": [{"role": "user", "content": "the same long system prompt " * 4}]})
            await resp.read()
            expected = block_hashes(list(prompt.encode()), 16, salt="m")
            with trio.fail_after(5):
                while len(await engine.cached_block_hashes()) < len(expected):
                    await trio.sleep(0.01)
            assert sorted(await engine.cached_block_hashes()) == sorted(expected)
            events = await engine.kv_events_since(cursor)
            assert events.complete and set(events.stored) == set(expected)
            info = engine.info
            assert info.prefix == "exact" and info.hash_salt == "m" and info.block_size == 16
    finally:
        kv.close()


async def test_block_size_mismatch_shows_in_info() -> None:
    """vllm:cache_config_info says 32 while the spec says 16: reported, not misrouted."""
    kv = FakeKVPublisher()
    try:
        async with fake_and_engine(FakeSettings(served_names=("served",), block_size=32),
                                   kv=kv) as (_fake, engine):
            with trio.fail_after(5):
                while not engine.info.prefix.startswith("mismatch"):
                    await trio.sleep(0.01)
            assert "block_size=32" in engine.info.prefix and engine.info.hash_name == ""
    finally:
        kv.close()


def test_fake_engine_runs_as_a_process() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.fake_engine", "--port", "0", "--kind", "sglang",
         "--served-name", "x", "--kv-events-port", "0", "--kv-replay-port", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("READY "), line
        port = int(line.split()[1])
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            assert client.get("/health").status_code == 200
            assert "sglang:num_running_reqs" in client.get("/metrics").text
            r = client.post("/v1/completions", json={"model": "x", "prompt": "hi",
                                                     "max_tokens": 2})
            assert r.json()["choices"][0]["text"] == " tok0 tok1"
            client.post("/fake/control", json={"health": "503"})
            assert client.get("/health").status_code == 503
            state = client.get("/fake/state").json()
            assert state["completed"] == 1 and json.dumps(state)
    finally:
        proc.terminate()
        proc.wait(10)


async def test_fake_process_behind_a_remote_engine() -> None:
    """What the lead's e2e tests do: a fake process, a RemoteEngine watching it."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "tests.fakes.fake_engine", "--port", "0",
         "--served-name", "served"], cwd=ROOT, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        buf = b""
        with trio.fail_after(20):
            while b"\n" not in buf:
                buf += await proc.stdout.receive_some(100)
        port = int(buf.split()[1])
        config = ModelConfig.from_spec(f"m=vllm+http://127.0.0.1:{port},served_name=served")
        async with open_remote_engine(config, probe_interval=0.1) as engine:
            with trio.fail_after(10):
                await engine.wait_ready()
            proc.kill()
            with trio.fail_after(5):
                while engine.ready:
                    await trio.sleep(0.01)
    finally:
        proc.kill()
        await proc.wait()
