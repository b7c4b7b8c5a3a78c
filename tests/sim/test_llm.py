"""`rumor sim llm`: the serving model, the issue's targets at CI size, and the
JSON contract."""

from __future__ import annotations

import json
import random

import pytest

from node.cluster.prefix import SummaryPublisher
from sim.llm import simulate_llm
from sim.llm_node import NodeModel, ServingNode
from sim.llm_workload import (
    AgentWorkload,
    Request,
    Segments,
    block_hash,
    block_of,
    mix,
    unmix,
)

CONTRACT = {
    "policy", "workload", "nodes", "routers", "load", "staleness_s", "ttft_mean_s",
    "ttft_p99_s", "e2e_mean_s", "throughput_tok_s", "hit_rate", "rejected",
}  # fmt: skip


def test_block_hashes_are_invertible_and_look_uniform() -> None:
    rng = random.Random(1)
    for _ in range(200):
        x = rng.getrandbits(64)
        assert unmix(mix(x)) == x
    assert block_of(block_hash(12345, 678)) == (12345, 678)
    low = [block_hash(7, i) & 3 for i in range(4000)]
    assert 0.2 < low.count(0) / len(low) < 0.3  # one hash in four kept at level 2


def _node(kv_blocks: int = 1000) -> ServingNode:
    m = NodeModel(kv_blocks=kv_blocks)
    return ServingNode(0, m, Segments(0), SummaryPublisher("agent", kv_blocks=kv_blocks))


def _run(node: ServingNode, reqs: list[Request]) -> None:
    """Serve `reqs` (all arrived at 0) to completion on one node."""
    now = 0.0
    node.waiting.extend(reqs)
    end = node.plan(now)
    while end is not None:
        now = end
        node.finish_step(now)
        end = node.plan(now)


def test_a_node_prefills_uncached_tokens_and_keeps_them_for_the_next_step() -> None:
    node = _node()
    s = AgentWorkload().new_session(1, random.Random(1), [3_000])
    first = Request(1, s, 0.0, 4_000, 50, s.system, 3_000 // 16, 1)
    _run(node, [first])
    m = node.m
    # 4,000 uncached tokens in chunks of 2,048 (two steps), then 49 decode steps.
    assert first.cached_tokens == 0
    assert first.first_token_at == pytest.approx(2 * m.step_base_s + 4_000 * m.prefill_s_per_token)
    second = Request(2, s, first.done_at, 5_100, 50, s.system, 3_000 // 16, 1)
    _run(node, [second])
    assert second.cached_tokens == (4_000 + 50) // 16 * 16  # the prompt and the reply
    assert node.private == 0 and not node.pins
    assert node.summary.snapshot().blocks >= 0


def test_eviction_is_lru_tail_first_and_the_summary_follows() -> None:
    node = _node(kv_blocks=600)
    rng = random.Random(2)
    sessions = [AgentWorkload().new_session(i, rng, [1_600]) for i in range(1, 5)]
    for i, s in enumerate(sessions):
        _run(node, [Request(i, s, 0.0, 4_000, 20, s.system, 100, s.sid)])
        assert node.cached <= 600
    # The system prompt, used by every request, survived; the oldest session lost
    # its tail (251 blocks: the prompt and reply), the newest nothing.
    assert node.extent[sessions[0].system] == 100
    assert node.extent[sessions[0].sid] < 251 == node.extent[sessions[-1].sid]
    assert node.summary.snapshot().fps == frozenset(node.summary._fp_refs)
    kept = node.summary.size
    assert 0 < kept <= node.cached


def test_results_are_deterministic_and_keep_the_contract() -> None:
    kw = dict(nodes=4, sessions=15, staleness_s=0.5, seed=3)
    a = simulate_llm("rumor_prefix", "agent", **kw)  # type: ignore[arg-type]
    b = simulate_llm("rumor_prefix", "agent", **kw)  # type: ignore[arg-type]
    assert a == b
    assert set(a.to_json()) == CONTRACT
    with pytest.raises(ValueError, match="unknown policy"):
        simulate_llm("fastest")


def test_targets_at_ci_size() -> None:
    """The issue's agent targets on 8 nodes (the full grid is in docs/benchmarks.md):
    every node a router, views 1 s stale, load 0.8."""
    kw = dict(nodes=8, load=0.8, staleness_s=1.0, sessions=80, seed=1)
    ours = simulate_llm("rumor_prefix", "agent", **kw)  # type: ignore[arg-type]
    p2c = simulate_llm("p2c", "agent", **kw)  # type: ignore[arg-type]
    central = simulate_llm("central_cache_aware", "agent", **kw)  # type: ignore[arg-type]
    assert ours.rejected == 0
    assert ours.ttft_mean_s <= 0.5 * p2c.ttft_mean_s
    assert ours.ttft_mean_s <= 1.2 * central.ttft_mean_s
    assert ours.hit_rate >= 0.9 * central.hit_rate
    assert central.routers == 1 and ours.routers == 8


def test_without_reuse_it_is_no_worse_than_p2c() -> None:
    kw = dict(nodes=8, load=0.7, staleness_s=1.0, requests=1_500, seed=2)
    ours = simulate_llm("rumor_prefix", "chat", **kw)  # type: ignore[arg-type]
    p2c = simulate_llm("p2c", "chat", **kw)  # type: ignore[arg-type]
    assert ours.hit_rate == 0.0
    assert ours.ttft_mean_s <= 1.05 * p2c.ttft_mean_s


def test_cli_json_contract(capsys: pytest.CaptureFixture[str]) -> None:
    from node.cli import main

    argv = ["sim", "llm", "--policies", "p2c,rumor_prefix,central_cache_aware",
            "--workload", "agent", "--nodes", "4", "--staleness", "0,2", "--sessions", "12",
            "--json"]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert [r["policy"] for r in rows] == ["p2c", "p2c", "rumor_prefix", "rumor_prefix",
                                           "central_cache_aware"]  # fmt: skip
    assert all(set(r) == CONTRACT for r in rows)
    assert main(["sim", "llm", "--policies", "nope"]) == 2
    assert main(["sim", "llm", "--staleness", "-1"]) == 2
