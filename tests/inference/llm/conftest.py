"""Small engines for the LLM tests (tiny model, small pools: fast on 2 cores)."""

from __future__ import annotations

from typing import Any

import pytest

from inference.config import ModelConfig


def llm_config(**overrides: Any) -> ModelConfig:
    values: dict[str, Any] = {
        "name": "t",
        "source": "builtin:llm",
        "size": "tiny",
        "device": "cpu",
        "kv_cache_bytes": 2 * 2**20,
        "max_model_len": 512,
        "max_num_seqs": 8,
        "max_num_batched_tokens": 64,
    }
    values.update(overrides)
    return ModelConfig.from_dict(values)


@pytest.fixture
def tiny_config() -> ModelConfig:
    return llm_config()
