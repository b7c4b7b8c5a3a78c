"""LLM engine benchmark (inference/llm), CPU-sized.

    python bench/llm_bench.py [batching|hf|prefix|memory|ipc|all] [--size small]
        [--threads 1] [--device cpu] [--json]

1. batching: output tokens/s with 32 concurrent greedy streams against the
   same requests one at a time (target >= 8x).
2. hf: the engine against a bare transformers `generate()` on the same
   weights and the same batch of 32 equal-length prompts (target >= 1.0x);
   the greedy tokens are checked equal.
3. prefix: time to first token of a prompt whose 1,024-token prefix is cached,
   against cold prompts of the same length (target <= 0.2x).
4. memory: RSS over 10,000 short requests through the in-process trio client
   (target flat within +-5% after warm-up); the KV pool's storage is checked
   to be the same tensors at the end.
5. ipc: the engine process (Unix socket + msgpack) against the in-process
   driver: TTFT of a short prompt at idle, and tokens/s with 32 streams.

Every figure is a ratio measured in the same run; compared pairs run
interleaved `--reps` times (medians reported), because the 2 cores are shared.
Run under the shared lock:
    flock /work/bench.lock .venv/bin/python bench/llm_bench.py all
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch
import trio

from inference.config import ModelConfig
from inference.llm.client import LLMClient, open_in_process
from inference.llm.core import EngineCore
from inference.llm.host import open_process_engine
from inference.llm.params import SamplingParams


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def config(args: argparse.Namespace, **kw: Any) -> ModelConfig:
    values: dict[str, Any] = {
        "name": "bench",
        "source": "builtin:llm",
        "size": args.size,
        "device": args.device,
        "kv_cache_bytes": 64 * 2**20,
        "max_num_seqs": 64,
        "max_num_batched_tokens": 1024,
        "cpu_threads": args.threads,
        "dtype": args.dtype,
    }
    values.update(kw)
    return ModelConfig.from_dict(values)


def random_prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(5, vocab, (length,), generator=g).tolist() for _ in range(n)]


def drain(core: EngineCore) -> tuple[int, dict[str, list[int]]]:
    n = 0
    toks: dict[str, list[int]] = {}
    while core.has_unfinished():
        for o in core.step():
            n += len(o.token_ids)
            toks.setdefault(o.request_id, []).extend(o.token_ids)
    return n, toks


class Span:
    """Wall-clock and CPU seconds of a block. The 2 cores are shared with other
    work, so each figure is also given per CPU second of this process (torch
    runs one thread here): load from elsewhere stretches wall time, not CPU time."""

    def __enter__(self) -> Span:
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)


# -- 1. continuous batching ------------------------------------------------------


def bench_batching(args: argparse.Namespace) -> dict[str, Any]:
    core = EngineCore.from_config(config(args))
    vocab = core.loaded.weights.spec.vocab_size
    prompts = random_prompts(32, 32, vocab, 1)
    out_len = 128
    for i, p in enumerate(prompts[:2]):  # warm up
        core.add_request(f"w{i}", p, greedy(8))
    drain(core)
    singles = prompts[: args.single_requests]
    single_rates, batch_rates, cpu_ratios = [], [], []
    for rep in range(args.reps):  # interleaved, so load from other work hits both alike
        n_single = 0
        with Span() as one:
            for i, p in enumerate(singles):
                core.add_request(f"s{rep}-{i}", p, greedy(out_len))
                n_single += drain(core)[0]
        with Span() as many:
            for i, p in enumerate(prompts):
                core.add_request(f"b{rep}-{i}", p, greedy(out_len))
            n_batch = drain(core)[0]
        single_rates.append(n_single / one.wall)
        batch_rates.append(n_batch / many.wall)
        cpu_ratios.append((n_batch / many.cpu) / (n_single / one.cpu))
    single, batch = statistics.median(single_rates), statistics.median(batch_rates)
    # Where the time goes: a decode step alone at 1 and at 32 sequences, and
    # the 32 x 32-token prefill (the same compute in both modes).
    step = {b: decode_step_s(core, prompts[:b]) for b in (1, 32)}
    for i, p in enumerate(prompts):
        core.add_request(f"p{i}", p, greedy(1))
    t0 = time.perf_counter()
    drain(core)
    prefill_s = time.perf_counter() - t0
    return {
        "streams": 32,
        "prompt_tokens": 32,
        "output_tokens": out_len,
        "one_at_a_time_requests": len(singles),
        "one_at_a_time_tok_s": round(single, 1),
        "concurrent_tok_s": round(batch, 1),
        "ratio": round(batch / single, 2),
        "target": ">= 8",
        "ratio_per_rep": [round(b / a, 2) for a, b in zip(single_rates, batch_rates, strict=True)],
        "ratio_per_cpu_s": round(statistics.median(cpu_ratios), 2),
        "decode_step_ms_1_seq": round(1e3 * step[1], 3),
        "decode_step_ms_32_seqs": round(1e3 * step[32], 3),
        "decode_step_ratio": round(32 * step[1] / step[32], 2),
        "prefill_32x32_tokens_ms": round(1e3 * prefill_s, 1),
    }


def decode_step_s(core: EngineCore, prompts: list[list[int]], steps: int = 40) -> float:
    for i, p in enumerate(prompts):
        core.add_request(f"d{i}", p, greedy(steps + 30))
    for _ in range(20):  # prefill and settle
        core.step()
    t0 = time.perf_counter()
    for _ in range(steps):
        core.step()
    dt = (time.perf_counter() - t0) / steps
    for i in range(len(prompts)):
        core.abort(f"d{i}")
    return dt


# -- 2. against transformers generate() --------------------------------------------


def bench_hf(args: argparse.Namespace) -> dict[str, Any]:
    import transformers

    core = EngineCore.from_config(config(args))
    w = core.loaded.weights
    s = w.spec
    hf_cfg = transformers.LlamaConfig(
        vocab_size=s.vocab_size,
        hidden_size=s.hidden_size,
        intermediate_size=s.intermediate_size,
        num_hidden_layers=s.num_layers,
        num_attention_heads=s.num_heads,
        num_key_value_heads=s.num_kv_heads,
        head_dim=s.head_dim,
        max_position_embeddings=s.max_position_embeddings,
        rms_norm_eps=s.rms_norm_eps,
        tie_word_embeddings=s.tie_word_embeddings,
    )
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    hf.load_state_dict(w.to_hf_state_dict(), strict=True)
    batch, plen, out_len = 32, 32, 128
    prompts = random_prompts(batch, plen, s.vocab_size, 2)
    ids = torch.tensor(prompts)
    with torch.inference_mode():
        hf.generate(
            ids[:2], max_new_tokens=4, do_sample=False, attention_mask=torch.ones_like(ids[:2])
        )  # warm up
    for i, p in enumerate(prompts[:2]):
        core.add_request(f"w{i}", p, greedy(4))
    drain(core)
    hf_rates, ours_rates, cpu_ratios = [], [], []
    for rep in range(args.reps):  # interleaved
        with torch.inference_mode(), Span() as theirs:
            ref = hf.generate(
                ids,
                max_new_tokens=out_len,
                min_new_tokens=out_len,
                do_sample=False,
                attention_mask=torch.ones_like(ids),
            )
        with Span() as ours:
            for i, p in enumerate(prompts):
                core.add_request(f"{rep}-{i}", p, greedy(out_len))
            n, toks = drain(core)
        hf_rates.append(batch * out_len / theirs.wall)
        ours_rates.append(n / ours.wall)
        cpu_ratios.append(theirs.cpu / ours.cpu)
    same = sum(toks[f"{rep}-{i}"] == ref[i, plen:].tolist() for i in range(batch))
    hf_rate, ours_rate = statistics.median(hf_rates), statistics.median(ours_rates)
    return {
        "batch": batch,
        "prompt_tokens": plen,
        "output_tokens": out_len,
        "transformers": transformers.__version__,
        "hf_generate_tok_s": round(hf_rate, 1),
        "engine_tok_s": round(ours_rate, 1),
        "ratio": round(ours_rate / hf_rate, 2),
        "target": ">= 1.0",
        "ratio_per_rep": [round(b / a, 2) for a, b in zip(hf_rates, ours_rates, strict=True)],
        "ratio_per_cpu_s": round(statistics.median(cpu_ratios), 2),
        "identical_greedy_sequences": f"{same}/{batch}",
    }


# -- 3. prefix caching -----------------------------------------------------------


def ttft(core: EngineCore, rid: str, prompt: list[int]) -> Span:
    with Span() as span:
        core.add_request(rid, prompt, greedy(1))
        while core.has_unfinished():
            if core.step():
                break
    return span


def bench_prefix(args: argparse.Namespace) -> dict[str, Any]:
    core = EngineCore.from_config(config(args, max_model_len=2048))
    vocab = core.loaded.weights.spec.vocab_size
    prefix_len, suffix_len, reps = 1024, 32, 5
    prefixes = random_prompts(reps + 2, prefix_len, vocab, 3)
    suffixes = random_prompts(2 * reps, suffix_len, vocab, 4)
    ttft(core, "warm-up", prefixes[-1] + suffixes[0])
    cold = [ttft(core, f"c{i}", prefixes[i] + suffixes[i]) for i in range(reps)]
    shared = prefixes[-2]
    ttft(core, "seed", shared + suffixes[0])  # puts the shared prefix in the cache
    hits_before = core.stats().prefix_cache_hits
    warm = [ttft(core, f"h{i}", shared + suffixes[reps + i]) for i in range(reps)]
    hit_tokens = (core.stats().prefix_cache_hits - hits_before) // reps
    c, w = statistics.median(x.wall for x in cold), statistics.median(x.wall for x in warm)
    c_cpu, w_cpu = statistics.median(x.cpu for x in cold), statistics.median(x.cpu for x in warm)
    return {
        "prompt_tokens": prefix_len + suffix_len,
        "cached_prefix_tokens": hit_tokens,
        "cold_ttft_ms": round(1e3 * c, 2),
        "cached_ttft_ms": round(1e3 * w, 2),
        "ratio": round(w / c, 3),
        "ratio_cpu_s": round(w_cpu / c_cpu, 3),
        "target": "<= 0.2",
        "repetitions": reps,
    }


# -- 4. memory ---------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def bench_memory(args: argparse.Namespace) -> dict[str, Any]:
    total, concurrency, checkpoint = args.memory_requests, 64, 1000
    samples: list[tuple[int, int]] = []
    pool_ptrs: list[tuple[int, int]] = []

    async def main() -> None:
        async with open_in_process(config(args)) as client:
            assert isinstance(client, LLMClient)
            runner = client.core.runner
            pool_ptrs.append((runner.k_cache.data_ptr(), runner.v_cache.data_ptr()))
            vocab = client.info.vocab_size
            g = torch.Generator().manual_seed(5)
            done = 0
            params = SamplingParams(max_tokens=4, temperature=0.7, seed=1)

            async def one(prompt: list[int]) -> None:
                async for _ in client.generate(prompt, params):
                    pass

            while done < total:
                async with trio.open_nursery() as nursery:
                    for _ in range(concurrency):
                        prompt = torch.randint(5, vocab, (16 + done % 17,), generator=g).tolist()
                        nursery.start_soon(one, prompt)
                done += concurrency
                if done % checkpoint < concurrency:
                    samples.append((done, rss_bytes()))
            pool_ptrs.append((runner.k_cache.data_ptr(), runner.v_cache.data_ptr()))

    t0 = time.perf_counter()
    trio.run(main)
    wall = time.perf_counter() - t0
    steady = [r for n, r in samples if n >= 2000]  # the first 2,000 warm everything up
    base = steady[0]
    return {
        "requests": samples[-1][0],
        "concurrency": concurrency,
        "request": "16-32 random prompt tokens, 4 sampled output tokens",
        "rss_mb": [round(r / 2**20, 1) for _n, r in samples],
        "max_drift_after_warmup_pct": round(100 * max(abs(r - base) / base for r in steady), 2),
        "target": "+-5%",
        "kv_pool_same_tensors": pool_ptrs[0] == pool_ptrs[1],
        "wall_s": round(wall, 1),
    }


# -- 5. IPC overhead ---------------------------------------------------------------


async def client_figures(client: LLMClient, vocab: int) -> dict[str, float]:
    short = random_prompts(1, 16, vocab, 6)[0]
    ttfts = []
    for _ in range(3):  # warm up
        async for _ in client.generate(short, greedy(1)):
            pass
    for _ in range(40):
        t0 = time.perf_counter()
        async for _ in client.generate(short, greedy(1)):
            pass
        ttfts.append(time.perf_counter() - t0)
    # One stream: time per output token.
    t0 = time.perf_counter()
    n = 0
    async for o in client.generate(short, greedy(128)):
        n += len(o.token_ids)
    per_token = (time.perf_counter() - t0) / n
    # 32 streams.
    prompts = random_prompts(32, 32, vocab, 7)
    count = [0]

    async def one(p: list[int]) -> None:
        async for o in client.generate(p, greedy(128)):
            count[0] += len(o.token_ids)

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for p in prompts:
            nursery.start_soon(one, p)
    rate = count[0] / (time.perf_counter() - t0)
    return {
        "ttft_ms_p50": 1e3 * statistics.median(ttfts),
        "one_stream_ms_per_token": 1e3 * per_token,
        "streams32_tok_s": rate,
    }


def bench_ipc(args: argparse.Namespace) -> dict[str, Any]:
    cfg = config(args)
    res: dict[str, dict[str, float]] = {}

    async def main() -> None:
        torch.set_num_threads(args.threads)
        async with open_in_process(cfg) as local, open_process_engine(cfg) as remote:
            runs: dict[str, list[dict[str, float]]] = {"in_process": [], "process": []}
            for _ in range(args.reps):  # alternate, so load from other work hits both alike
                runs["in_process"].append(await client_figures(local, local.info.vocab_size))
                runs["process"].append(await client_figures(remote, remote.info.vocab_size))
        for name, figs in runs.items():
            res[name] = {k: statistics.median(f[k] for f in figs) for k in figs[0]}

    trio.run(main)
    ip, pr = res["in_process"], res["process"]
    return {
        "in_process": {k: round(v, 3) for k, v in ip.items()},
        "process": {k: round(v, 3) for k, v in pr.items()},
        "ttft_overhead_ms": round(pr["ttft_ms_p50"] - ip["ttft_ms_p50"], 3),
        "per_token_overhead_ms": round(
            pr["one_stream_ms_per_token"] - ip["one_stream_ms_per_token"], 3
        ),
        "streams32_ratio": round(pr["streams32_tok_s"] / ip["streams32_tok_s"], 3),
    }


BENCHES = {
    "batching": bench_batching,
    "hf": bench_hf,
    "prefix": bench_prefix,
    "memory": bench_memory,
    "ipc": bench_ipc,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("which", nargs="?", default="all", choices=[*BENCHES, "all"])
    ap.add_argument("--size", default="small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: the cores are shared; see docs/benchmarks.md)",
    )
    ap.add_argument(
        "--single-requests",
        type=int,
        default=8,
        help="requests run one at a time for the batching baseline",
    )
    ap.add_argument("--memory-requests", type=int, default=10_000)
    ap.add_argument(
        "--reps",
        type=int,
        default=3,
        help="interleaved repetitions of each compared pair (medians reported)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, torch {torch.__version__}",
        "size": args.size,
        "threads": args.threads,
        "dtype": args.dtype,
    }
    for name in BENCHES if args.which == "all" else [args.which]:
        say(f"{name} ...")
        results[name] = BENCHES[name](args)
        if not args.json:
            print(name, json.dumps(results[name], indent=1), flush=True)
    if args.json:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
