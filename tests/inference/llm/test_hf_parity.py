"""Parity with Hugging Face transformers' LlamaForCausalLM (float32), and loading
a save_pretrained directory through `hf:PATH`. Nothing is downloaded: the
reference model is built from a LlamaConfig in code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from inference.llm.core import EngineCore
from inference.llm.params import SamplingParams
from inference.llm.tokenizer import builtin_tokenizer

from .conftest import llm_config

transformers = pytest.importorskip("transformers", reason="transformers is a dev dependency")

VARIANTS: dict[str, dict[str, Any]] = {
    "default-rope": {"tie_word_embeddings": False},
    "llama3-rope-tied": {
        "tie_word_embeddings": True,
        "rope_parameters": {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    },
}


def save_hf_model(path: Path, variant: str) -> Any:
    tok = builtin_tokenizer()
    torch.manual_seed(3)
    cfg = transformers.LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_ids[0],
        **VARIANTS[variant],
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(path)  # config.json + model.safetensors
    tok.tokenizer.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": "<|bos|>",
                "eos_token": "<|eos|>",
                "add_bos_token": True,
                "chat_template": "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n"
                "{% endfor %}[assistant]",
            }
        )
    )
    return model


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_tokens_and_logits_match_transformers(tmp_path: Path, variant: str) -> None:
    hf = save_hf_model(tmp_path, variant)
    # Chunks of 16 tokens: the prompt runs as several prefill chunks, then decodes.
    engine = EngineCore.from_config(
        llm_config(source=f"hf:{tmp_path}", size="", max_model_len=256, max_num_batched_tokens=16)
    )
    prompt = engine.tokenizer.encode("The scheduler wakes up for every step and looks around.")
    assert len(prompt) > 16
    logits: list[torch.Tensor] = []
    execute = engine.runner.execute
    engine.runner.execute = lambda chunks: logits.append(out := execute(chunks)) or out
    n = 24
    engine.add_request("r", prompt, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True))
    ours: list[int] = []
    while engine.has_unfinished():
        for o in engine.step():
            ours += o.token_ids
    step_logits = torch.cat([x for x in logits if len(x)])
    with torch.no_grad():
        ref = hf.generate(
            torch.tensor([prompt]),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    hf_tokens = ref.sequences[0, len(prompt) :].tolist()
    assert ours == hf_tokens
    hf_logits = torch.cat(ref.logits).float()
    assert step_logits.shape == hf_logits.shape
    assert (step_logits - hf_logits).abs().max().item() < 1e-4


def test_hf_directory_brings_its_tokenizer_and_chat_template(tmp_path: Path) -> None:
    save_hf_model(tmp_path, "default-rope")
    engine = EngineCore.from_config(llm_config(source=f"hf:{tmp_path}", size="", max_model_len=256))
    tok = engine.tokenizer
    assert tok.fingerprint() != builtin_tokenizer().fingerprint()  # the template differs
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "[user] hi\n[assistant]"
    assert tok.eos_token_ids == builtin_tokenizer().eos_token_ids
    info = engine.describe()
    assert info.source == f"hf:{tmp_path}" and info.max_model_len == 256
    assert info.num_params == sum(
        p.numel() for p in transformers.LlamaForCausalLM.from_pretrained(tmp_path).parameters()
    )


def test_missing_or_unsupported_directories_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        EngineCore.from_config(llm_config(source=f"hf:{tmp_path / 'nope'}", size=""))
    save_hf_model(tmp_path, "default-rope")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="not supported"):
        EngineCore.from_config(llm_config(source=f"hf:{tmp_path}", size=""))
