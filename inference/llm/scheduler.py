"""Iteration-level scheduling: which sequences run in the next step, and how many tokens each.

Pure policy, no torch: a sequence is a list of token ids plus how many of them
already have KV in the pool; a step computes a chunk of the rest of each chosen
sequence. The rules (vLLM V1's, simplified; Orca, OSDI '22, for the iteration
level):

1. Every step has a budget of `max_num_batched_tokens` tokens and at most
   `max_num_seqs` running sequences.
2. Running sequences go first, oldest first: a decoding one needs 1 token, one
   still in prefill takes as much of its prompt as the budget leaves (chunked
   prefill), so a long prompt never stalls the decodes beside it.
3. A sequence that needs a new block and finds the pool empty preempts the
   newest running sequence (recompute: its blocks are freed, it goes back to
   the head of the queue and is recomputed later, mostly from the prefix cache).
4. Then, if nothing was preempted this step, waiting sequences join in arrival
   order while budget, slots and blocks last: new sequences join the batch
   between any two steps (continuous batching). A joining sequence first takes
   the longest run of its full blocks that the prefix cache holds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from .block_pool import BlockPool
from .prefix import extend_block_hashes


@dataclass(eq=False)
class Sequence:
    """One request's tokens and KV blocks, as the scheduler sees them."""

    request_id: str
    token_ids: list[int]  # prompt, then every generated token
    num_prompt_tokens: int
    num_computed: int = 0  # leading tokens whose KV is in the pool
    block_ids: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)  # of full blocks of token_ids
    num_published: int = 0  # leading blocks offered to the prefix cache
    num_cached_prompt_tokens: int = 0  # prompt tokens the prefix cache served (usage)
    admitted_once: bool = False

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_computed


@dataclass(frozen=True)
class ScheduledChunk:
    """Compute `token_ids[start:start + num_tokens]` of `seq` this step."""

    seq: Sequence
    start: int
    num_tokens: int

    @property
    def samples(self) -> bool:
        """Does this chunk reach the end of the sequence (so a token is sampled)?"""
        return self.start + self.num_tokens == len(self.seq.token_ids)


@dataclass
class SchedulerCounters:
    prefix_cache_queries: int = 0  # prompt tokens looked up, like vLLM's counter
    prefix_cache_hits: int = 0  # of which served from the cache
    preemptions: int = 0


class Scheduler:
    def __init__(
        self,
        pool: BlockPool,
        block_size: int,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        hash_salt: str = "",
    ) -> None:
        if max_num_seqs <= 0 or max_num_batched_tokens <= 0:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be positive")
        self.pool = pool
        self.block_size = block_size
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.hash_salt = hash_salt
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.counters = SchedulerCounters()

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # -- one step ------------------------------------------------------------

    def schedule(self) -> list[ScheduledChunk]:
        budget = self.max_num_batched_tokens
        out: list[ScheduledChunk] = []
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_uncomputed, budget)
            while not self._grow(seq, seq.num_computed + n):
                victim = self.running.pop()  # the newest: lowest priority under FCFS
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            else:
                out.append(ScheduledChunk(seq, seq.num_computed, n))
                budget -= n
                i += 1
        if preempted:
            return out
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not seq.block_ids:
                self._take_cached_prefix(seq)
            n = min(seq.num_uncomputed, budget)
            if not self._grow(seq, seq.num_computed + n):
                self._release(seq)
                break
            self.waiting.popleft()
            self.running.append(seq)
            out.append(ScheduledChunk(seq, seq.num_computed, n))
            budget -= n
        return out

    def step_done(self, chunks: Iterable[ScheduledChunk]) -> None:
        """The chunks' KV is now in the pool: advance them and publish full blocks."""
        for chunk in chunks:
            seq = chunk.seq
            seq.num_computed = chunk.start + chunk.num_tokens
            self._publish(seq)

    def append_token(self, seq: Sequence, token_id: int) -> None:
        seq.token_ids.append(token_id)

    def finish(self, seq: Sequence) -> None:
        """Drop a finished or aborted sequence and free its blocks at once."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self._release(seq)

    # -- helpers -------------------------------------------------------------

    def _grow(self, seq: Sequence, num_tokens: int) -> bool:
        need = self.blocks_needed(num_tokens) - len(seq.block_ids)
        if need <= 0:
            return True
        blocks = self.pool.allocate(need)
        if blocks is None:
            return False
        seq.block_ids.extend(blocks)
        return True

    def _take_cached_prefix(self, seq: Sequence) -> None:
        bs = self.block_size
        extend_block_hashes(seq.block_hashes, seq.token_ids, bs, self.hash_salt)
        # At least the last token is always computed: its logits give the next token.
        limit = (len(seq.token_ids) - 1) // bs
        hits: list[int] = []
        for h in seq.block_hashes[:limit]:
            block = self.pool.lookup(h)
            if block is None:
                break
            hits.append(block)
        for block in hits:
            self.pool.acquire(block)
        seq.block_ids = hits
        seq.num_computed = len(hits) * bs
        seq.num_published = len(hits)
        if not seq.admitted_once:  # count each request once, not each recompute
            seq.admitted_once = True
            self.counters.prefix_cache_queries += seq.num_prompt_tokens
            self.counters.prefix_cache_hits += seq.num_computed
            seq.num_cached_prompt_tokens = seq.num_computed

    def _publish(self, seq: Sequence) -> None:
        full = seq.num_computed // self.block_size
        if full <= seq.num_published:
            return
        extend_block_hashes(seq.block_hashes, seq.token_ids, self.block_size, self.hash_salt)
        for idx in range(seq.num_published, full):
            self.pool.cache(seq.block_ids[idx], seq.block_hashes[idx])
        seq.num_published = full

    def _preempt(self, seq: Sequence) -> None:
        self._release(seq)
        self.waiting.appendleft(seq)
        self.counters.preemptions += 1

    def _release(self, seq: Sequence) -> None:
        self.pool.free(seq.block_ids[::-1])
        seq.block_ids = []
        seq.num_computed = 0
        seq.num_published = 0
