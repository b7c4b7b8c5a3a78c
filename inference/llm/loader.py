"""From a ModelConfig to weights on a device, a tokenizer and the engine's limits."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import DEFAULT_KV_CACHE_BYTES, ModelConfig
from ..errors import ConfigError
from .model import BUILTIN_SEED, LlamaWeights, builtin_spec, load_hf_weights, random_weights
from .tokenizer import LLMTokenizer, builtin_tokenizer, load_hf_tokenizer

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedLLM:
    config: ModelConfig
    weights: LlamaWeights  # on the device, in the serving dtype
    tokenizer: LLMTokenizer
    device: torch.device
    dtype: torch.dtype
    max_model_len: int
    kv_cache_bytes: int  # the pool's budget (the runner rounds down to whole blocks)


def load_llm(config: ModelConfig) -> LoadedLLM:
    if config.format != "llm":
        raise ConfigError("source", f"{config.source!r} is not an LLM source")
    device = torch.device(config.resolved_device())
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device} requested but CUDA is not available")
    dtype = DTYPES[config.dtype]
    if config.source == "builtin:llm":
        tokenizer = builtin_tokenizer()
        spec = builtin_spec(config.size, tokenizer.vocab_size)
        weights = random_weights(spec, BUILTIN_SEED)
    else:
        path = Path(config.source.removeprefix("hf:")).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"model directory {path} does not exist")
        spec, weights, hf_config = load_hf_weights(path)
        tokenizer = load_hf_tokenizer(path, hf_config)
        if tokenizer.vocab_size > spec.vocab_size:
            raise ValueError(
                f"tokenizer has {tokenizer.vocab_size} tokens, the model only {spec.vocab_size}"
            )
    max_len = config.max_model_len or spec.max_position_embeddings
    if max_len > spec.max_position_embeddings:
        raise ConfigError(
            "max_model_len",
            f"{max_len} exceeds the model's max_position_embeddings "
            f"({spec.max_position_embeddings})",
        )
    weights = weights.to(device, dtype)
    return LoadedLLM(config, weights, tokenizer, device, dtype, max_len, _kv_budget(config, device))


def _kv_budget(config: ModelConfig, device: torch.device) -> int:
    if config.kv_cache_bytes:
        return config.kv_cache_bytes
    if not config.kv_cache_fraction:
        return DEFAULT_KV_CACHE_BYTES
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)  # after the weights are loaded
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(free * config.kv_cache_fraction)
