"""ModelConfig: TOML tables, CLI specs, and errors that name the field."""

from __future__ import annotations

import tomllib

import pytest

from inference.config import ModelConfig
from inference.errors import ConfigError


def test_spec_with_options() -> None:
    c = ModelConfig.from_spec(
        "mlp=builtin:mlp,max_batch_size=64,max_queue_delay_ms=2.5,"
        "preferred_batch_sizes=8+16,device=cpu,warmup=false"
    )
    assert c.name == "mlp" and c.format == "builtin" and c.device == "cpu"
    assert c.max_batch_size == 64 and c.max_queue_delay_ms == 2.5
    assert c.preferred_batch_sizes == (8, 16) and c.warmup is False
    assert c.batch_buckets() == (1, 2, 4, 8, 16, 32, 64)


def test_toml_table() -> None:
    data = tomllib.loads(
        """
        [[model]]
        name = "enc"
        source = "/models/transformer.pt2"
        dtype = "bfloat16"
        preferred_batch_sizes = [4, 8]
        """
    )
    c = ModelConfig.from_dict(data["model"][0])
    assert c.format == "export" and c.dtype == "bfloat16" and c.preferred_batch_sizes == (4, 8)


def test_format_is_inferred() -> None:
    assert ModelConfig.from_spec("a=/m/x.pt").format == "torchscript"
    assert ModelConfig.from_spec("a=/m/x.pt2").format == "export"
    assert ModelConfig.from_spec("a=/m/x.bin,factory=pkg.mod:make").format == "state_dict"


@pytest.mark.parametrize(
    "spec,field",
    [
        ("mlp", "spec"),
        ("bad name=builtin:mlp", "name"),
        ("m=builtin:mlp,device=tpu", "device"),
        ("m=builtin:mlp,dtype=int8", "dtype"),
        ("m=builtin:mlp,max_batch_size=0", "max_batch_size"),
        ("m=builtin:mlp,max_batch_size=lots", "max_batch_size"),
        ("m=builtin:mlp,max_queue_delay_ms=-1", "max_queue_delay_ms"),
        ("m=builtin:mlp,preferred_batch_sizes=64,max_batch_size=8", "preferred_batch_sizes"),
        ("m=builtin:mlp,colour=blue", "colour"),
        ("m=builtin:mlp,warmup=maybe", "warmup"),
        ("m=/x.onnx", "format"),
        ("m=/x.bin,format=state_dict", "factory"),
        ("m=", "source"),
    ],
)
def test_invalid_configs_name_the_field(spec: str, field: str) -> None:
    with pytest.raises(ConfigError) as exc:
        ModelConfig.from_spec(spec)
    assert exc.value.field == field
    assert str(exc.value).startswith(field)


def test_toml_unknown_and_missing_fields() -> None:
    with pytest.raises(ConfigError, match=r"^source"):
        ModelConfig.from_dict({"name": "x"})
    with pytest.raises(ConfigError, match=r"^max_batch"):
        ModelConfig.from_dict({"name": "x", "source": "builtin:mlp", "max_batch": 3})


def test_llm_sources_parse() -> None:
    c = ModelConfig.from_spec("chat=builtin:llm,size=tiny,kv_cache_bytes=1048576,max_num_seqs=4")
    assert c.format == "llm" and c.size == "tiny" and c.kv_cache_bytes == 2**20
    assert c.block_size == 16 and c.max_num_seqs == 4
    assert ModelConfig.from_spec("chat=builtin:llm").size == "small"  # the default size
    data = tomllib.loads(
        """
        [[model]]
        name = "llama"
        source = "hf:/models/llama-3.2-1b"
        dtype = "bfloat16"
        kv_cache_fraction = 0.5
        max_model_len = 8192
        max_num_batched_tokens = 2048
        """
    )
    c = ModelConfig.from_dict(data["model"][0])
    assert c.format == "llm" and c.kv_cache_fraction == 0.5 and c.max_model_len == 8192


@pytest.mark.parametrize(
    "spec,field",
    [
        ("m=builtin:llm,size=huge", "size"),
        ("m=hf:/x,size=tiny", "size"),
        ("m=hf:", "source"),
        ("m=builtin:llm,kv_cache_bytes=-1", "kv_cache_bytes"),
        ("m=builtin:llm,kv_cache_fraction=1.5", "kv_cache_fraction"),
        ("m=builtin:llm,kv_cache_fraction=0.5,kv_cache_bytes=100", "kv_cache_bytes"),
        ("m=builtin:llm,block_size=12", "block_size"),
        ("m=builtin:llm,block_size=0", "block_size"),
        ("m=builtin:llm,max_model_len=-5", "max_model_len"),
        ("m=builtin:llm,max_num_seqs=0", "max_num_seqs"),
        ("m=builtin:llm,max_num_seqs=64,max_num_batched_tokens=8", "max_num_batched_tokens"),
        ("m=builtin:mlp,max_num_seqs=4", "max_num_seqs"),  # LLM options on a tensor model
        ("m=builtin:mlp,size=tiny", "size"),
    ],
)
def test_invalid_llm_configs_name_the_field(spec: str, field: str) -> None:
    with pytest.raises(ConfigError) as exc:
        ModelConfig.from_spec(spec)
    assert exc.value.field == field
