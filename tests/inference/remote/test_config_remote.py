"""Remote engine specs: KIND+http://HOST:PORT and their options, with clear errors."""

from __future__ import annotations

import tomllib

import pytest

from inference.config import ModelConfig, parse_engine_url
from inference.errors import ConfigError


def test_vllm_spec_with_every_option() -> None:
    c = ModelConfig.from_spec(
        "llama=vllm+http://127.0.0.1:8001,served_name=meta/Llama-3.1-8B,probe_timeout_s=0.5,"
        "kv_events=tcp://127.0.0.1:5557,kv_events_replay=tcp://127.0.0.1:5558,"
        "kv_events_topic=kv-events,block_size=32,timeout_s=600"
    )
    assert c.format == "remote" and c.served_name == "meta/Llama-3.1-8B"
    assert (c.health_path, c.metrics_path) == ("/health", "/metrics")  # the kind's defaults
    assert c.kv_events == "tcp://127.0.0.1:5557" and c.block_size == 32
    url = parse_engine_url(c.source)
    assert (url.kind, url.host, url.port, url.base_url) == (
        "vllm", "127.0.0.1", 8001, "http://127.0.0.1:8001")


def test_defaults_per_kind_and_a_toml_table() -> None:
    sg = ModelConfig.from_spec("q=sglang+http://localhost:30000")
    assert sg.served_name == "q" and sg.health_path == "/health"
    oa = ModelConfig.from_spec("x=openai+http://[::1]:9000/api/")
    assert (oa.health_path, oa.metrics_path) == ("none", "none")
    assert parse_engine_url(oa.source).base_url == "http://[::1]:9000/api"
    table = tomllib.loads(
        """
        [[model]]
        name = "chat"
        source = "vllm+http://127.0.0.1:8000"
        served_name = "Qwen/Qwen3-8B"
        metrics_path = "none"
        kv_events = "ipc:///tmp/kv.sock"
        """
    )["model"][0]
    c = ModelConfig.from_dict(table)
    assert c.metrics_path == "none" and c.kv_events == "ipc:///tmp/kv.sock"


@pytest.mark.parametrize(
    "spec,field,words",
    [
        ("m=vllm+https://h:1", "source", "plain http"),
        ("m=vllm+http://h", "source", "needs a port"),
        ("m=vllm+http://h:99999", "source", "out of range"),
        ("m=tgi+http://h:1", "format", "cannot infer"),
        ("m=vllm+http://h:1,kv_events=tcp://*:5557", "kv_events", "bind address"),
        ("m=vllm+http://h:1,kv_events=udp://h:1", "kv_events", "tcp://HOST:PORT"),
        ("m=openai+http://h:1,kv_events=tcp://h:1", "kv_events", "publish no KV events"),
        ("m=vllm+http://h:1,kv_events_replay=tcp://h:2", "kv_events_replay", "needs kv_events"),
        ("m=vllm+http://h:1,health_path=health", "health_path", "a path"),
        ("m=vllm+http://h:1,probe_timeout_s=-1", "probe_timeout_s", ">= 0"),
        ("m=vllm+http://h:1,block_size=0", "block_size", "positive"),
        ("m=vllm+http://h:1,kv_cache_bytes=5", "kv_cache_bytes", "LLM sources"),
        ("m=builtin:mlp,served_name=x", "served_name", "remote engines"),
        ("m=builtin:llm,kv_events=tcp://h:1", "kv_events", "remote engines"),
    ],
)
def test_errors_name_the_field(spec: str, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        ModelConfig.from_spec(spec)
    assert e.value.field == field and words in str(e.value)
