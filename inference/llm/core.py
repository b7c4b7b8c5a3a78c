"""The synchronous engine core: requests in, one scheduler iteration per `step()`, outputs out.

No threads, no I/O and no clock (h11's shape): a driver calls `add_request`,
`abort` and `step` and owns everything around them (`client.py` in the same
thread, `host.py` in a child process). The pieces it wires:

    Scheduler (policy) -> ModelRunner (paged forward) -> sample -> TextStream (text)
          \\-> BlockPool (ids, refcounts, prefix cache)

A request's bad input raises `InvalidInput` from `add_request` and leaves the
engine untouched; nothing a client sends can fail another request.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..config import ModelConfig
from ..errors import InvalidInput
from .block_pool import BlockEvent, BlockPool
from .detokenize import TextStream
from .loader import LoadedLLM, load_llm
from .params import (
    FINISH_ABORT,
    FINISH_LENGTH,
    FINISH_STOP,
    EngineStats,
    ModelInfo,
    RequestOutput,
    SamplingParams,
    Usage,
)
from .prefix import HASH_NAME
from .runner import ModelRunner, plan_kv_cache, sample
from .scheduler import Scheduler
from .scheduler import Sequence as Seq

MAX_REQUEST_ID = 256


@dataclass(eq=False)
class _Request:
    seq: Seq
    params: SamplingParams
    text: TextStream
    generator: torch.Generator | None
    num_generated: int = 0


class EngineCore:
    def __init__(self, loaded: LoadedLLM, seed: int = 0) -> None:
        cfg = loaded.config
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.max_model_len = loaded.max_model_len
        self.block_size = cfg.block_size
        layout = plan_kv_cache(loaded.weights, loaded.dtype, cfg.block_size, loaded.kv_cache_bytes)
        self.pool = BlockPool(layout.num_blocks)
        self.hash_salt = cfg.name
        self.scheduler = Scheduler(
            self.pool, cfg.block_size, cfg.max_num_seqs, cfg.max_num_batched_tokens, cfg.name
        )
        self.runner = ModelRunner(
            loaded.weights,
            layout,
            self.max_model_len,
            cfg.max_num_seqs,
            cfg.max_num_batched_tokens,
        )
        self._requests: dict[str, _Request] = {}
        self._eos = frozenset(loaded.tokenizer.eos_token_ids)
        self._vocab = loaded.weights.spec.vocab_size
        self._rng = random.Random(seed)  # seeds for requests that bring none
        self._prompt_tokens = 0
        self._generation_tokens = 0
        self._steps = 0
        self._aborted = 0

    @classmethod
    def from_config(cls, config: ModelConfig, seed: int = 0) -> EngineCore:
        return cls(load_llm(config), seed)

    def describe(self) -> ModelInfo:
        cfg, spec = self.loaded.config, self.loaded.weights.spec
        return ModelInfo(
            name=cfg.name,
            source=cfg.source,
            architecture="llama",
            num_params=self.loaded.weights.num_params(),
            vocab_size=spec.vocab_size,
            max_model_len=self.max_model_len,
            dtype=cfg.dtype,
            device=str(self.loaded.device),
            block_size=self.block_size,
            hash_name=HASH_NAME,
            hash_salt=self.hash_salt,
            kv_blocks_total=self.pool.num_blocks,
            kv_cache_bytes=self.runner.kv_cache_bytes,
            eos_token_ids=self.tokenizer.eos_token_ids,
            extra={"size": cfg.size} if cfg.size else {},
        )

    # -- requests ------------------------------------------------------------

    def add_request(
        self, request_id: str, prompt_token_ids: Sequence[int], params: SamplingParams
    ) -> None:
        """Queue a request; raises InvalidInput (and changes nothing) if it is bad."""
        self._validate(request_id, prompt_token_ids, params)
        ids = list(prompt_token_ids)
        generator = None
        if params.temperature > 0:
            generator = torch.Generator(self.loaded.device)
            generator.manual_seed(
                params.seed if params.seed is not None else self._rng.getrandbits(63)
            )
        seq = Seq(request_id, ids, len(ids))
        stop = params.stop
        self._requests[request_id] = _Request(
            seq, params, TextStream(self.tokenizer, ids, stop), generator
        )
        self.scheduler.add(seq)
        self._prompt_tokens += len(ids)

    def _validate(self, request_id: str, ids: Sequence[int], params: SamplingParams) -> None:
        if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_REQUEST_ID:
            raise InvalidInput(f"request id must be a string of 1..{MAX_REQUEST_ID} characters")
        if request_id in self._requests:
            raise InvalidInput(f"request id {request_id!r} is already in use")
        if not isinstance(params, SamplingParams):
            raise InvalidInput("sampling parameters are missing")
        params.validate()
        n = len(ids)
        if n == 0:
            raise InvalidInput("the prompt is empty")
        if n >= self.max_model_len:
            raise InvalidInput(
                f"the prompt has {n} tokens; this model's context is {self.max_model_len}"
            )
        if n + params.max_tokens > self.max_model_len:
            raise InvalidInput(
                f"prompt ({n} tokens) + max_tokens ({params.max_tokens}) exceeds the "
                f"context of {self.max_model_len} tokens"
            )
        need = self.scheduler.blocks_needed(n + params.max_tokens)
        if need > self.pool.num_blocks:
            raise InvalidInput(
                f"the request needs {need} KV blocks and the pool has {self.pool.num_blocks}; "
                "it can never fit"
            )
        if any(type(t) is not int or not 0 <= t < self._vocab for t in ids):
            raise InvalidInput(f"token ids must be integers in [0, {self._vocab})")

    def abort(self, request_id: str) -> RequestOutput | None:
        """End a request now and free its KV blocks; None if it is not running."""
        req = self._requests.pop(request_id, None)
        if req is None:
            return None
        self._aborted += 1
        self.scheduler.finish(req.seq)
        return RequestOutput(request_id, (), "", True, FINISH_ABORT, self._usage(req))

    def has_unfinished(self) -> bool:
        return bool(self._requests)

    @property
    def generation_tokens(self) -> int:
        """Tokens generated since start (a counter; cheaper than stats())."""
        return self._generation_tokens

    # -- one iteration -----------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        chunks = self.scheduler.schedule()
        if not chunks:
            return []
        logits = self.runner.execute(chunks)
        self.scheduler.step_done(chunks)
        self._steps += 1
        sampling = [c for c in chunks if c.samples]
        reqs = [self._requests[c.seq.request_id] for c in sampling]
        tokens = sample(
            logits,
            [r.params for r in reqs],
            [r.generator for r in reqs],  # type: ignore[misc]  # None only when greedy
        )
        outputs: list[RequestOutput] = []
        for req, tok in zip(reqs, tokens, strict=True):
            outputs.append(self._advance(req, tok))
        return outputs

    def _advance(self, req: _Request, token: int) -> RequestOutput:
        seq, p = req.seq, req.params
        self.scheduler.append_token(seq, token)
        req.num_generated += 1
        self._generation_tokens += 1
        reason = None
        if token in self._eos and not p.ignore_eos:
            text = ""  # EOS is not part of the text
            reason = FINISH_STOP
        else:
            text = req.text.push((token,))
            if req.text.stopped:
                reason = FINISH_STOP
            elif req.num_generated >= p.max_tokens or len(seq.token_ids) >= self.max_model_len:
                reason = FINISH_LENGTH
        if reason is None:
            return RequestOutput(seq.request_id, (token,), text)
        text += req.text.finish()
        del self._requests[seq.request_id]
        self.scheduler.finish(seq)
        return RequestOutput(seq.request_id, (token,), text, True, reason, self._usage(req))

    def _usage(self, req: _Request) -> Usage:
        return Usage(req.seq.num_prompt_tokens, req.num_generated, req.seq.num_cached_prompt_tokens)

    # -- load and cache contents ----------------------------------------------

    def stats(self) -> EngineStats:
        c = self.scheduler.counters
        return EngineStats(
            running=len(self.scheduler.running),
            waiting=len(self.scheduler.waiting),
            kv_blocks_used=self.pool.num_used,
            kv_blocks_total=self.pool.num_blocks,
            prefix_cache_queries=c.prefix_cache_queries,
            prefix_cache_hits=c.prefix_cache_hits,
            prompt_tokens=self._prompt_tokens,
            generation_tokens=self._generation_tokens,
            preemptions=c.preemptions,
            aborted=self._aborted,
            steps=self._steps,
        )

    def cached_block_hashes(self) -> list[int]:
        """Every block hash the prefix cache can serve now."""
        return list(self.pool.cached_hashes())

    def kv_events_since(self, cursor: int) -> tuple[int, list[BlockEvent], bool]:
        """(new cursor, stored/removed events after `cursor`, complete?). When not
        complete the log overflowed: resync from `cached_block_hashes()`."""
        events, complete = self.pool.events_since(cursor)
        return self.pool.event_cursor, events, complete
