"""Built-in demo models, built in code from a fixed seed (nothing is downloaded),
and an exporter that writes them as real TorchScript, torch.export and
state_dict files so the file loaders are tested on real files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

SEED = 1234


@dataclass(frozen=True)
class IOSpec:
    """One named tensor; `shape` excludes the batch dimension."""

    name: str
    datatype: str  # KServe datatype: FP32, INT64, ...
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype, "shape": [-1, *self.shape]}


class MLPClassifier(nn.Module):
    """FP32 [batch, features] -> logits [batch, classes]."""

    def __init__(self, features: int = 256, hidden: int = 1024, classes: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(features, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TinyTransformer(nn.Module):
    """Token ids INT64 [batch, seq] -> pooled class logits [batch, classes]."""

    def __init__(
        self,
        vocab: int = 1000,
        seq: int = 32,
        dim: int = 128,
        heads: int = 4,
        layers: int = 2,
        classes: int = 8,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, seq, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=4 * dim, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(tokens) + self.pos)
        return self.head(h.mean(dim=1))


@dataclass(frozen=True)
class Builtin:
    factory: type[nn.Module]
    inputs: tuple[IOSpec, ...]
    outputs: tuple[IOSpec, ...]


BUILTINS: dict[str, Builtin] = {
    "mlp": Builtin(
        MLPClassifier, (IOSpec("input", "FP32", (256,)),), (IOSpec("output", "FP32", (16,)),)
    ),
    "transformer": Builtin(
        TinyTransformer, (IOSpec("input", "INT64", (32,)),), (IOSpec("output", "FP32", (8,)),)
    ),
}


def build_builtin(name: str) -> nn.Module:
    """The same weights every time: the module is built under a fixed seed."""
    spec = BUILTINS.get(name)
    if spec is None:
        raise KeyError(f"no built-in model {name!r}; have {', '.join(sorted(BUILTINS))}")
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(SEED)
        model = spec.factory()
    finally:
        torch.random.set_rng_state(gen_state)
    return model.eval()


def example_input(name: str, batch: int = 2) -> torch.Tensor:
    spec = BUILTINS[name].inputs[0]
    g = torch.Generator().manual_seed(SEED)
    if spec.datatype == "INT64":
        return torch.randint(0, 1000, (batch, *spec.shape), generator=g)
    return torch.randn((batch, *spec.shape), generator=g)


def mlp_factory() -> nn.Module:
    """`module:factory` target for the state_dict format: inference.models:mlp_factory."""
    return MLPClassifier()


def transformer_factory() -> nn.Module:
    return TinyTransformer()


def export_builtins(out_dir: Path) -> list[Path]:
    """Write each built-in as NAME.pt (TorchScript), NAME.pt2 (torch.export) and
    NAME.state.pt (state_dict), each with a NAME.*.json sidecar holding its I/O spec."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, spec in BUILTINS.items():
        model = build_builtin(name)
        example = example_input(name)
        io = {
            "inputs": [s.to_json() for s in spec.inputs],
            "outputs": [s.to_json() for s in spec.outputs],
        }
        with torch.inference_mode():
            ts = torch.jit.trace(model, example)
        ts_path = out_dir / f"{name}.pt"
        torch.jit.save(ts, str(ts_path))
        batch = torch.export.Dim("batch", min=1, max=4096)
        ep = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        ep_path = out_dir / f"{name}.pt2"
        torch.export.save(ep, str(ep_path))
        sd_path = out_dir / f"{name}.state.pt"
        torch.save(model.state_dict(), sd_path)
        for path in (ts_path, ep_path, sd_path):
            sidecar = path.with_suffix(path.suffix + ".json")
            sidecar.write_text(json.dumps(io, indent=1))
            written += [path, sidecar]
    return written
