"""The scheduler as pure policy: no model, only token counts and blocks."""

from __future__ import annotations

from inference.llm.block_pool import BlockPool
from inference.llm.scheduler import ScheduledChunk, Scheduler, Sequence

BS = 4


def make(num_blocks: int = 64, max_seqs: int = 8, budget: int = 16) -> Scheduler:
    return Scheduler(BlockPool(num_blocks), BS, max_seqs, budget)


def seq(rid: str, n: int, first: int = 0) -> Sequence:
    ids = list(range(first, first + n))
    return Sequence(rid, ids, n)


def run_step(s: Scheduler, chunks: list[ScheduledChunk], token: int = 999) -> None:
    """What the engine does after the model ran: advance, append sampled tokens."""
    s.step_done(chunks)
    for c in chunks:
        if c.samples:
            s.append_token(c.seq, token)


def plan(chunks: list[ScheduledChunk]) -> list[tuple[str, int, int]]:
    return [(c.seq.request_id, c.start, c.num_tokens) for c in chunks]


def test_chunked_prefill_respects_the_token_budget() -> None:
    s = make(budget=16)
    s.add(seq("long", 40))
    chunks = s.schedule()
    assert plan(chunks) == [("long", 0, 16)] and not chunks[0].samples
    run_step(s, chunks)
    chunks = s.schedule()
    assert plan(chunks) == [("long", 16, 16)]
    run_step(s, chunks)
    chunks = s.schedule()
    assert plan(chunks) == [("long", 32, 8)] and chunks[0].samples
    run_step(s, chunks)
    assert plan(s.schedule()) == [("long", 40, 1)]  # now decoding


def test_decodes_go_first_and_new_sequences_join_between_steps() -> None:
    s = make(budget=16)
    s.add(seq("a", 5))
    run_step(s, s.schedule())
    s.add(seq("b", 30, first=100))  # arrives while a decodes
    chunks = s.schedule()
    assert plan(chunks) == [("a", 5, 1), ("b", 0, 15)]  # a's decode is never starved
    assert sum(c.num_tokens for c in chunks) <= 16
    run_step(s, chunks)
    assert [q.request_id for q in s.running] == ["a", "b"]


def test_max_num_seqs_caps_the_running_batch() -> None:
    s = make(max_seqs=2, budget=64)
    for i in range(3):
        s.add(seq(f"r{i}", 3, first=100 * i))
    chunks = s.schedule()
    assert [c.seq.request_id for c in chunks] == ["r0", "r1"] and len(s.waiting) == 1
    run_step(s, chunks)
    s.finish(s.running[0])
    assert [c.seq.request_id for c in s.schedule()] == ["r1", "r2"]


def test_preemption_frees_the_newest_and_recomputes_it_later() -> None:
    s = make(num_blocks=4, budget=64)  # 16 token slots
    s.add(seq("old", 8))
    s.add(seq("new", 7, first=50))
    run_step(s, s.schedule())  # old: 2 blocks, new: 2 blocks -> pool full
    assert s.pool.num_free == 0
    chunks = s.schedule()  # old's 9th token needs a 3rd block: new must go
    assert [c.seq.request_id for c in chunks] == ["old"]
    assert s.counters.preemptions == 1
    new = s.waiting[0]
    assert new.request_id == "new" and new.block_ids == [] and new.num_computed == 0
    assert len(new.token_ids) == 8  # its generated token is kept and recomputed
    run_step(s, chunks)
    s.finish(s.running[0])
    chunks = s.schedule()
    # Recomputed from its first block, which the prefix cache kept after the preemption.
    assert plan(chunks) == [("new", 4, 4)]


def test_a_lone_sequence_preempts_itself_rather_than_crash() -> None:
    s = make(num_blocks=2, budget=64)
    s.add(seq("a", 8))
    run_step(s, s.schedule())
    assert s.schedule() == [] and s.counters.preemptions == 1  # no block for token 9
    assert s.running == [] and s.waiting[0].request_id == "a"


def test_prefix_cache_hit_on_admission() -> None:
    s = make(budget=64)
    s.add(seq("a", 10))
    chunks = s.schedule()
    run_step(s, chunks)
    a = s.running[0]
    assert s.pool.num_used == 3
    s.finish(a)  # blocks 0-1 (full) stay cached; the partial one is plain free
    s.add(seq("b", 13))  # same first 8 tokens
    chunks = s.schedule()
    assert plan(chunks) == [("b", 8, 5)]
    assert s.counters.prefix_cache_hits == 8 and s.counters.prefix_cache_queries == 23
    assert chunks[0].seq.num_cached_prompt_tokens == 8


def test_a_fully_cached_prompt_still_computes_its_last_token() -> None:
    s = make(budget=64)
    s.add(seq("a", 8))
    run_step(s, s.schedule())
    s.finish(s.running[0])
    s.add(seq("b", 8))
    assert plan(s.schedule()) == [("b", 4, 4)]  # one block from the cache, not two


def test_finish_returns_every_block() -> None:
    s = make(num_blocks=8, budget=64)
    s.add(seq("a", 20))
    run_step(s, s.schedule())
    assert s.pool.num_free == 8 - 5
    s.finish(s.running[0])
    assert s.pool.num_free == 8 and not s.has_unfinished()
