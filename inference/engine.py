"""The engine: loads models and runs predictions on batches. Nothing else.

Scheduling (queues, batching, timeouts, routing) lives elsewhere and talks to
an engine only through the `Engine` interface, so another backend can replace
`TorchEngine` without touching the batcher or the node.

`TorchEngine` keeps, per model and per batch-size bucket, preallocated input
and output buffers that every batch reuses: a batch is copied row by row into
the bucket's input buffer, run, and its outputs land in the bucket's output
buffer. On CUDA the host buffers are pinned, copies are non_blocking, the only
synchronisation is the one event wait before results are read, and each
bucket's forward pass can be a captured CUDA graph.
"""

from __future__ import annotations

import importlib
import json
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig
from .errors import InvalidInput, ModelNotReady
from .models import BUILTINS, IOSpec, build_builtin

TORCH_DTYPES: dict[str, torch.dtype] = {
    "FP32": torch.float32,
    "FP16": torch.float16,
    "BF16": torch.bfloat16,
    "INT64": torch.int64,
    "INT32": torch.int32,
}
WEIGHT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_CAPTURE_LOCK = threading.Lock()

#: Inclusive value range of integer inputs that index a table (token ids), so a
#: bad id is one request's 400 and not a failed batch.
INT_RANGES: dict[tuple[str, str], tuple[int, int]] = {("transformer", "input"): (0, 999)}


@dataclass(frozen=True)
class ModelDescription:
    name: str
    format: str
    device: str
    dtype: str
    inputs: tuple[IOSpec, ...]
    outputs: tuple[IOSpec, ...]
    max_batch_size: int
    buckets: tuple[int, ...]
    memory_bytes: int  # weights plus preallocated buffers
    cuda_graphs: tuple[int, ...] = ()  # buckets that run as CUDA graphs
    int_range: tuple[int, int] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "platform": f"pytorch_{self.format}",
            "device": self.device,
            "dtype": self.dtype,
            "inputs": [s.to_json() for s in self.inputs],
            "outputs": [s.to_json() for s in self.outputs],
            "max_batch_size": self.max_batch_size,
            "memory_bytes": self.memory_bytes,
            "cuda_graphs": list(self.cuda_graphs),
        }


class Engine(ABC):
    """What the scheduler needs from a backend. All methods may block: callers
    run them on a worker thread, never on the event loop (except `validate`
    and `describe`, which are cheap)."""

    @abstractmethod
    def load(self, config: ModelConfig) -> ModelDescription: ...

    @abstractmethod
    def unload(self, name: str) -> None: ...

    @abstractmethod
    def describe(self, name: str) -> ModelDescription: ...

    @abstractmethod
    def validate(self, name: str, inputs: Mapping[str, torch.Tensor]) -> int:
        """Check one request's tensors; returns its row count or raises InvalidInput."""

    @abstractmethod
    def predict(
        self, name: str, requests: Sequence[Mapping[str, torch.Tensor]]
    ) -> list[dict[str, torch.Tensor]]:
        """Run validated requests as one batch. The returned tensors are views of
        reused buffers, valid until the next `predict` of this model."""

    @abstractmethod
    def memory(self, name: str) -> tuple[int, int]:
        """(used, free) bytes of the model's device."""


@dataclass
class _Bucket:
    size: int
    host_in: torch.Tensor
    dev_in: torch.Tensor
    host_out: torch.Tensor
    graph: Any = None  # torch.cuda.CUDAGraph
    static_out: torch.Tensor | None = None


@dataclass
class _Loaded:
    desc: ModelDescription
    module: Any
    device: torch.device
    buckets: list[_Bucket]
    lock: threading.Lock = field(default_factory=threading.Lock)
    stream: Any = None


