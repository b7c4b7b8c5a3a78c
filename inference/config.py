"""Model configuration: what to load, from where, onto which device, and how to batch.

A config comes from a TOML table or from a CLI spec::

    NAME=SOURCE[,key=value...]      e.g.  mlp=builtin:mlp,max_batch_size=64,device=cpu

An LLM is format "llm", inferred from its source: `builtin:llm` (a seeded
random-weight Llama of a named `size`) or `hf:/path` (a Hugging Face-style
directory on disk). Its serving options (KV cache, context, batch) are the
fields after `cuda_graphs`; they are refused on the other formats.

An engine that runs beside the daemon (vLLM, SGLang or any OpenAI-compatible
server) is format "remote", source `KIND+http://HOST:PORT[/PREFIX]` with KIND
one of `vllm`, `sglang`, `openai` (`inference/remote/`, docs/ENGINES.md). Its
options are the fields after `cpu_threads`, plus `block_size` (the engine's
`--block-size`) and `timeout_s` (the longest silence from the engine while a
request is open).

Every invalid field raises `ConfigError` naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

FORMATS = ("builtin", "torchscript", "export", "state_dict", "llm", "remote")
#: Remote engine kinds and their default (health, metrics) paths; "none" = not probed.
#: vLLM and SGLang both serve GET /health (200 when the engine is alive) and
#: Prometheus text at /metrics; a generic OpenAI server is judged by /v1/models alone.
REMOTE_KINDS = {
    "vllm": ("/health", "/metrics"),
    "sglang": ("/health", "/metrics"),
    "openai": ("none", "none"),
}
#: Kinds whose KV-cache events rumor can subscribe to (vLLM's ZMQ publisher;
#: SGLang's is a port of it with the same framing).
KV_EVENT_KINDS = ("vllm", "sglang")
LLM_SIZES = ("tiny", "small", "medium")  # inference/llm/model.py BUILTIN_SIZES
#: The KV pool when neither kv_cache_bytes nor kv_cache_fraction is set.
DEFAULT_KV_CACHE_BYTES = 256 * 2**20
DTYPES = ("float32", "float16", "bfloat16")
TENSOR_DTYPES = ("FP32", "FP16", "BF16", "INT64", "INT32")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


@dataclass(frozen=True)
class ModelConfig:
    name: str
    source: str
    format: str = ""  # inferred from `source` when empty
    device: str = "auto"  # auto, cpu or cuda:N
    dtype: str = "float32"  # weights and float inputs are cast to this
    max_batch_size: int = 32
    max_queue_delay_ms: float = 0.0  # Triton's default: do not wait to fill a batch
    preferred_batch_sizes: tuple[int, ...] = ()
    warmup: bool = True
    max_queue_size: int = 1024  # requests; beyond it new requests get Overloaded
    timeout_s: float = 30.0  # default per-request timeout
    factory: str = ""  # "package.module:function" for the state_dict format
    # I/O spec for file formats whose files do not carry it (a sidecar JSON may).
    input_name: str = "input"
    input_shape: tuple[int, ...] = ()  # without the batch dimension
    input_dtype: str = ""  # KServe datatype, e.g. FP32 or INT64
    output_name: str = "output"
    cuda_graphs: bool = True  # capture per bucket on CUDA
    # -- LLM options (format "llm" only) --
    # builtin:llm size: tiny (~0.17 M parameters), small (~3 M), medium (~23 M).
    size: str = ""
    # KV pool size, allocated once at load: bytes, or a fraction of the device's
    # memory (free GPU memory, or available RAM on a CPU). Neither set: 256 MiB.
    kv_cache_bytes: int = 0
    kv_cache_fraction: float = 0.0
    # Tokens per KV block, also the prefix-hash block (vLLM's default, 16).
    block_size: int = 16
    # Longest prompt + completion in tokens; 0 = the model's max_position_embeddings.
    max_model_len: int = 0
    # Sequences in the running batch at once.
    max_num_seqs: int = 64
    # Tokens computed per engine step (prefill chunks + decodes): bounds a step's
    # latency, so a long prompt cannot stall the decodes running beside it.
    max_num_batched_tokens: int = 1024
    # torch intra-op threads in the engine process; 0 = torch's default (one per
    # core). On a CPU shared with other work, 1 avoids OpenMP threads spinning
    # against each other (measured 8x slower matmuls at 2 threads under load).
    cpu_threads: int = 0
    # -- remote engine options (format "remote" only) --
    # The engine's own name for the model (vLLM --served-model-name, SGLang
    # --served-model-name) when it differs from `name`; "" = `name`. Requests are
    # rewritten to it and answers mapped back to `name`.
    served_name: str = ""
    # Readiness: GET this path must answer 200 ("" = the kind's default, /health
    # for vllm and sglang; "none" = judge by GET /v1/models alone).
    health_path: str = ""
    # Load: Prometheus text scraped from this path ("" = /metrics for vllm and
    # sglang; "none" = no scrape, load falls back to the daemon's in-flight count).
    metrics_path: str = ""
    # Deadline of one probe in seconds; 0 = the probe interval (the daemon's
    # gossip interval), so a hung engine is marked not ready within two intervals.
    # A larger value tolerates a slow /health at the cost of slower detection.
    probe_timeout_s: float = 0.0
    # vLLM's KV-events publisher to subscribe to, e.g. tcp://127.0.0.1:5557 (the
    # engine binds tcp://*:5557); "" = no prefix state from the engine.
    kv_events: str = ""
    # Its replay endpoint (vLLM's `replay_endpoint`, a ROUTER socket) used to fill
    # sequence gaps; "" = a gap clears the prefix state and marks it incomplete.
    kv_events_replay: str = ""
    # The publisher's topic (vLLM's `topic`); "" = every topic.
    kv_events_topic: str = ""
    # A local Hugging Face directory with the engine's tokenizer.json, for
    # routers that hash prompts into prefix blocks; "" = none.
    tokenizer: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ConfigError("name", f"{self.name!r} is not a valid model name")
        if not isinstance(self.source, str) or not self.source:
            raise ConfigError("source", "is required")
        fmt = self.format or infer_format(self.source, self.factory)
        object.__setattr__(self, "format", fmt)
        if fmt not in FORMATS:
            raise ConfigError("format", f"{fmt!r} is not one of {', '.join(FORMATS)}")
        if fmt == "state_dict" and ":" not in self.factory:
            raise ConfigError("factory", "state_dict format needs factory='module:function'")
        if not _DEVICE_RE.match(str(self.device)):
            raise ConfigError("device", f"{self.device!r} is not auto, cpu or cuda:N")
        if self.dtype not in DTYPES:
            raise ConfigError("dtype", f"{self.dtype!r} is not one of {', '.join(DTYPES)}")
        _positive_int("max_batch_size", self.max_batch_size)
        _positive_int("max_queue_size", self.max_queue_size)
        if not _is_number(self.max_queue_delay_ms) or self.max_queue_delay_ms < 0:
            raise ConfigError("max_queue_delay_ms", "must be a number >= 0")
        if not _is_number(self.timeout_s) or self.timeout_s <= 0:
            raise ConfigError("timeout_s", "must be a number > 0")
        prefs = tuple(self.preferred_batch_sizes)
        for p in prefs:
            _positive_int("preferred_batch_sizes", p)
            if p > self.max_batch_size:
                raise ConfigError("preferred_batch_sizes", f"{p} exceeds max_batch_size")
        object.__setattr__(self, "preferred_batch_sizes", tuple(sorted(set(prefs))))
        shape = tuple(self.input_shape)
        for d in shape:
            _positive_int("input_shape", d)
        object.__setattr__(self, "input_shape", shape)
        if self.input_dtype and self.input_dtype not in TENSOR_DTYPES:
            raise ConfigError("input_dtype", f"{self.input_dtype!r} is not one of {TENSOR_DTYPES}")
        if not isinstance(self.warmup, bool):
            raise ConfigError("warmup", "must be true or false")
        _validate_llm_options(self)
        _validate_remote_options(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """From a TOML table (or any mapping)."""
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise ConfigError(key, "unknown field")
        if "name" not in data:
            raise ConfigError("name", "is required")
        if "source" not in data:
            raise ConfigError("source", "is required")
        values = dict(data)
        for key in ("preferred_batch_sizes", "input_shape"):
            if key in values:
                if not isinstance(values[key], list | tuple):
                    raise ConfigError(key, "must be a list of integers")
                values[key] = tuple(values[key])
        return cls(**values)

    @classmethod
    def from_spec(cls, spec: str) -> ModelConfig:
        """From a CLI spec NAME=SOURCE[,key=value...]; list values use '+' (4+8+16)."""
        head, _, rest = spec.partition(",")
        name, eq, source = head.partition("=")
        if not eq:
            raise ConfigError("spec", f"{spec!r} is not NAME=SOURCE[,key=value...]")
        values: dict[str, Any] = {"name": name.strip(), "source": source.strip()}
        types = {f.name: f.type for f in fields(cls)}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, raw = item.partition("=")
            key = key.strip()
            if not eq:
                raise ConfigError(key or "spec", f"{item!r} is not key=value")
            if key not in types or key in ("name", "source"):
                raise ConfigError(key, "unknown field")
            values[key] = coerce(key, str(types[key]), raw.strip(), sep="+")
        return cls.from_dict(values)

    def resolved_device(self) -> str:
        if self.device != "auto":
            return "cuda:0" if self.device == "cuda" else self.device
        import torch

        return "cuda:0" if torch.cuda.is_available() else "cpu"

    def batch_buckets(self) -> tuple[int, ...]:
        """Batch sizes that get their own preallocated buffers (and CUDA graph)."""
        sizes = set(self.preferred_batch_sizes)
        b = 1
        while b < self.max_batch_size:
            sizes.add(b)
            b *= 2
        sizes.add(self.max_batch_size)
        return tuple(sorted(sizes))


def infer_format(source: str, factory: str = "") -> str:
    if source == "builtin:llm" or source.startswith("hf:"):
        return "llm"
    if source.partition("+")[0] in REMOTE_KINDS and "://" in source:
        return "remote"
    if source.startswith("builtin:"):
        return "builtin"
    if factory:
        return "state_dict"
    suffix = Path(source).suffix
    if suffix == ".pt2":
        return "export"
    if suffix in (".pt", ".ts", ".torchscript"):
        return "torchscript"
    raise ConfigError("format", f"cannot infer the format of {source!r}; set format=")


_LLM_DEFAULTS = {
    "size": "",
    "kv_cache_bytes": 0,
    "kv_cache_fraction": 0.0,
    "block_size": 16,
    "max_model_len": 0,
    "max_num_seqs": 64,
    "max_num_batched_tokens": 1024,
    "cpu_threads": 0,
}


def _validate_llm_options(c: ModelConfig) -> None:
    if c.format != "llm":
        for key, default in _LLM_DEFAULTS.items():
            if c.format == "remote" and key == "block_size":
                continue  # the engine's --block-size: remote prefix hashing needs it
            if getattr(c, key) != default:
                raise ConfigError(key, "applies only to LLM sources (builtin:llm, hf:PATH)")
        if c.format == "remote":
            _positive_int("block_size", c.block_size)
        return
    if c.source == "builtin:llm":
        object.__setattr__(c, "size", c.size or "small")
        if c.size not in LLM_SIZES:
            raise ConfigError("size", f"{c.size!r} is not one of {', '.join(LLM_SIZES)}")
    else:
        if c.size:
            raise ConfigError("size", "applies only to builtin:llm")
        if not c.source.removeprefix("hf:"):
            raise ConfigError("source", "hf: needs a directory, e.g. hf:/models/llama")
    if type(c.kv_cache_bytes) is not int or c.kv_cache_bytes < 0:
        raise ConfigError("kv_cache_bytes", f"{c.kv_cache_bytes!r} must be an integer >= 0")
    if not _is_number(c.kv_cache_fraction) or not 0 <= c.kv_cache_fraction <= 0.95:
        raise ConfigError("kv_cache_fraction", "must be a number in [0, 0.95]")
    if c.kv_cache_bytes and c.kv_cache_fraction:
        raise ConfigError("kv_cache_bytes", "set kv_cache_bytes or kv_cache_fraction, not both")
    _positive_int("block_size", c.block_size)
    if c.block_size > 256 or c.block_size & (c.block_size - 1):
        raise ConfigError("block_size", f"{c.block_size} must be a power of two <= 256")
    if type(c.max_model_len) is not int or c.max_model_len < 0:
        raise ConfigError("max_model_len", f"{c.max_model_len!r} must be an integer >= 0")
    _positive_int("max_num_seqs", c.max_num_seqs)
    _positive_int("max_num_batched_tokens", c.max_num_batched_tokens)
    if type(c.cpu_threads) is not int or c.cpu_threads < 0:
        raise ConfigError("cpu_threads", f"{c.cpu_threads!r} must be an integer >= 0")
    if c.max_num_batched_tokens < c.max_num_seqs:
        raise ConfigError(
            "max_num_batched_tokens", "must be >= max_num_seqs (every running sequence decodes)"
        )


_REMOTE_DEFAULTS = {
    "served_name": "",
    "health_path": "",
    "metrics_path": "",
    "probe_timeout_s": 0.0,
    "kv_events": "",
    "kv_events_replay": "",
    "kv_events_topic": "",
    "tokenizer": "",
}
_SOURCE_RE = re.compile(
    r"^(?P<kind>[a-z]+)\+(?P<scheme>[a-z]+)://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)"
    r"(?::(?P<port>[0-9]{1,5}))?(?P<path>/[^?#\s]*)?$"
)
_ZMQ_RE = re.compile(r"^(tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):[0-9]{1,5}|ipc://\S+)$")


@dataclass(frozen=True)
class EngineURL:
    """Where a remote engine listens: `KIND+http://HOST:PORT[/PREFIX]`."""

    kind: str  # vllm, sglang or openai
    host: str  # without IPv6 brackets
    port: int
    prefix: str  # "" or a path without a trailing "/", put before /v1/...

    @property
    def hostport(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.hostport}{self.prefix}"


def parse_engine_url(source: str) -> EngineURL:
    """Parse a remote source; ConfigError("source", ...) names what is wrong."""
    m = _SOURCE_RE.match(source)
    kinds = ", ".join(f"{k}+http://HOST:PORT" for k in REMOTE_KINDS)
    if m is None:
        raise ConfigError("source", f"{source!r} is not one of {kinds}")
    if m["kind"] not in REMOTE_KINDS:
        raise ConfigError("source", f"engine kind {m['kind']!r} is not one of {kinds}")
    if m["scheme"] != "http":
        raise ConfigError(
            "source", f"{m['scheme']}:// is not supported: the engine runs beside the daemon, "
            "so rumor speaks plain http to it (bind the engine to 127.0.0.1)"
        )
    if m["port"] is None:
        raise ConfigError("source", f"{source!r} needs a port, e.g. {m['kind']}+http://127.0.0.1:8000")
    port = int(m["port"])
    if not 0 < port < 65536:
        raise ConfigError("source", f"port {port} is out of range")
    return EngineURL(m["kind"], m["host"].strip("[]"), port, (m["path"] or "").rstrip("/"))


def _validate_remote_options(c: ModelConfig) -> None:
    if c.format != "remote":
        for key, default in _REMOTE_DEFAULTS.items():
            if getattr(c, key) != default:
                raise ConfigError(key, "applies only to remote engines (vllm+http://...)")
        return
    url = parse_engine_url(c.source)
    for key in ("served_name", "health_path", "metrics_path", "kv_events", "kv_events_replay",
                "kv_events_topic", "tokenizer"):
        if not isinstance(getattr(c, key), str):
            raise ConfigError(key, "must be a string")
    if len(c.served_name) > 256 or any(ord(ch) < 32 or ch == "\x7f" for ch in c.served_name):
        raise ConfigError("served_name", "must be at most 256 printable characters")
    object.__setattr__(c, "served_name", c.served_name or c.name)
    health_default, metrics_default = REMOTE_KINDS[url.kind]
    for key, default in (("health_path", health_default), ("metrics_path", metrics_default)):
        value = getattr(c, key) or default
        if value != "none" and (not value.startswith("/") or any(ch in value for ch in " ?#")):
            raise ConfigError(key, f"{value!r} must be a path like /health, or none")
        object.__setattr__(c, key, value)
    if not _is_number(c.probe_timeout_s) or c.probe_timeout_s < 0:
        raise ConfigError("probe_timeout_s", "must be a number >= 0 (0 = the probe interval)")
    for key in ("kv_events", "kv_events_replay"):
        value = getattr(c, key)
        if not value:
            continue
        if url.kind not in KV_EVENT_KINDS:
            raise ConfigError(
                key, f"{url.kind}+ engines publish no KV events (use vllm+ or sglang+)"
            )
        if "*" in value:
            raise ConfigError(
                key, f"{value!r} is a bind address; rumor connects to the engine: "
                "use its host, e.g. tcp://127.0.0.1:5557"
            )
        if not _ZMQ_RE.match(value):
            raise ConfigError(key, f"{value!r} is not tcp://HOST:PORT or ipc://PATH")
    if c.kv_events_replay and not c.kv_events:
        raise ConfigError("kv_events_replay", "needs kv_events (the publisher) too")
    if c.kv_events_topic and not c.kv_events:
        raise ConfigError("kv_events_topic", "needs kv_events (the publisher) too")


def _positive_int(name: str, v: object) -> None:
    if type(v) is not int or v <= 0:
        raise ConfigError(name, f"{v!r} must be a positive integer")


def _is_number(v: object) -> bool:
    return type(v) in (int, float)


def coerce(key: str, type_name: str, value: object, sep: str = ",") -> Any:
    """A setting's value as its declared type (a dataclass field's annotation,
    as a string), from TOML, a flag or an environment variable: the one
    string-to-type rule of every config (models, node, gossip, scenarios).
    Errors name the setting."""
    try:
        if "tuple" in type_name:
            items = value.split(sep) if isinstance(value, str) else list(value)  # type: ignore[call-overload]
            conv = int if "int" in type_name else str
            return tuple(conv(v.strip() if isinstance(v, str) else v) for v in items if v != "")
        if type_name == "bool":
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            if not isinstance(value, bool):
                raise ValueError(value)
            return value
        if type_name == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)  # type: ignore[call-overload]
        if type_name == "float":
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(key, f"{value!r} is not a valid {type_name}") from None
    if value is None:
        return None
    return value if not isinstance(value, str | int | float) else str(value)
