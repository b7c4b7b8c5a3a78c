"""One serving node of `rumor sim llm`: an engine with continuous batching,
chunked prefill and a prefix cache with LRU eviction, as a cost model.

Steps. Like the built-in engine and vLLM, the node runs iterations: each
decoding sequence makes one token and prefilling sequences get chunks of
their uncached prompt, within `chunk_tokens` per step. A step takes

    step_base_s + prefill_s_per_token * prefill tokens + decode_s_per_seq * decoding

so prefill costs time in proportion to the uncached tokens and decoding
costs per token and per sequence in the batch. A sequence's first token comes
at the end of the step that finishes its prefill (TTFT). When no prefill is
pending, the decode steps until the next sequence finishes are all alike, and
are taken as one event (an arrival cuts that short at the next step boundary).

Cache. `kv_blocks` blocks of 16 tokens. A running sequence holds blocks for
its whole prompt and output from admission (no preemption); a request waits
for room. Finished full blocks stay cached, evicted least recently used
first; as the engine frees a sequence tail first, the cache is kept per
segment (the system prompt, a session's history) and a segment is evicted
from its tail. Every block stored or evicted that a summary could keep is
reported to this node's `SummaryPublisher` (node.cluster.prefix), the code the
daemon runs on its engine's KV events.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

from node.cluster.prefix import SummaryPublisher

from .llm_workload import BLOCK_SIZE, Request, Segments


@dataclass(frozen=True)
class NodeModel:
    """What a node costs (defaults: an 8B-parameter model on one recent GPU,
    roughly: 20k prefill tokens/s, ~6 ms decode steps)."""

    prefill_s_per_token: float = 50e-6
    step_base_s: float = 0.006
    decode_s_per_seq: float = 0.0001
    chunk_tokens: int = 2_048  # max_num_batched_tokens
    max_running: int = 64  # max_num_seqs
    kv_blocks: int = 16_384  # 262k tokens
    queue_bound: int = 256  # waiting requests past which a node refuses


class ServingNode:
    def __init__(self, index: int, model: NodeModel, segments: Segments, summary: SummaryPublisher):
        self.index, self.m, self.segments, self.summary = index, model, segments, summary
        #: segment -> cached extent: blocks [start, extent) are cached, where
        #: start is 0 for a system prompt and its split for a session.
        self.extent: dict[int, int] = {}
        self.start: dict[int, int] = {}
        self.pins: dict[int, int] = {}
        self.lru: OrderedDict[int, None] = OrderedDict()  # unpinned segments, oldest first
        self.cached = 0  # blocks held by segments
        self.private = 0  # blocks reserved by running sequences beyond the cache
        self.waiting: deque[Request] = deque()
        self.prefilling: list[Request] = []
        self.decoding: list[Request] = []
        self.epoch = 0  # bumps when the planned step changes
        self.step_start = 0.0
        self.step_len = 0.0
        self.steps = 0  # steps the planned event covers (>1: a decode-only stretch)
        self.chunks: list[tuple[Request, int]] = []
        self.busy = False
        self.changes = 0  # summary inputs so far (so a snapshot is rebuilt only on change)
        self.hit_tokens = 0
        self.query_tokens = 0

    # -- what a router may know -------------------------------------------------

    @property
    def queue(self) -> int:
        return len(self.waiting) + len(self.prefilling) + len(self.decoding)

    def holds(self, seg: int, index: int) -> bool:
        return self.start.get(seg, 0) <= index < self.extent.get(seg, 0)

    def match_blocks(self, r: Request) -> int:
        """Full blocks of `r`'s prompt the cache holds, from the start (never the
        last token: the engine recomputes it for its logits)."""
        limit = (r.prompt_tokens - 1) // BLOCK_SIZE
        if r.system is not None:
            held = min(self.extent.get(r.system, 0), r.system_blocks)
            if held < r.system_blocks:
                return min(held, limit)
        held = max(self.extent.get(r.own, r.system_blocks), r.system_blocks)
        return min(held, limit)

    # -- segments ------------------------------------------------------------------

    def _grow(self, seg: int, start: int, end: int, r: Request) -> None:
        """Cache blocks [extent, end) of `seg` that `r` computed (its private ones)."""
        ext = self.extent.get(seg, start)
        if end <= ext:
            return
        self.start.setdefault(seg, start)
        n = min(end - ext, r.private)
        if n <= 0:
            return
        self.extent[seg] = ext + n
        self.cached += n
        self.private -= n
        r.private -= n
        self._report(stored=self.segments.sampled(seg, ext, ext + n))

    def _pin(self, seg: int) -> None:
        self.pins[seg] = self.pins.get(seg, 0) + 1
        self.lru.pop(seg, None)

    def _unpin(self, seg: int) -> None:
        left = self.pins.get(seg, 0) - 1
        if left > 0:
            self.pins[seg] = left
            return
        self.pins.pop(seg, None)
        if self.extent.get(seg, 0) > self.start.get(seg, 0):
            self.lru[seg] = None  # most recently used end
            self.lru.move_to_end(seg)

    def _evict(self, n: int) -> int:
        """Free up to `n` blocks, least recently used segments first, each from
        its tail. Returns how many were freed."""
        freed = 0
        while freed < n and self.lru:
            seg = next(iter(self.lru))
            start, ext = self.start[seg], self.extent[seg]
            take = min(n - freed, ext - start)
            self.extent[seg] = ext - take
            self.cached -= take
            freed += take
            self._report(removed=self.segments.sampled(seg, ext - take, ext))
            if ext - take <= start:
                del self.lru[seg], self.extent[seg], self.start[seg]
        return freed

    def _report(self, stored: list[int] | None = None, removed: list[int] | None = None) -> None:
        if stored:
            self.summary.stored(stored)
            self.changes += 1
        if removed:
            self.summary.removed(removed)
            self.changes += 1

    # -- requests -----------------------------------------------------------------

    def admit(self, r: Request) -> bool:
        """Start `r` if blocks allow: take its cached prefix, reserve the rest."""
        matched = self.match_blocks(r)
        need = -(-(r.prompt_tokens + r.output_tokens) // BLOCK_SIZE) - matched
        free = self.m.kv_blocks - self.cached - self.private
        segs = [r.own] if r.system is None else [r.system, r.own]
        for seg in segs:
            self._pin(seg)  # before evicting: its own prefix must stay
        if free < need:
            free += self._evict(need - free)
        if free < need:
            for seg in reversed(segs):
                self._unpin(seg)
            return False
        self.private += need
        r.private = need
        r.cached_tokens = matched * BLOCK_SIZE
        r.prefill_left = r.prompt_tokens - r.cached_tokens
        self.hit_tokens += r.cached_tokens
        self.query_tokens += r.prompt_tokens
        return True

    def _prefilled(self, r: Request) -> None:
        """The prompt's full blocks join the cache once computed."""
        blocks = r.prompt_tokens // BLOCK_SIZE
        if r.system is not None:
            self._grow(r.system, 0, min(blocks, r.system_blocks), r)
        self._grow(r.own, r.system_blocks, blocks, r)

    def _finished(self, r: Request) -> None:
        """Output blocks join the cache; the rest of the reservation is freed;
        the tail (the session) is released before the system prompt, so it is
        evicted first, as the engine frees a sequence's blocks tail first."""
        self._grow(r.own, r.system_blocks, (r.prompt_tokens + r.output_tokens) // BLOCK_SIZE, r)
        self.private -= r.private
        r.private = 0
        self._unpin(r.own)
        if r.system is not None:
            self._unpin(r.system)

    # -- steps --------------------------------------------------------------------

    def plan(self, now: float) -> float | None:
        """Admit what fits and plan the next step (or decode-only stretch);
        returns when it ends, or None when idle."""
        while self.waiting and len(self.prefilling) + len(self.decoding) < self.m.max_running:
            if not self.admit(self.waiting[0]):
                break
            self.prefilling.append(self.waiting.popleft())
        budget = self.m.chunk_tokens - len(self.decoding)
        self.chunks = []
        for r in self.prefilling:
            if budget <= 0:
                break
            c = min(budget, r.prefill_left)
            self.chunks.append((r, c))
            budget -= c
        if not self.chunks and not self.decoding:
            self.busy = False
            return None
        prefill = sum(c for _, c in self.chunks)
        m = self.m
        decode = m.decode_s_per_seq * len(self.decoding)
        self.step_len = m.step_base_s + m.prefill_s_per_token * prefill + decode
        # Decode-only: every step alike until the first sequence finishes.
        self.steps = 1 if self.chunks else min(r.output_left for r in self.decoding)
        self.step_start = now
        self.busy = True
        self.epoch += 1
        return now + self.steps * self.step_len

    def interrupt(self, now: float) -> float | None:
        """Something arrived during a decode-only stretch: end it at the next
        step boundary. Returns the new end, or None if the plan stands."""
        if not self.busy or self.steps <= 1:
            return None
        done = int((now - self.step_start) / self.step_len) + 1
        if done >= self.steps:
            return None
        self.steps = done
        self.epoch += 1
        return self.step_start + done * self.step_len

    def finish_step(self, now: float) -> list[Request]:
        """Apply the planned step(s); returns the requests that finished."""
        done: list[Request] = []
        k = self.steps
        still = []
        for r in self.decoding:
            r.output_left -= k
            if r.output_left <= 0:
                r.done_at = now
                self._finished(r)
                done.append(r)
            else:
                still.append(r)
        self.decoding = still
        for r, c in self.chunks:
            r.prefill_left -= c
            if r.prefill_left <= 0:
                self.prefilling.remove(r)
                self._prefilled(r)
                r.first_token_at = now
                r.output_left = r.output_tokens - 1
                if r.output_left <= 0:
                    r.done_at = now
                    self._finished(r)
                    done.append(r)
                else:
                    self.decoding.append(r)
        self.chunks = []
        return done