class TorchEngine(Engine):
    def __init__(self) -> None:
        self._models: dict[str, _Loaded] = {}

    # -- loading -------------------------------------------------------------

    def load(self, config: ModelConfig) -> ModelDescription:
        device = torch.device(config.resolved_device())
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {device} requested but CUDA is not available")
        module, inputs, outputs = _load_module(config, device)
        if len(inputs) != 1 or len(outputs) != 1:
            raise RuntimeError("only single-input, single-output models are supported")
        wdtype = WEIGHT_DTYPES[config.dtype]
        # Exported programs are already in inference form (they refuse .eval()).
        module = module.to(device=device, dtype=wdtype)
        if config.format != "export":
            module = module.eval()
        in_spec = inputs[0]
        in_dtype = TORCH_DTYPES[in_spec.datatype]
        if in_dtype.is_floating_point:
            in_dtype = wdtype
        # One probe row tells the real output shape and dtype, whatever a sidecar says.
        with torch.inference_mode():
            probe = module(torch.zeros((1, *in_spec.shape), dtype=in_dtype, device=device))
        out_dtype = probe.dtype
        out_spec = IOSpec(outputs[0].name, _kserve_dtype(out_dtype), tuple(probe.shape[1:]))
        pin = device.type == "cuda"
        buckets: list[_Bucket] = []
        for b in config.batch_buckets():
            host_in = torch.zeros((b, *in_spec.shape), dtype=in_dtype, pin_memory=pin)
            dev_in = host_in.to(device) if pin else host_in
            host_out = torch.zeros((b, *out_spec.shape), dtype=out_dtype, pin_memory=pin)
            buckets.append(_Bucket(b, host_in, dev_in, host_out))
        loaded = _Loaded(
            desc=ModelDescription(
                name=config.name,
                format=config.format,
                device=str(device),
                dtype=config.dtype,
                inputs=(in_spec,),
                outputs=(out_spec,),
                max_batch_size=config.max_batch_size,
                buckets=config.batch_buckets(),
                memory_bytes=0,
                int_range=INT_RANGES.get((_builtin_name(config), in_spec.name)),
            ),
            module=module,
            device=device,
            buckets=buckets,
            stream=torch.cuda.Stream(device) if pin else None,
        )
        graphs: list[int] = []
        if config.warmup or (pin and config.cuda_graphs):
            with torch.inference_mode():
                for bucket in buckets:
                    self._forward(loaded, bucket)
                    if pin and config.cuda_graphs and _capture(loaded, bucket):
                        graphs.append(bucket.size)
        mem = _tensor_bytes(module) + sum(
            t.numel() * t.element_size()
            for bk in buckets
            for t in {id(x): x for x in (bk.host_in, bk.dev_in, bk.host_out)}.values()
        )
        loaded.desc = _replace(loaded.desc, memory_bytes=mem, cuda_graphs=tuple(graphs))
        self._models[config.name] = loaded
        return loaded.desc

    def unload(self, name: str) -> None:
        loaded = self._models.pop(name, None)
        if loaded is not None and loaded.device.type == "cuda":
            with loaded.lock:
                loaded.buckets.clear()
            torch.cuda.empty_cache()

    def describe(self, name: str) -> ModelDescription:
        return self._get(name).desc

    def _get(self, name: str) -> _Loaded:
        loaded = self._models.get(name)
        if loaded is None:
            raise ModelNotReady(f"model {name!r} is not loaded")
        return loaded

    # -- serving -------------------------------------------------------------

    def validate(self, name: str, inputs: Mapping[str, torch.Tensor]) -> int:
        desc = self._get(name).desc
        spec = desc.inputs[0]
        if set(inputs) != {spec.name}:
            raise InvalidInput(
                f"model {name!r} takes one input named {spec.name!r}, got {sorted(inputs)}"
            )
        t = inputs[spec.name]
        if not isinstance(t, torch.Tensor):
            raise InvalidInput(f"input {spec.name!r} must be a tensor")
        want = TORCH_DTYPES[spec.datatype]
        if want.is_floating_point != t.dtype.is_floating_point or t.dtype == torch.bool:
            raise InvalidInput(
                f"input {spec.name!r} must be {spec.datatype}, got {_kserve_dtype(t.dtype)}"
            )
        if t.dim() != 1 + len(spec.shape) or tuple(t.shape[1:]) != spec.shape:
            raise InvalidInput(
                f"input {spec.name!r} must have shape [-1, {', '.join(map(str, spec.shape))}], "
                f"got {list(t.shape)}"
            )
        rows = int(t.shape[0])
        if not 1 <= rows <= desc.max_batch_size:
            raise InvalidInput(
                f"input {spec.name!r} has {rows} rows; this model takes 1..{desc.max_batch_size}"
            )
        if desc.int_range is not None and t.numel():
            lo, hi = desc.int_range
            if int(t.min()) < lo or int(t.max()) > hi:
                raise InvalidInput(f"input {spec.name!r} values must lie in [{lo}, {hi}]")
        return rows

    def predict(
        self, name: str, requests: Sequence[Mapping[str, torch.Tensor]]
    ) -> list[dict[str, torch.Tensor]]:
        loaded = self._get(name)
        in_name = loaded.desc.inputs[0].name
        out_name = loaded.desc.outputs[0].name
        rows = [r[in_name].shape[0] for r in requests]
        total = sum(rows)
        bucket = _pick_bucket(loaded.buckets, total)
        with loaded.lock, torch.inference_mode():
            off = 0
            for req, k in zip(requests, rows, strict=True):
                bucket.host_in[off : off + k].copy_(req[in_name])
                off += k
            out = self._forward(loaded, bucket, total)
        views: list[dict[str, torch.Tensor]] = []
        off = 0
        for k in rows:
            views.append({out_name: out[off : off + k]})
            off += k
        return views

    def _forward(self, loaded: _Loaded, bucket: _Bucket, total: int | None = None) -> torch.Tensor:
        n = bucket.size if total is None else total
        if loaded.stream is None:  # CPU: the input buffer is the device buffer
            result = loaded.module(bucket.dev_in)
            bucket.host_out[:n].copy_(result[:n])
            return bucket.host_out[:n]
        with torch.cuda.stream(loaded.stream):
            bucket.dev_in.copy_(bucket.host_in, non_blocking=True)
            if bucket.graph is not None:
                bucket.graph.replay()
                result = bucket.static_out
            else:
                result = loaded.module(bucket.dev_in)
            assert result is not None
            bucket.host_out[:n].copy_(result[:n], non_blocking=True)
        # The one synchronisation point: results are about to be read on the host.
        loaded.stream.synchronize()
        return bucket.host_out[:n]

    def memory(self, name: str) -> tuple[int, int]:
        loaded = self._get(name)
        if loaded.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(loaded.device)
            return total - free, free
        free_pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return loaded.desc.memory_bytes, free_pages

    def loaded(self) -> list[str]:
        return sorted(self._models)


