"""The LLM path through real daemons: what the forward hop costs a stream.

    .venv/bin/python bench/llm_daemons.py --json out.json

Two daemons on loopback: `a` holds `chat=builtin:llm` (its engine in its own
process), `b` holds nothing and forwards. Interleaved, so both sides see the
same machine:
- time to first token: sequential streamed chat completions (8 tokens),
  direct to `a` and through `b`; p50 of each and the difference;
- throughput: `--streams` concurrent streams of `--tokens` tokens each,
  direct and forwarded, in alternating rounds; generated tokens per second.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import say  # noqa: E402
from node.localcluster import LocalCluster  # noqa: E402

MODEL = "chat"


def stream(url: str, max_tokens: int, seed: int) -> tuple[float, int, float]:
    """(time to first content, completion tokens, total time) of one stream."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Tell me a story, number {seed}."}],
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "seed": seed,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    first = None
    tokens = 0
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for c in chunk.get("choices", []):
                if first is None and (c.get("delta") or {}).get("content"):
                    first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return (first if first is not None else total), tokens, total


def throughput(url: str, streams: int, max_tokens: int, seed: int) -> float:
    out: list[int] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        _, n, _ = stream(url, max_tokens, seed + i)
        with lock:
            out.append(n)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(out) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="small")
    ap.add_argument("--ttft-requests", type=int, default=40)
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)
    result: dict[str, Any] = {"size": args.size}
    with tempfile.TemporaryDirectory(prefix="llm-daemons-") as tmp, LocalCluster(Path(tmp)) as c:
        c.start("a", models=[f"{MODEL}=builtin:llm,size={args.size},cpu_threads=1"])
        c.start("b", join=["a"])
        c.wait_for(
            lambda: any(
                m["name"] == "a" and m["models"].get(MODEL, {}).get("state") == "ready"
                for m in c.view("b")["members"]
            ),
            120,
            "the model ready, as b sees it",
        )
        direct, forwarded = f"http://{c.http('a')}", f"http://{c.http('b')}"
        for url in (direct, forwarded):  # warm up both paths
            stream(url, 8, 0)
        say("time to first token, interleaved")
        ttft: dict[str, list[float]] = {"direct": [], "forwarded": []}
        for i in range(args.ttft_requests):
            for label, url in (("direct", direct), ("forwarded", forwarded)):
                ttft[label].append(stream(url, 8, i)[0])
        say("throughput, alternating rounds")
        tps: dict[str, list[float]] = {"direct": [], "forwarded": []}
        for r in range(args.rounds):
            for label, url in (("direct", direct), ("forwarded", forwarded)):
                tps[label].append(throughput(url, args.streams, args.tokens, 1000 * r))
        p50 = {k: statistics.median(v) * 1000 for k, v in ttft.items()}
        med = {k: statistics.median(v) for k, v in tps.items()}
        result.update(
            {
                "ttft_p50_ms": {k: round(v, 2) for k, v in p50.items()},
                "ttft_added_ms": round(p50["forwarded"] - p50["direct"], 2),
                "tokens_per_s": {k: round(v, 1) for k, v in med.items()},
                "tokens_per_s_rounds": {k: [round(x, 1) for x in v] for k, v in tps.items()},
                "forwarded_over_direct": round(med["forwarded"] / med["direct"], 3),
                "streams": args.streams,
                "tokens_per_stream": args.tokens,
            }
        )
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
