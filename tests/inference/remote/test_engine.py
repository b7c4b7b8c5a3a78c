"""RemoteEngine against the fake engine: readiness, failure detection, proxying."""

from __future__ import annotations

import json

import pytest
import trio

from inference.config import ModelConfig
from inference.errors import InvalidInput
from inference.remote import (
    EngineStreamError,
    EngineUnavailable,
    open_remote_engine,
)
from tests.fakes.fake_engine import FakeSettings

from .conftest import INTERVAL, fake_and_engine

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


async def _wait_until(predicate: object, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():  # type: ignore[operator]
            await trio.sleep(0.01)


async def test_ready_once_health_and_served_name_check_out() -> None:
    async with fake_and_engine() as (fake, engine):
        assert engine.ready and engine.health.reason == ""
        info = engine.info
        assert (info.kind, info.served_name, info.max_model_len) == ("vllm", "served", 4096)
        assert info.prefix == "none" and info.hash_name == ""  # no kv_events configured
        assert fake.counters.health_checks >= 1


async def test_a_served_name_the_engine_lacks_is_not_ready() -> None:
    settings = FakeSettings(served_names=("something-else",))
    async with fake_and_engine(settings, wait=False) as (_fake, engine):
        await _wait_until(lambda: "served_name" in engine.health.reason)
        assert not engine.ready and "something-else" in engine.health.reason


async def test_death_is_noticed_by_the_next_probe() -> None:
    changes = []
    async with fake_and_engine(on_change=changes.append) as (fake, engine):
        fake.die()
        died = trio.current_time()
        await _wait_until(lambda: not engine.ready)
        # Connection refused answers at once: noticed by the next round, < 1 interval
        # on a quiet machine; 3x headroom is allowed for a loaded one.
        assert trio.current_time() - died < 3 * INTERVAL + 0.5
        assert [c.ready for c in changes] == [True, False]
        with pytest.raises(EngineUnavailable) as e:
            await engine.send("/v1/chat/completions", CHAT)
        assert e.value.retryable


async def test_a_hang_is_noticed_within_two_probe_intervals() -> None:
    async with fake_and_engine() as (fake, engine):
        assert engine.probe_timeout == INTERVAL  # the deadline is one interval
        fake.settings.health = "hang"
        checks = fake.counters.health_checks
        await _wait_until(lambda: not engine.ready)
        # The mechanism: the first probe after the hang began is the one that timed
        # out (a probe starts every interval and may take one interval: <= 2 intervals).
        assert fake.counters.health_checks - checks <= 2
        assert "no answer within 0.1 s" in engine.health.reason
        fake.settings.health = "ok"
        await _wait_until(lambda: engine.ready)


async def test_waiters_wake_when_the_reason_changed_before_ready() -> None:
    """Starting engines fail in several ways before they are ready (refused, 503,
    the served name not listed yet): a waiter must still wake when they pass."""
    settings = FakeSettings(served_names=("served",), health="503")
    async with fake_and_engine(settings, wait=False) as (fake, engine):
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(engine.wait_ready)  # must return: the nursery waits for it
                await _wait_until(lambda: "503" in engine.health.reason)
                fake.settings.health = "ok"
                fake.settings.served_names = ("not-yet",)
                await _wait_until(lambda: "served_name" in engine.health.reason)
                fake.settings.served_names = ("served",)


async def test_503_health_is_not_ready() -> None:
    async with fake_and_engine() as (fake, engine):
        fake.settings.health = "503"
        await _wait_until(lambda: not engine.ready)
        assert "503" in engine.health.reason


async def test_streams_chunk_by_chunk_with_the_name_mapped_back() -> None:
    settings = FakeSettings(served_names=("served",), itl_s=0.05)
    async with fake_and_engine(settings) as (fake, engine):
        body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        resp = await engine.send("/v1/chat/completions", body)
        assert resp.status == 200 and resp.content_type.startswith("text/event-stream")
        chunks = []
        async for chunk in resp.aiter_bytes():
            if not chunks:
                # The first chunk is here while the engine is still generating.
                assert fake.counters.in_flight == 1 and fake.counters.completed == 0
                assert resp.started
            chunks.append(chunk)
        events = [e for e in b"".join(chunks).split(b"\n\n") if e]
        assert len(chunks) >= len(events) - 1 > 4  # not buffered into one piece
        assert events[-1] == b"data: [DONE]"
        docs = [json.loads(e[6:]) for e in events[:-1]]
        assert {d["model"] for d in docs} == {"m"}  # the engine said "served"
        assert docs[-1]["usage"]["completion_tokens"] == 4 and docs[-1]["choices"] == []
        assert fake.counters.bodies[-1]["model"] == "served"


async def test_non_streamed_answer_and_connection_reuse() -> None:
    async with fake_and_engine() as (fake, engine):
        for _ in range(3):
            resp = await engine.send("/v1/completions", b'{"model":"m","prompt":"hi"}')
            doc = json.loads(await resp.read())
            assert doc["model"] == "m" and doc["object"] == "text_completion"
            assert resp.header("content-length") == ""  # the body's length changed
        assert engine._proxy_http.stats.dials == 1 and engine._proxy_http.stats.reuses == 2
        await _wait_until(lambda: fake.counters.completed == 3)


async def test_a_pooled_connection_the_engine_closed_is_not_used() -> None:
    async with fake_and_engine() as (fake, engine):
        resp = await engine.send("/v1/completions", {"prompt": "x"})
        await resp.read()
        fake.drop_connections()  # as uvicorn does after its keep-alive timeout
        await trio.sleep(0.05)
        resp = await engine.send("/v1/completions", {"prompt": "x"})
        assert resp.status == 200 and json.loads(await resp.read())["model"] == "m"
        assert engine._proxy_http.stats.dials == 2 and engine._proxy_http.stats.reuses == 0


async def test_a_closed_pooled_connection_is_retried_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The race the peek cannot see (closed between the peek and the send): the
    engine answered nothing, so the request is sent again on a fresh connection."""
    from inference.remote import http

    async with fake_and_engine() as (fake, engine):
        resp = await engine.send("/v1/completions", {"prompt": "x"})
        await resp.read()
        fake.drop_connections()
        await trio.sleep(0.05)
        monkeypatch.setattr(http._Conn, "peer_closed", lambda self: False)
        resp = await engine.send("/v1/completions", {"prompt": "x"})
        assert resp.status == 200 and json.loads(await resp.read())["model"] == "m"
        assert engine._proxy_http.stats.stale_retries == 1


async def test_cancelling_closes_the_upstream_connection() -> None:
    settings = FakeSettings(served_names=("served",), itl_s=0.05)
    async with fake_and_engine(settings) as (fake, engine):
        with trio.move_on_after(0.3):
            resp = await engine.send("/v1/chat/completions",
                                     {**CHAT, "stream": True, "max_tokens": 1000})
            try:
                async for _chunk in resp.aiter_bytes():
                    pass
            finally:
                resp.close()
        with trio.fail_after(5):
            while fake.counters.disconnects == 0:
                await fake.disconnected.wait()
        assert fake.counters.completed == 0 and fake.counters.in_flight == 0


async def test_leaving_the_iteration_early_closes_it_too() -> None:
    settings = FakeSettings(served_names=("served",), itl_s=0.02)
    async with fake_and_engine(settings) as (fake, engine):
        async with await engine.send("/v1/completions",
                                     {"prompt": "x", "stream": True, "max_tokens": 1000}) as resp:
            async for _chunk in resp.aiter_bytes():
                break
        await _wait_until(lambda: fake.counters.disconnects == 1)


async def test_headers_pass_except_content_coding() -> None:
    async with fake_and_engine() as (fake, engine):
        resp = await engine.send("/v1/completions", {"prompt": "x"}, headers=[
            ("X-Request-Id", "abc"), ("Accept-Encoding", "gzip"), ("Connection", "close"),
            ("Content-Type", "text/plain"), ("Authorization", "Bearer k")])
        await resp.read()
        seen = fake.counters.headers[-1]
        assert seen["x-request-id"] == "abc" and seen["authorization"] == "Bearer k"
        assert seen["content-type"] == "application/json"
        assert "accept-encoding" not in seen and "connection" not in seen


async def test_engine_errors_pass_through() -> None:
    async with fake_and_engine() as (fake, engine):
        fake.settings.fail_status = 500
        resp = await engine.send("/v1/chat/completions", CHAT)
        assert resp.status == 500
        assert json.loads(await resp.read())["error"]["type"] == "InternalServerError"
        with pytest.raises(InvalidInput):
            await engine.send("/v1/chat/completions", b"[not an object]")
        with pytest.raises(ValueError):
            await engine.send("/v1/embeddings", CHAT)


async def test_a_stream_that_hangs_midway_fails_after_the_deadline() -> None:
    settings = FakeSettings(served_names=("served",), hang_after_chunks=2)
    async with fake_and_engine(settings, spec="timeout_s=0.3") as (_fake, engine):
        resp = await engine.send("/v1/completions", {"prompt": "x", "stream": True})
        got = []
        with pytest.raises(EngineStreamError, match=r"nothing for 0\.3 s"):
            async for chunk in resp.aiter_bytes():
                got.append(chunk)
        assert len(got) == 2 and resp.started  # too late to retry elsewhere


async def test_death_mid_stream_is_a_stream_error() -> None:
    settings = FakeSettings(served_names=("served",), itl_s=0.05)
    async with fake_and_engine(settings) as (fake, engine):
        resp = await engine.send("/v1/completions", {"prompt": "x", "stream": True,
                                                      "max_tokens": 100})
        with pytest.raises(EngineStreamError):
            async for _chunk in resp.aiter_bytes():
                fake.die()


async def test_load_comes_from_the_engines_metrics() -> None:
    settings = FakeSettings(served_names=("served",),
                            load={"running": 4, "waiting": 3, "kv_usage": 0.5})
    async with fake_and_engine(settings, inflight=lambda: 99) as (fake, engine):
        await _wait_until(lambda: engine.load_problems == ())
        stats = await engine.stats()
        assert (stats.running, stats.waiting, stats.kv_cache_usage) == (4, 3, 0.5)
        fake.settings.metrics = "garbage"
        await _wait_until(lambda: engine.load_problems != ())
        stats = await engine.stats()
        assert stats.running == 99 and stats.kv_blocks_total == 0  # the daemon's own count


async def test_openai_kind_is_judged_by_its_models_list() -> None:
    async with fake_and_engine() as (fake, _engine):
        config = ModelConfig.from_spec(
            f"m=openai+http://127.0.0.1:{fake.port},served_name=served")
        async with open_remote_engine(config, probe_interval=INTERVAL) as engine:
            with trio.fail_after(5):
                await engine.wait_ready()
            assert engine.config.health_path == "none"  # GET /v1/models is the probe
            stats = await engine.stats()  # no /metrics for openai+: all fallback
            assert stats.running == 0 and stats.kv_blocks_total == 0


async def test_unreachable_engine_is_never_ready() -> None:
    with trio.socket.socket() as s:  # a port nobody listens on
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = ModelConfig.from_spec(f"m=vllm+http://127.0.0.1:{port}")
    async with open_remote_engine(config, probe_interval=INTERVAL) as engine:
        await trio.sleep(3 * INTERVAL)
        assert not engine.ready and engine.health.reason
        with pytest.raises(EngineUnavailable):
            await engine.send("/v1/completions", {"prompt": "x"})


async def test_tokenizer_option_loads_the_engines_tokenizer(tmp_path: object) -> None:
    from pathlib import Path

    from inference.llm.tokenizer import builtin_tokenizer

    directory = Path(str(tmp_path))
    (directory / "tokenizer.json").write_text(builtin_tokenizer().tokenizer.to_str())
    async with fake_and_engine(spec=f"tokenizer={directory}") as (_fake, engine):
        assert engine.tokenizer is not None
        assert engine.tokenizer.encode("hello", add_special_tokens=False) == \
            builtin_tokenizer().encode("hello", add_special_tokens=False)
