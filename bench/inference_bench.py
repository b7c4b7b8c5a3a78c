"""Inference benchmark: dynamic batching, serving overhead, latency.

1. Throughput of single-row requests with dynamic batching (max_batch_size 64)
   against batch size 1, at concurrency 1, 16 and 64, with p50/p99 latency.
2. Serving overhead at one batch size (64): rows/s through `Engine.predict`
   and through the whole service (batcher, worker thread, trio), each against a
   bare `model(x)` loop on the same device. On CUDA, also with CUDA graphs off.

    python bench/inference_bench.py [--model mlp] [--device auto] [--duration 3] [--json]
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
from inference.engine import TorchEngine
from inference.models import build_builtin, example_input
from inference.service import InferenceService, ModelState


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def drive(
    spec: str, model: str, concurrency: int, duration: float, rows: int = 1
) -> dict[str, Any]:
    """Closed-loop clients, each sending `rows`-row requests back to back."""
    svc = InferenceService()
    latencies: list[float] = []
    x = example_input(model, rows)
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        name = spec.split("=")[0]
        svc.load(ModelConfig.from_spec(spec))
        status = await svc.wait_ready(name)
        assert status.state == ModelState.READY, status.reason
        # Warm the path (threads, allocator) before timing.
        for _ in range(20):
            await svc.infer(name, {"input": x})
        stop_at = trio.current_time() + duration

        async def client() -> None:
            while trio.current_time() < stop_at:
                t0 = time.perf_counter()
                await svc.infer(name, {"input": x})
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        async with trio.open_nursery() as clients:
            for _ in range(concurrency):
                clients.start_soon(client)
        elapsed = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
    return {
        "requests_per_s": len(latencies) / elapsed,
        "rows_per_s": len(latencies) * rows / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "mean_ms": statistics.fmean(latencies) * 1e3,
    }


def bare_loop(model: str, device: str, batch: int, duration: float) -> float:
    """rows/s of `model(x)` on a resident input: the ceiling for any server."""
    m = build_builtin(model).to(device)
    x = example_input(model, batch).to(device)
    with torch.inference_mode():
        for _ in range(5):
            m(x)
        _sync(device)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < duration:
            out = m(x)
            out.cpu()  # results must reach the host, as they do when served
            n += 1
        elapsed = time.perf_counter() - t0
    return n * batch / elapsed


def engine_loop(spec: str, model: str, batch: int, duration: float) -> float:
    engine = TorchEngine()
    engine.load(ModelConfig.from_spec(spec))
    name = spec.split("=")[0]
    req = [{"input": example_input(model, batch)}]
    for _ in range(5):
        engine.predict(name, req)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < duration:
        engine.predict(name, req)
        n += 1
    return n * batch / (time.perf_counter() - t0)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="mlp", choices=["mlp", "transformer"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    device = ModelConfig(name="x", source="builtin:mlp", device=args.device).resolved_device()
    base = f"m=builtin:{args.model},device={device}"
    conc = [int(c) for c in args.concurrency.split(",")]
    batch = 64

    results: dict[str, Any] = {
        "meta": {
            "model": args.model,
            "device": device,
            "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d"),
        },
        "batching": [],
    }
    for c in conc:
        dyn = trio.run(drive, f"{base},max_batch_size=64", args.model, c, args.duration)
        one = trio.run(drive, f"{base},max_batch_size=1", args.model, c, args.duration)
        results["batching"].append(
            {
                "concurrency": c,
                "dynamic": dyn,
                "batch1": one,
                "speedup": dyn["requests_per_s"] / one["requests_per_s"],
            }
        )
        if not args.json:
            speedup = dyn["requests_per_s"] / one["requests_per_s"]
            print(
                f"concurrency {c:3d}: dynamic {dyn['requests_per_s']:9.0f} req/s "
                f"(p50 {dyn['p50_ms']:.2f} ms, p99 {dyn['p99_ms']:.2f} ms) | batch-1 "
                f"{one['requests_per_s']:9.0f} req/s (p50 {one['p50_ms']:.2f} ms, "
                f"p99 {one['p99_ms']:.2f} ms) | {speedup:.1f}x",
                flush=True,
            )

    bare = bare_loop(args.model, device, batch, args.duration)
    eng = engine_loop(f"{base},max_batch_size={batch}", args.model, batch, args.duration)
    served = trio.run(drive, f"{base},max_batch_size={batch}", args.model, 4 * batch, args.duration)
    # The same batch arriving as 2 concurrent requests of 64 rows: per-batch cost only.
    served_rows = trio.run(
        drive, f"{base},max_batch_size={batch}", args.model, 2, args.duration, batch
    )
    overhead = {
        "batch": batch,
        "bare_rows_per_s": bare,
        "engine_rows_per_s": eng,
        "engine_vs_bare": eng / bare,
        "service_rows_per_s": served["requests_per_s"],
        "service_vs_bare": served["requests_per_s"] / bare,
        "service_64row_requests_rows_per_s": served_rows["rows_per_s"],
        "service_64row_requests_vs_bare": served_rows["rows_per_s"] / bare,
    }
    if device.startswith("cuda"):
        eager = engine_loop(
            f"{base},max_batch_size={batch},cuda_graphs=false", args.model, batch, args.duration
        )
        overhead["engine_no_graphs_rows_per_s"] = eager
        overhead["graphs_speedup"] = eng / eager
    results["overhead"] = overhead
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print(json.dumps(overhead, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