def _pick_bucket(buckets: list[_Bucket], total: int) -> _Bucket:
    for b in buckets:
        if b.size >= total:
            return b
    raise InvalidInput(f"batch of {total} rows exceeds the largest bucket {buckets[-1].size}")


def _capture(loaded: _Loaded, bucket: _Bucket) -> bool:
    """Capture the bucket's forward pass as a CUDA graph; False if the model can't be."""
    try:
        stream = loaded.stream
        stream.wait_stream(torch.cuda.current_stream(loaded.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                loaded.module(bucket.dev_in)
        stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        # Models load on their own worker threads. "thread_local" keeps this
        # capture from failing other threads' CUDA work (their loads, their
        # batches), and one capture at a time keeps captures apart.
        with (
            _CAPTURE_LOCK,
            torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"),
        ):
            static_out = loaded.module(bucket.dev_in)
        bucket.graph, bucket.static_out = graph, static_out
        return True
    except Exception:  # capture is an optimisation: any failure means eager mode
        bucket.graph = bucket.static_out = None
        return False


def _builtin_name(config: ModelConfig) -> str:
    if config.format == "builtin":
        return config.source.removeprefix("builtin:")
    stem = Path(config.source).name.split(".")[0]
    return stem if stem in BUILTINS else ""


def _load_module(
    config: ModelConfig, device: torch.device
) -> tuple[Any, tuple[IOSpec, ...], tuple[IOSpec, ...]]:
    fmt = config.format
    if fmt == "builtin":
        name = config.source.removeprefix("builtin:")
        if name not in BUILTINS:
            raise FileNotFoundError(f"no built-in model {name!r}; have {', '.join(BUILTINS)}")
        spec = BUILTINS[name]
        return build_builtin(name), spec.inputs, spec.outputs
    path = Path(config.source)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    inputs, outputs = _io_spec(config, path)
    if fmt == "torchscript":
        return torch.jit.load(str(path), map_location=device).eval(), inputs, outputs
    if fmt == "export":
        return torch.export.load(str(path)).module(), inputs, outputs
    # state_dict + module:factory
    mod_name, _, fn_name = config.factory.partition(":")
    factory = getattr(importlib.import_module(mod_name), fn_name)
    module = factory()
    module.load_state_dict(torch.load(str(path), map_location="cpu", weights_only=True))
    return module.eval(), inputs, outputs


def _io_spec(config: ModelConfig, path: Path) -> tuple[tuple[IOSpec, ...], tuple[IOSpec, ...]]:
    """The I/O spec from config fields, else from the sidecar PATH.json."""
    if config.input_shape and config.input_dtype:
        inp = IOSpec(config.input_name, config.input_dtype, config.input_shape)
        # The output shape is discovered at warmup; until then it is unknown.
        return (inp,), (IOSpec(config.output_name, "FP32", ()),)
    sidecar = path.with_suffix(path.suffix + ".json")
    if not sidecar.is_file():
        raise FileNotFoundError(
            f"{path} has no I/O spec: set input_shape and input_dtype, or ship {sidecar.name}"
        )
    spec = json.loads(sidecar.read_text())

    def parse(items: list[dict[str, Any]]) -> tuple[IOSpec, ...]:
        return tuple(IOSpec(i["name"], i["datatype"], tuple(i["shape"][1:])) for i in items)

    return parse(spec["inputs"]), parse(spec["outputs"])


def _tensor_bytes(module: Any) -> int:
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        total += t.numel() * t.element_size()
    return total


def _kserve_dtype(dtype: torch.dtype) -> str:
    for k, v in TORCH_DTYPES.items():
        if v == dtype:
            return k
    return str(dtype).removeprefix("torch.").upper()


def _replace(desc: ModelDescription, **changes: Any) -> ModelDescription:
    from dataclasses import replace

    return replace(desc, **changes)
