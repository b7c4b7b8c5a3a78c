"""What fronting a remote engine costs the daemon: CPU per proxied request and per
streamed chunk (h11, as inference/remote/http.py, against httpx's streaming), and
CPU per /metrics scrape (prometheus_client on the whole page, against the
per-family parse of inference/remote/metrics.py).

The engine is the fake (tests/fakes/fake_engine.py) in its own process, so only
the client's CPU is counted (time.process_time of this process).

    flock /work/bench.lock .venv/bin/python bench/remote_engine_bench.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from inference.config import parse_engine_url
from inference.remote.http import EngineHTTP
from inference.remote.metrics import VLLM, parse_metrics
from inference.remote.rewrite import ModelNameRewriter, rewrite_request

ROOT = Path(__file__).resolve().parents[1]
METRICS_PAGE = ROOT / "tests/inference/remote/data/vllm-0.32.0-metrics.txt"


def start_fake() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.fake_engine", "--port", "0", "--served-name", "s"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline().split()[1])


async def h11_run(port: int, n: int, tokens: int, stream: bool) -> tuple[float, int]:
    client = EngineHTTP(parse_engine_url(f"vllm+http://127.0.0.1:{port}"))
    chunks = 0
    body = {"model": "m", "prompt": "hello", "max_tokens": tokens, "stream": stream}
    t0 = time.process_time()
    for _ in range(n):
        rewriter = ModelNameRewriter("s", "m")
        resp = await client.request(
            "POST", "/v1/completions", rewrite_request(body, "s"),
            [("content-type", "application/json")], 30.0, rewriter.feed, rewriter.flush,
        )
        async for _chunk in resp.aiter_bytes():
            chunks += 1
    cpu = time.process_time() - t0
    client.close()
    return cpu, chunks


async def httpx_run(port: int, n: int, tokens: int, stream: bool) -> tuple[float, int]:
    chunks = 0
    body = {"model": "m", "prompt": "hello", "max_tokens": tokens, "stream": stream}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        t0 = time.process_time()
        for _ in range(n):
            rewriter = ModelNameRewriter("s", "m")
            async with client.stream("POST", "/v1/completions",
                                     content=rewrite_request(body, "s"),
                                     headers={"content-type": "application/json"}) as resp:
                async for chunk in resp.aiter_raw():
                    if rewriter.feed(chunk):
                        chunks += 1
        cpu = time.process_time() - t0
    return cpu, chunks


def bench_metrics(repeats: int) -> tuple[float, float]:
    text = METRICS_PAGE.read_text()
    t0 = time.process_time()
    for _ in range(repeats):
        for _family in text_string_to_metric_families(text):
            pass
    full = (time.process_time() - t0) / repeats
    t0 = time.process_time()
    for _ in range(repeats):
        parse_metrics(text, VLLM, "tiny-real")
    filtered = (time.process_time() - t0) / repeats
    return full, filtered


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--streams", type=int, default=40)
    parser.add_argument("--tokens", type=int, default=200)
    args = parser.parse_args()
    proc, port = start_fake()
    try:
        rows = []
        for name, fn in (("h11 (inference/remote/http.py)", h11_run), ("httpx", httpx_run)):
            trio.run(fn, port, 20, 4, False)  # warm up both paths
            cpu_req, _ = trio.run(fn, port, args.requests, 4, False)
            cpu_stream, chunks = trio.run(fn, port, args.streams, args.tokens, True)
            rows.append((name, cpu_req / args.requests * 1e3, cpu_stream / chunks * 1e6, chunks))
        print(f"client CPU, fake engine in another process; {args.requests} non-streamed "
              f"requests, {args.streams} streams of {args.tokens} tokens")
        print(f"{'client':32} {'ms CPU/request':>15} {'us CPU/chunk':>13} {'chunks':>7}")
        for name, per_req, per_chunk, chunks in rows:
            print(f"{name:32} {per_req:15.3f} {per_chunk:13.1f} {chunks:7d}")
        print(f"httpx / h11: {rows[1][1] / rows[0][1]:.2f}x per request, "
              f"{rows[1][2] / rows[0][2]:.2f}x per chunk")
    finally:
        proc.terminate()
        proc.wait(10)
    full, filtered = bench_metrics(50)
    size = METRICS_PAGE.stat().st_size
    print(f"\n/metrics page of vLLM 0.32.0 ({size} B): whole page {full * 1e3:.2f} ms CPU, "
          f"parse_metrics {filtered * 1e3:.3f} ms ({full / filtered:.0f}x less); at one scrape "
          f"per 0.2 s: {full / 0.2 * 100:.1f}% vs {filtered / 0.2 * 100:.2f}% of a core")


if __name__ == "__main__":
    main()
