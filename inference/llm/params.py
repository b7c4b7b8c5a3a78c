"""The engine's value types: what a request asks for, what a step returns, load.

Torch-free and msgpack-friendly (`to_wire`/`from_wire` are plain lists and
dicts), because they cross the process boundary of `host.py` and the HTTP layer
builds responses from them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import InvalidInput

FINISH_STOP = "stop"  # EOS or a stop string
FINISH_LENGTH = "length"  # max_tokens or the context length reached
FINISH_ABORT = "abort"  # aborted by the caller (client gone)

MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling, as the OpenAI API names it."""

    max_tokens: int = 16
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0  # nucleus: keep the smallest set of tokens with this much mass
    seed: int | None = None  # the same seed and prompt give the same tokens
    stop: tuple[str, ...] = ()  # not included in the output text
    ignore_eos: bool = False  # benchmarks: always run to max_tokens

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif isinstance(self.stop, list):
            object.__setattr__(self, "stop", tuple(self.stop))
        self.validate()

    def validate(self) -> None:
        """Raise InvalidInput for a value no model could honour."""
        if type(self.max_tokens) is not int or self.max_tokens < 1:
            raise InvalidInput(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not _finite(self.temperature) or self.temperature < 0:
            raise InvalidInput(f"temperature must be a number >= 0, got {self.temperature!r}")
        if not _finite(self.top_p) or not 0 < self.top_p <= 1:
            raise InvalidInput(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (type(self.seed) is not int or not 0 <= self.seed < 2**63):
            raise InvalidInput(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        if not isinstance(self.stop, tuple) or len(self.stop) > MAX_STOP_STRINGS:
            raise InvalidInput(f"stop must be a list of at most {MAX_STOP_STRINGS} strings")
        for s in self.stop:
            if not isinstance(s, str) or not 0 < len(s) <= MAX_STOP_CHARS:
                raise InvalidInput(f"each stop string must have 1..{MAX_STOP_CHARS} characters")
        if not isinstance(self.ignore_eos, bool):
            raise InvalidInput("ignore_eos must be true or false")

    def to_wire(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> SamplingParams:
        try:
            return cls(**data)
        except TypeError as e:  # an unknown or missing field
            raise InvalidInput(f"bad sampling parameters: {e}") from None


def _finite(v: object) -> bool:
    return type(v) in (int, float) and math.isfinite(v)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int  # prompt tokens served from the prefix cache (OpenAI's cached_tokens)


@dataclass(frozen=True)
class RequestOutput:
    """What one engine step produced for one request."""

    request_id: str
    token_ids: tuple[int, ...]  # new tokens this step (empty when only finishing)
    text: str  # new text this step; never splits a UTF-8 character or a stop string
    finished: bool = False
    finish_reason: str | None = None  # FINISH_STOP, FINISH_LENGTH or FINISH_ABORT
    usage: Usage | None = None  # set on the finishing output

    def to_wire(self) -> list[Any]:
        u = self.usage
        usage = None if u is None else [u.prompt_tokens, u.completion_tokens, u.cached_tokens]
        return [
            self.request_id,
            list(self.token_ids),
            self.text,
            self.finished,
            self.finish_reason,
            usage,
        ]

    @classmethod
    def from_wire(cls, item: list[Any]) -> RequestOutput:
        rid, toks, text, finished, reason, usage = item
        return cls(
            rid, tuple(toks), text, finished, reason, None if usage is None else Usage(*usage)
        )


@dataclass(frozen=True)
class EngineStats:
    """Load, as the gossip layer and /metrics publish it (vLLM's gauge and counter names
    in comments)."""

    running: int  # vllm:num_requests_running
    waiting: int  # vllm:num_requests_waiting
    kv_blocks_used: int
    kv_blocks_total: int  # kv_cache_usage_perc = used / total
    prefix_cache_queries: int  # tokens looked up (vllm:prefix_cache_queries)
    prefix_cache_hits: int  # of which found cached (vllm:prefix_cache_hits)
    prompt_tokens: int = 0  # counters since start
    generation_tokens: int = 0
    preemptions: int = 0
    aborted: int = 0  # requests ended early (a client left, a caller cancelled)
    steps: int = 0
    tokens_per_s: float = 0.0  # prompt + generated, over the host's recent window

    @property
    def kv_cache_usage(self) -> float:
        return self.kv_blocks_used / self.kv_blocks_total if self.kv_blocks_total else 0.0

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> EngineStats:
        return cls(**data)


@dataclass(frozen=True)
class ModelInfo:
    """What a router and the API need to know about a loaded LLM (`describe()`)."""

    name: str
    source: str
    architecture: str  # "llama"
    num_params: int
    vocab_size: int
    max_model_len: int
    dtype: str
    device: str
    block_size: int  # prefix hashing: tokens per block
    hash_name: str  # prefix hashing: prefix.HASH_NAME
    hash_salt: str  # prefix hashing: the salt to pass to prefix.block_hashes
    kv_blocks_total: int
    kv_cache_bytes: int
    eos_token_ids: tuple[int, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        d = asdict(self)
        d["eos_token_ids"] = list(self.eos_token_ids)
        return d

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ModelInfo:
        d = dict(data)
        d["eos_token_ids"] = tuple(d.get("eos_token_ids", ()))
        return cls(**d)
