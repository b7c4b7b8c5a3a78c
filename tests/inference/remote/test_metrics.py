"""Load from an engine's /metrics: vLLM's and SGLang's names, fallbacks on garbage."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference.remote.metrics import SGLANG, USAGE_SCALE, VLLM, LoadTracker, parse_metrics
from tests.fakes.fake_engine import FakeEngine, FakeSettings

DATA = Path(__file__).parent / "data"


def test_real_vllm_0_32_metrics() -> None:
    """A /metrics page captured from vLLM 0.32.0 after three requests."""
    load = parse_metrics((DATA / "vllm-0.32.0-metrics.txt").read_text(), VLLM, "tiny-real")
    assert load.problems == ()
    assert (load.running, load.waiting, load.kv_usage) == (0, 0, 0.0)
    assert load.prefix_cache_queries == 529 and load.prefix_cache_hits == 160
    assert load.prompt_tokens == 529 and load.generation_tokens == 12
    assert load.kv_blocks_total == 16384 and load.engine_block_size == 32
    assert load.prefix_hash_algo == "sha256"


def test_fake_vllm_and_sglang_pages() -> None:
    v = FakeEngine(FakeSettings(kind="vllm", served_names=("m",),
                                load={"running": 3, "waiting": 2, "kv_usage": 0.25}))
    load = parse_metrics(v._metrics(), VLLM, "m")
    assert (load.running, load.waiting, load.kv_usage, load.problems) == (3, 2, 0.25, ())
    s = FakeEngine(FakeSettings(kind="sglang", served_names=("m",),
                                load={"running": 5, "waiting": 1, "kv_usage": 0.5,
                                      "gen_throughput": 42.0}))
    load = parse_metrics(s._metrics(), SGLANG, "m")
    assert (load.running, load.waiting, load.kv_usage, load.tokens_per_s) == (5, 1, 0.5, 42.0)
    assert load.cache_hit_rate == 0.0 and load.problems == ()


def test_older_names_and_several_series() -> None:
    text = (
        "# TYPE vllm:gpu_cache_usage_perc gauge\n"
        'vllm:gpu_cache_usage_perc{model_name="m",engine="0"} 0.2\n'
        'vllm:gpu_cache_usage_perc{model_name="m",engine="1"} 0.4\n'
        'vllm:num_requests_running{model_name="m",engine="0"} 2\n'
        'vllm:num_requests_running{model_name="m",engine="1"} 3\n'
        'vllm:num_requests_running{model_name="other"} 50\n'
        'vllm:num_requests_waiting{model_name="m"} 1\n'
        "# TYPE vllm:prefix_cache_queries counter\n"
        'vllm:prefix_cache_queries{model_name="m"} 10\n'
        'vllm:prefix_cache_hits_total{model_name="m"} 4\n'
    )
    load = parse_metrics(text, VLLM, "m")
    assert load.running == 5  # summed over data-parallel engines; the other model's ignored
    assert load.kv_usage == pytest.approx(0.3)  # a usage ratio is averaged
    assert (load.prefix_cache_queries, load.prefix_cache_hits, load.problems) == (10, 4, ())


@pytest.mark.parametrize("text", [
    "", "garbage", "vllm:num_requests_running{model_name=oops 1\n",
    'vllm:num_requests_running{model_name="m"} NaN\n', 'vllm:num_requests_running 1 2 3 4\n',
    'vllm:kv_cache_usage_perc{model_name="m"} 85\n', "\x00\xff" * 50,
])
def test_garbage_is_a_problem_not_a_crash(text: str) -> None:
    load = parse_metrics(text, VLLM, "m")
    assert load.problems and (load.running is None or load.kv_usage is None)


@given(st.text(max_size=400))
def test_any_text_parses_without_raising(text: str) -> None:
    parse_metrics(text, VLLM, "m")
    parse_metrics("vllm:num_requests_running" + text, VLLM, "m")


def test_tracker_falls_back_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    inflight = [7]
    tracker = LoadTracker(VLLM, "m", lambda: inflight[0], "m")
    with caplog.at_level(logging.WARNING):
        for t in range(5):
            tracker.update("garbage{{", "", float(t))
    stats = tracker.stats(5.0)
    assert stats.running == 7 and stats.waiting == 0 and stats.kv_blocks_total == 0
    assert stats.kv_cache_usage == 0.0
    warnings = [r.message for r in caplog.records if "num_requests_running" in r.message]
    assert len(warnings) == 1, warnings  # once, not per scrape
    good = FakeEngine(FakeSettings(served_names=("m",), load={"running": 2, "kv_usage": 0.5}))
    with caplog.at_level(logging.INFO):
        tracker.update(good._metrics(), "", 6.0)
    assert any("resolved" in r.message for r in caplog.records)
    stats = tracker.stats(6.0)
    assert stats.running == 2 and stats.kv_cache_usage == 0.5
    assert stats.kv_blocks_total == 1000  # vllm:cache_config_info's num_gpu_blocks
    tracker.update(None, "connection refused", 7.0)
    assert tracker.stats(7.0).running == 7 and tracker.problems


def test_usage_without_a_block_count_keeps_its_precision() -> None:
    tracker = LoadTracker(SGLANG, "m", lambda: 0, "m")
    tracker.update('sglang:token_usage{model_name="m"} 0.1234\n', "", 0.0)
    stats = tracker.stats(0.0)
    assert stats.kv_blocks_total == USAGE_SCALE and stats.kv_cache_usage == pytest.approx(0.1234)
