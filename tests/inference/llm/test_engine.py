"""The engine core: paged output against the no-cache reference, batching, sampling,
stop strings, abort, invalid input, preemption."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from inference.errors import InvalidInput
from inference.llm.core import EngineCore
from inference.llm.model import reference_forward
from inference.llm.params import EngineStats, RequestOutput, SamplingParams

from .conftest import llm_config

GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)


def core(**overrides: Any) -> EngineCore:
    return EngineCore.from_config(llm_config(**overrides))


def run(engine: EngineCore) -> dict[str, list[RequestOutput]]:
    outs: dict[str, list[RequestOutput]] = {}
    while engine.has_unfinished():
        for o in engine.step():
            outs.setdefault(o.request_id, []).append(o)
    return outs


def tokens(outs: list[RequestOutput]) -> list[int]:
    return [t for o in outs for t in o.token_ids]


def prompts(engine: EngineCore, n: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(7)
    vocab = engine.loaded.weights.spec.vocab_size
    return [
        torch.randint(2, vocab, (int(8 + 37 * i % 90),), generator=g).tolist() for i in range(n)
    ]


def reference_greedy(engine: EngineCore, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(reference_forward(engine.loaded.weights, ids)[-1].argmax()))
    return ids[len(prompt) :]


def test_paged_greedy_equals_the_no_cache_reference() -> None:
    # Budget 32 splits the longer prompts into chunks (chunked prefill + decode mixed).
    engine = core(max_num_batched_tokens=32)
    ps = prompts(engine, 4)
    for i, p in enumerate(ps):
        engine.add_request(str(i), p, GREEDY)
    outs = run(engine)
    for i, p in enumerate(ps):
        assert tokens(outs[str(i)]) == reference_greedy(engine, p, GREEDY.max_tokens)


def test_paged_logits_match_the_reference() -> None:
    engine = core(max_num_batched_tokens=16)
    prompt = prompts(engine, 3)[2]
    engine.add_request("a", prompt, SamplingParams(max_tokens=1, temperature=0))
    seq = engine._requests["a"].seq
    while True:  # step the runner by hand to see the logits
        chunks = engine.scheduler.schedule()
        logits = engine.runner.execute(chunks)
        engine.scheduler.step_done(chunks)
        if chunks[0].samples:
            break
    ref = reference_forward(engine.loaded.weights, seq.token_ids)[-1]
    assert torch.allclose(logits[0], ref, atol=1e-5)


def test_batched_equals_one_at_a_time() -> None:
    engine = core()
    ps = prompts(engine, 6)
    alone = []
    for i, p in enumerate(ps):
        engine.add_request(f"s{i}", p, GREEDY)
        alone.append(tokens(run(engine)[f"s{i}"]))
    for i, p in enumerate(ps):
        engine.add_request(f"b{i}", p, GREEDY)
    outs = run(engine)
    assert [tokens(outs[f"b{i}"]) for i in range(6)] == alone


def test_prefix_cache_hit_gives_the_same_tokens_and_counts_cached_usage() -> None:
    engine = core()
    p = prompts(engine, 3)[2]  # > 32 tokens: at least two full blocks
    engine.add_request("cold", p, GREEDY)
    cold = run(engine)["cold"]
    engine.add_request("warm", p, GREEDY)
    warm = run(engine)["warm"]
    assert tokens(warm) == tokens(cold)
    cached = warm[-1].usage.cached_tokens if warm[-1].usage else -1
    assert cached == (len(p) - 1) // 16 * 16 and cached > 0
    assert cold[-1].usage is not None and cold[-1].usage.cached_tokens == 0
    stats = engine.stats()
    assert stats.prefix_cache_hits == cached and stats.prefix_cache_queries == 2 * len(p)
    assert len(engine.cached_block_hashes()) >= cached // 16


def test_preemption_under_a_small_pool_changes_nothing() -> None:
    big = core()
    small = core(
        kv_cache_bytes=24 * 16 * big.loaded.weights.spec.kv_bytes_per_token(torch.float32)
    )  # 24 blocks, for 6 requests that want ~36
    ps = prompts(big, 6)
    for engine in (big, small):
        for i, p in enumerate(ps):
            engine.add_request(
                str(i), p, SamplingParams(max_tokens=30, temperature=0, ignore_eos=True)
            )
    want, got = run(big), run(small)
    assert small.stats().preemptions > 0
    assert {k: tokens(v) for k, v in got.items()} == {k: tokens(v) for k, v in want.items()}
    assert small.pool.num_used == 0


def test_seeded_sampling_repeats_and_seeds_differ() -> None:
    engine = core()
    p = prompts(engine, 1)[0]

    def draw(seed: int, top_p: float = 1.0) -> list[int]:
        engine.add_request(
            "x",
            p,
            SamplingParams(max_tokens=20, temperature=1.0, top_p=top_p, seed=seed, ignore_eos=True),
        )
        return tokens(run(engine)["x"])

    assert draw(1) == draw(1)
    assert draw(1) != draw(2)
    assert draw(3, top_p=0.5) == draw(3, top_p=0.5)
    # A tiny nucleus keeps only the most likely token: greedy.
    assert draw(4, top_p=1e-6) == reference_greedy(engine, p, 20)


def test_stop_string_ends_the_text_before_it() -> None:
    engine = core()
    p = prompts(engine, 1)[0]
    engine.add_request("full", p, SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))
    full = "".join(o.text for o in run(engine)["full"])
    stop = full[10:13]
    assert len(full) > 13 and stop
    engine.add_request("cut", p, SamplingParams(max_tokens=40, temperature=0, stop=[stop]))
    outs = run(engine)["cut"]
    assert "".join(o.text for o in outs) == full[: full.index(stop)]
    assert outs[-1].finish_reason == "stop" and outs[-1].finished


def test_eos_finishes_with_stop_and_max_tokens_with_length() -> None:
    engine = core()
    p = prompts(engine, 1)[0]
    first = reference_greedy(engine, p, 3)
    engine._eos = frozenset({first[2]})  # pretend the third greedy token is EOS
    engine.add_request("e", p, SamplingParams(max_tokens=10, temperature=0))
    outs = run(engine)["e"]
    assert tokens(outs) == first and outs[-1].finish_reason == "stop"
    assert outs[-1].text == ""  # EOS adds no text
    engine.add_request("l", p, SamplingParams(max_tokens=2, temperature=0))
    outs = run(engine)["l"]
    assert outs[-1].finish_reason == "length" and outs[-1].usage is not None
    assert outs[-1].usage.completion_tokens == 2 and outs[-1].usage.prompt_tokens == len(p)


def test_abort_frees_its_blocks_at_once() -> None:
    engine = core()
    ps = prompts(engine, 2)
    engine.add_request("a", ps[0], SamplingParams(max_tokens=100, temperature=0))
    engine.add_request("b", ps[1], SamplingParams(max_tokens=100, temperature=0))
    for _ in range(3):
        engine.step()
    held = len(engine._requests["a"].seq.block_ids)
    used = engine.pool.num_used
    out = engine.abort("a")
    assert out is not None and out.finish_reason == "abort" and out.finished
    assert engine.pool.num_used == used - held and held > 0
    assert engine.abort("a") is None
    assert all(o.request_id == "b" for o in engine.step())
    engine.abort("b")
    assert engine.pool.num_used == 0 and not engine.has_unfinished()


@pytest.mark.parametrize(
    "ids,params,match",
    [
        ([], GREEDY, "empty"),
        ([1] * 512, GREEDY, "context"),
        ([1] * 10, SamplingParams(max_tokens=503), "exceeds"),
        ([1, -1], GREEDY, "token ids"),
        ([1, 10**9], GREEDY, "token ids"),
    ],
)
def test_invalid_requests_raise_and_change_nothing(
    ids: list[int], params: SamplingParams, match: str
) -> None:
    engine = core()
    engine.add_request("ok", [5, 6, 7], GREEDY)
    with pytest.raises(InvalidInput, match=match):
        engine.add_request("bad", ids, params)
    assert list(engine._requests) == ["ok"]
    assert len(tokens(run(engine)["ok"])) == GREEDY.max_tokens


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_tokens": 0},
        {"temperature": -1},
        {"temperature": float("nan")},
        {"top_p": 0},
        {"top_p": 1.5},
        {"seed": -3},
        {"stop": ["x"] * 17},
        {"stop": [""]},
    ],
)
def test_bad_sampling_values_are_invalid_input(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        SamplingParams(**kwargs)


def test_a_request_that_can_never_fit_is_rejected() -> None:
    engine = core(kv_cache_bytes=4 * 16 * 512)  # 4 blocks of the tiny model: 64 tokens
    with pytest.raises(InvalidInput, match="never fit"):
        engine.add_request("x", [1] * 60, SamplingParams(max_tokens=10))
    with pytest.raises(InvalidInput, match="already in use"):
        engine.add_request("y", [1], GREEDY)
        engine.add_request("y", [1], GREEDY)


def test_stats_report_load() -> None:
    engine = core(max_num_seqs=2)
    for i, p in enumerate(prompts(engine, 3)):
        engine.add_request(str(i), p, GREEDY)
    engine.step()
    s = engine.stats()
    assert isinstance(s, EngineStats)
    assert (s.running, s.waiting) == (2, 1) and s.kv_blocks_used > 0
    assert s.kv_blocks_total == engine.pool.num_blocks
    assert EngineStats.from_wire(s.to_wire()) == s
    info = engine.describe()
    assert info.block_size == 16 and info.hash_name.startswith("blake2b")


def test_config_sizes_are_the_model_sizes() -> None:
    from inference.config import LLM_SIZES
    from inference.llm.model import BUILTIN_SIZES

    assert tuple(BUILTIN_SIZES) == LLM_SIZES
