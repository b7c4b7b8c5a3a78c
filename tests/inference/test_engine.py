"""TorchEngine: built-ins, real exported files, validation, buffer reuse, CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inference.config import ModelConfig
from inference.engine import TorchEngine
from inference.errors import InvalidInput
from inference.models import build_builtin, example_input, export_builtins

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models")
    export_builtins(out)
    return out


def plain_forward(model: str, x: torch.Tensor) -> torch.Tensor:
    """The built-in model's own forward, as plain PyTorch runs it."""
    module = build_builtin(model).eval()
    with torch.inference_mode():
        out: torch.Tensor = module(x)
    return out


def test_builtins_are_deterministic() -> None:
    x = example_input("mlp", 3)
    with torch.inference_mode():
        a, b = build_builtin("mlp")(x), build_builtin("mlp")(x)
    assert torch.equal(a, b)


@pytest.mark.parametrize("model", ["mlp", "transformer"])
@pytest.mark.parametrize(
    "fmt,suffix,extra",
    [
        ("torchscript", ".pt", ""),
        ("export", ".pt2", ""),
        ("state_dict", ".state.pt", ",factory=inference.models:{model}_factory"),
    ],
)
def test_file_formats_match_the_builtin(
    exported: Path, model: str, fmt: str, suffix: str, extra: str
) -> None:
    engine = TorchEngine()
    spec = f"f={exported / (model + suffix)},format={fmt},device=cpu" + extra.format(model=model)
    desc = engine.load(ModelConfig.from_spec(spec))
    engine.load(ModelConfig.from_spec(f"b=builtin:{model},device=cpu"))
    assert desc.format == fmt
    x = example_input(model, 5)
    want = plain_forward(model, x)  # the plain nn.Module, no engine involved
    for name in ("f", "b"):
        got = engine.predict(name, [{"input": x}])[0]["output"]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_batch_of_requests_equals_each_alone() -> None:
    engine = TorchEngine()
    engine.load(ModelConfig.from_spec("m=builtin:mlp,device=cpu,max_batch_size=16"))
    x = example_input("mlp", 7)
    parts = [x[:1], x[1:4], x[4:]]
    batched = [v["output"].clone() for v in engine.predict("m", [{"input": p} for p in parts])]
    for p, got in zip(parts, batched, strict=True):
        torch.testing.assert_close(got, plain_forward("mlp", p), atol=1e-5, rtol=1e-4)
        alone = engine.predict("m", [{"input": p}])[0]["output"]
        torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-4)


def test_buffers_are_reused_across_batches() -> None:
    engine = TorchEngine()
    engine.load(ModelConfig.from_spec("m=builtin:mlp,device=cpu,max_batch_size=8"))
    x = example_input("mlp", 3)
    first = engine.predict("m", [{"input": x}])[0]["output"]
    second = engine.predict("m", [{"input": x + 1}])[0]["output"]
    # Same storage: outputs land in the bucket's preallocated buffer every time.
    assert first.data_ptr() == second.data_ptr()


@pytest.mark.parametrize(
    "inputs,message",
    [
        ({"wrong": torch.zeros(1, 256)}, "named 'input'"),
        ({"input": torch.zeros(1, 255)}, "shape"),
        ({"input": torch.zeros(256)}, "shape"),
        ({"input": torch.zeros(1, 256, dtype=torch.int64)}, "FP32"),
        ({"input": torch.zeros(65, 256)}, "rows"),
        ({"input": torch.zeros(0, 256)}, "rows"),
    ],
)
def test_validation_names_the_problem(inputs: dict[str, torch.Tensor], message: str) -> None:
    engine = TorchEngine()
    engine.load(ModelConfig.from_spec("m=builtin:mlp,device=cpu,max_batch_size=64"))
    with pytest.raises(InvalidInput, match=message):
        engine.validate("m", inputs)


def test_token_ids_out_of_range_are_rejected_per_request() -> None:
    engine = TorchEngine()
    engine.load(ModelConfig.from_spec("t=builtin:transformer,device=cpu"))
    with pytest.raises(InvalidInput, match="values"):
        engine.validate("t", {"input": torch.full((1, 32), 5000)})


def test_describe_reports_io_and_memory() -> None:
    engine = TorchEngine()
    desc = engine.load(ModelConfig.from_spec("m=builtin:transformer,device=cpu"))
    j = desc.to_json()
    assert j["inputs"] == [{"name": "input", "datatype": "INT64", "shape": [-1, 32]}]
    assert j["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 8]}]
    assert desc.memory_bytes > sum(p.numel() * 4 for p in build_builtin("transformer").parameters())


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (none on this machine)")
def test_cuda_path_uses_pinned_buffers_and_graphs() -> None:
    engine = TorchEngine()
    desc = engine.load(ModelConfig.from_spec("m=builtin:mlp,device=cuda,max_batch_size=16"))
    assert desc.device.startswith("cuda") and desc.cuda_graphs
    x = example_input("mlp", 5)
    got = engine.predict("m", [{"input": x[:2]}, {"input": x[2:]}])
    want = plain_forward("mlp", x)
    torch.testing.assert_close(
        torch.cat([got[0]["output"].cpu(), got[1]["output"].cpu()]), want, atol=1e-3, rtol=1e-3
    )
    assert got[0]["output"].is_pinned()
