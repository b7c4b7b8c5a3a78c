"""A Llama-architecture decoder in plain torch: RMSNorm, RoPE, grouped-query
attention, SwiGLU (Touvron et al. 2023; Hugging Face's `modeling_llama.py` is
the reference it is tested against, token for token).

This module holds the architecture and its weights: the spec, the built-in
sizes with seeded random weights, loading a Hugging Face-style directory, and
`reference_forward`, a plain full-sequence forward pass with no cache that the
tests use as the oracle for the paged one in `runner.py`.

Weights are kept fused where the math allows (q|k|v and gate|up each become
one matrix): fewer, larger matmuls cost less per step on a CPU.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

#: Built-in sizes: (hidden, layers, heads, kv heads, intermediate). All use
#: grouped-query attention; "small" is about 3 M parameters, quick on 2 cores.
BUILTIN_SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (64, 2, 4, 2, 176),
    "small": (256, 4, 8, 2, 688),
    "medium": (512, 8, 8, 2, 1376),
}
BUILTIN_SEED = 20261129
BUILTIN_MAX_POSITIONS = 4096


@dataclass(frozen=True)
class LlamaSpec:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] = ()  # llama3-style scaling, as items
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> LlamaSpec:
        """From a Hugging Face config.json (transformers 4 or 5 layout)."""
        arch = cfg.get("model_type")
        if arch != "llama":
            raise ValueError(f"model_type {arch!r} is not supported (only 'llama')")
        for flag in ("attention_bias", "mlp_bias"):
            if cfg.get(flag):
                raise ValueError(f"{flag}=true is not supported")
        if cfg.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act {cfg.get('hidden_act')!r} is not supported")
        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        theta = float(rope.pop("rope_theta", cfg.get("rope_theta", 10000.0)))
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind not in ("default", "llama3"):
            raise ValueError(f"rope type {kind!r} is not supported (default, llama3)")
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        return cls(
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=tuple(sorted(rope.items())) if kind == "llama3" else (),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        )

    def to_hf_config(self) -> dict[str, Any]:
        return {
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
        }

    def kv_bytes_per_token(self, dtype: torch.dtype) -> int:
        elem = torch.empty((), dtype=dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * elem


@dataclass
class LayerWeights:
    input_norm: torch.Tensor
    qkv: torch.Tensor  # [(heads + 2 kv heads) * head_dim, hidden]
    o: torch.Tensor
    post_norm: torch.Tensor
    gate_up: torch.Tensor  # [2 * intermediate, hidden]
    down: torch.Tensor


@dataclass
class LlamaWeights:
    spec: LlamaSpec
    embed: torch.Tensor
    layers: list[LayerWeights]
    norm: torch.Tensor
    lm_head: torch.Tensor

    def num_params(self) -> int:
        tensors = [self.embed, self.norm]
        if self.lm_head.data_ptr() != self.embed.data_ptr():
            tensors.append(self.lm_head)
        for lw in self.layers:
            tensors += [lw.input_norm, lw.qkv, lw.o, lw.post_norm, lw.gate_up, lw.down]
        return sum(t.numel() for t in tensors)

    @classmethod
    def from_state_dict(cls, spec: LlamaSpec, sd: dict[str, torch.Tensor]) -> LlamaWeights:
        """From Hugging Face parameter names (`model.layers.N.self_attn.q_proj.weight`...)."""
        sd = {k.removeprefix("model."): v for k, v in sd.items()}

        def take(name: str, shape: tuple[int, ...]) -> torch.Tensor:
            if name not in sd:
                raise ValueError(f"weights lack {name!r}")
            t = sd[name]
            if tuple(t.shape) != shape:
                raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape}")
            return t

        h, hd = spec.hidden_size, spec.head_dim
        q_out, kv_out, inter = spec.num_heads * hd, spec.num_kv_heads * hd, spec.intermediate_size
        layers = []
        for i in range(spec.num_layers):
            p = f"layers.{i}."
            layers.append(
                LayerWeights(
                    input_norm=take(p + "input_layernorm.weight", (h,)),
                    qkv=torch.cat(
                        [
                            take(p + "self_attn.q_proj.weight", (q_out, h)),
                            take(p + "self_attn.k_proj.weight", (kv_out, h)),
                            take(p + "self_attn.v_proj.weight", (kv_out, h)),
                        ]
                    ),
                    o=take(p + "self_attn.o_proj.weight", (h, q_out)),
                    post_norm=take(p + "post_attention_layernorm.weight", (h,)),
                    gate_up=torch.cat(
                        [
                            take(p + "mlp.gate_proj.weight", (inter, h)),
                            take(p + "mlp.up_proj.weight", (inter, h)),
                        ]
                    ),
                    down=take(p + "mlp.down_proj.weight", (h, inter)),
                )
            )
        embed = take("embed_tokens.weight", (spec.vocab_size, h))
        if spec.tie_word_embeddings or "lm_head.weight" not in sd:
            lm_head = embed
        else:
            lm_head = take("lm_head.weight", (spec.vocab_size, h))
        return cls(spec, embed, layers, take("norm.weight", (h,)), lm_head)

    def to(self, device: torch.device, dtype: torch.dtype) -> LlamaWeights:
        def mv(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype).contiguous()

        embed = mv(self.embed)
        tied = self.lm_head.data_ptr() == self.embed.data_ptr()
        layers = [
            LayerWeights(*(mv(getattr(lw, f)) for f in LayerWeights.__dataclass_fields__))
            for lw in self.layers
        ]
        return LlamaWeights(
            self.spec, embed, layers, mv(self.norm), embed if tied else mv(self.lm_head)
        )

    def to_hf_state_dict(self) -> dict[str, torch.Tensor]:
        """Hugging Face names, unfused (for save_pretrained-style directories)."""
        s = self.spec
        q_out, kv_out = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
        sd = {"model.embed_tokens.weight": self.embed, "model.norm.weight": self.norm}
        if not s.tie_word_embeddings:
            sd["lm_head.weight"] = self.lm_head
        for i, lw in enumerate(self.layers):
            p = f"model.layers.{i}."
            q, k, v = lw.qkv.split_with_sizes([q_out, kv_out, kv_out])
            g, u = lw.gate_up.chunk(2)
            sd.update(
                {
                    p + "input_layernorm.weight": lw.input_norm,
                    p + "self_attn.q_proj.weight": q,
                    p + "self_attn.k_proj.weight": k,
                    p + "self_attn.v_proj.weight": v,
                    p + "self_attn.o_proj.weight": lw.o,
                    p + "post_attention_layernorm.weight": lw.post_norm,
                    p + "mlp.gate_proj.weight": g,
                    p + "mlp.up_proj.weight": u,
                    p + "mlp.down_proj.weight": lw.down,
                }
            )
        return {k: v.contiguous() for k, v in sd.items()}


def builtin_spec(size: str, vocab_size: int) -> LlamaSpec:
    if size not in BUILTIN_SIZES:
        raise ValueError(f"no built-in LLM size {size!r}; have {', '.join(BUILTIN_SIZES)}")
    hidden, layers, heads, kv_heads, inter = BUILTIN_SIZES[size]
    return LlamaSpec(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=inter,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=hidden // heads,
        max_position_embeddings=BUILTIN_MAX_POSITIONS,
    )


def random_weights(spec: LlamaSpec, seed: int = BUILTIN_SEED) -> LlamaWeights:
    """Seeded random weights (normal, std 0.02, as Hugging Face initialises Llama;
    norms at 1). Drawn on the CPU from one generator in a fixed order, so the
    same seed gives the same weights everywhere."""
    g = torch.Generator().manual_seed(seed)
    s = spec

    def normal(*shape: int) -> torch.Tensor:
        return torch.empty(shape).normal_(0.0, 0.02, generator=g)

    hd = s.head_dim
    layers = [
        LayerWeights(
            input_norm=torch.ones(s.hidden_size),
            qkv=normal((s.num_heads + 2 * s.num_kv_heads) * hd, s.hidden_size),
            o=normal(s.hidden_size, s.num_heads * hd),
            post_norm=torch.ones(s.hidden_size),
            gate_up=normal(2 * s.intermediate_size, s.hidden_size),
            down=normal(s.hidden_size, s.intermediate_size),
        )
        for _ in range(s.num_layers)
    ]
    embed = normal(s.vocab_size, s.hidden_size)
    lm_head = embed if s.tie_word_embeddings else normal(s.vocab_size, s.hidden_size)
    return LlamaWeights(s, embed, layers, torch.ones(s.hidden_size), lm_head)


def load_hf_weights(path: Path) -> tuple[LlamaSpec, LlamaWeights, dict[str, Any]]:
    """config.json and every *.safetensors file of a Hugging Face-style directory."""
    from safetensors.torch import load_file

    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file} does not exist")
    cfg = json.loads(cfg_file.read_text())
    spec = LlamaSpec.from_hf_config(cfg)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors file in {path}")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(load_file(str(f)))
    return spec, LlamaWeights.from_state_dict(spec, sd), cfg


# -- the math, shared by the paged runner and the reference ------------------


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # In float32 whatever the weights' dtype, as Hugging Face's LlamaRMSNorm does.
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def rope_tables(spec: LlamaSpec, length: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """cos and sin, [length, head_dim], in float32 (computed once per model load)."""
    d = spec.head_dim
    inv_freq = 1.0 / (spec.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    if spec.rope_scaling:
        inv_freq = _llama3_scaling(inv_freq, dict(spec.rope_scaling))
    t = torch.arange(length, dtype=torch.int64).float()
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(device), emb.sin().to(device)


def _llama3_scaling(inv_freq: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
    # Llama 3.1's frequency-dependent scaling (as transformers' _compute_llama3_parameters).
    factor, low, high = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
    old_len = p["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [tokens, heads, head_dim]; cos, sin: [tokens, head_dim] (rotate-half form)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1)


def mlp(x: torch.Tensor, lw: LayerWeights) -> torch.Tensor:
    gate, up = F.linear(x, lw.gate_up).chunk(2, dim=-1)
    return F.linear(F.silu(gate) * up, lw.down)


@torch.inference_mode()
def reference_forward(weights: LlamaWeights, token_ids: list[int]) -> torch.Tensor:
    """Logits for every position of one sequence, with no KV cache (test oracle)."""
    s = weights.spec
    dev = weights.embed.device
    n, hd = len(token_ids), s.head_dim
    cos, sin = rope_tables(s, n, dev)
    x = weights.embed[torch.tensor(token_ids, device=dev)]
    for lw in weights.layers:
        h = rms_norm(x, lw.input_norm, s.rms_norm_eps)
        q, k, v = F.linear(h, lw.qkv).split_with_sizes(
            [s.num_heads * hd, s.num_kv_heads * hd, s.num_kv_heads * hd], dim=-1
        )
        q = apply_rope(q.view(n, s.num_heads, hd), cos.to(x.dtype), sin.to(x.dtype))
        k = apply_rope(k.view(n, s.num_kv_heads, hd), cos.to(x.dtype), sin.to(x.dtype))
        v = v.view(n, s.num_kv_heads, hd)
        attn = F.scaled_dot_product_attention(
            q.transpose(0, 1),
            k.transpose(0, 1),
            v.transpose(0, 1),
            is_causal=True,
            enable_gqa=True,
        )
        x = x + F.linear(attn.transpose(0, 1).reshape(n, -1), lw.o)
        x = x + mlp(rms_norm(x, lw.post_norm, s.rms_norm_eps), lw)
    return F.linear(rms_norm(x, weights.norm, s.rms_norm_eps), weights.lm_head).float()
