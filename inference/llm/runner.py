"""The paged model runner: the KV pool's tensors and one forward pass per step.

The KV cache is two tensors per model, `[layers, slots, kv_heads, head_dim]`
for keys and for values, allocated once when the model loads (slots = blocks x
block_size). A token at position p of a sequence lives in slot
`block_table[p // block_size] * block_size + p % block_size`.

A step is a flat batch of tokens: first every chunk of one token (decodes, and
prefills down to their last token), then each longer prefill chunk. The
linear layers run once over the flat batch; attention runs once for all the
one-token chunks (their context gathered block by block and padded, the
padding masked) and once per longer chunk.

Allocation: the pool, the rope tables and the step's index buffers (token ids,
positions, slots, block tables, context lengths) are allocated at load and
reused; a step writes into them in place. The activations and the gathered
context of a step are ordinary torch temporaries (the caching allocator on
CUDA, malloc on a CPU); no tensor is tied to a request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .model import LlamaWeights, apply_rope, mlp, rms_norm, rope_tables
from .params import SamplingParams
from .scheduler import ScheduledChunk


@dataclass(frozen=True)
class KVLayout:
    num_blocks: int
    block_size: int
    bytes: int


def plan_kv_cache(
    weights: LlamaWeights,
    dtype: torch.dtype,
    block_size: int,
    kv_cache_bytes: int,
) -> KVLayout:
    per_block = weights.spec.kv_bytes_per_token(dtype) * block_size
    num_blocks = kv_cache_bytes // per_block
    if num_blocks < 1:
        raise ValueError(f"a KV cache of {kv_cache_bytes} bytes holds no {per_block}-byte block")
    return KVLayout(int(num_blocks), block_size, int(num_blocks * per_block))


class ModelRunner:
    def __init__(
        self,
        weights: LlamaWeights,
        layout: KVLayout,
        max_model_len: int,
        max_num_seqs: int,
        max_num_batched_tokens: int,
    ) -> None:
        self.w = weights
        spec = weights.spec
        self.spec = spec
        self.device = weights.embed.device
        self.dtype = weights.embed.dtype
        self.block_size = layout.block_size
        self.num_blocks = layout.num_blocks
        slots = layout.num_blocks * layout.block_size
        shape = (spec.num_layers, slots, spec.num_kv_heads, spec.head_dim)
        # The pool: allocated once, here.
        self.k_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        cos, sin = rope_tables(spec, max_model_len, self.device)
        self.cos, self.sin = cos.to(self.dtype), sin.to(self.dtype)
        self.max_blocks_per_seq = -(-max_model_len // layout.block_size)
        t = max_num_batched_tokens
        # Host-side index buffers, written in place every step (numpy views of torch tensors).
        self._ids = torch.zeros(t, dtype=torch.int64)
        self._pos = torch.zeros(t, dtype=torch.int64)
        self._slots = torch.zeros(t, dtype=torch.int64)
        self._tables = torch.zeros((max_num_seqs, self.max_blocks_per_seq), dtype=torch.int64)
        self._ctx = torch.zeros(max_num_seqs, dtype=torch.int64)
        self._ids_np, self._pos_np = self._ids.numpy(), self._pos.numpy()
        self._slots_np, self._tables_np = self._slots.numpy(), self._tables.numpy()
        self._ctx_np = self._ctx.numpy()
        self._arange = torch.arange(max(max_model_len, t), device=self.device)

    @property
    def kv_cache_bytes(self) -> int:
        return 2 * self.k_cache.numel() * self.k_cache.element_size()

    # -- one step --------------------------------------------------------------

    @torch.inference_mode()
    def execute(self, chunks: Sequence[ScheduledChunk]) -> torch.Tensor:
        """Run the chunks; returns float32 logits, one row per chunk that samples
        (in the order of `chunks`)."""
        decodes = [c for c in chunks if c.num_tokens == 1]
        prefills = [c for c in chunks if c.num_tokens > 1]
        ordered = decodes + prefills
        total = self._fill_inputs(ordered)
        dev = self.device
        ids = self._ids[:total].to(dev, non_blocking=True)
        pos = self._pos[:total].to(dev, non_blocking=True)
        slots = self._slots[:total].to(dev, non_blocking=True)
        nd = len(decodes)

        s = self.spec
        hd, nh, nkv = s.head_dim, s.num_heads, s.num_kv_heads
        # Per-step attention plans (gather indices, masks), shared by every layer.
        decode_plan = None
        if nd:
            tables = self._tables[:nd].to(dev, non_blocking=True)
            ctx = self._ctx[:nd].to(dev, non_blocking=True)
            decode_plan = self._decode_plan(tables, ctx, int(self._ctx_np[:nd].max()))
        prefill_plans = [self._prefill_plan(c) for c in prefills]
        cos, sin = self.cos[pos], self.sin[pos]
        x = self.w.embed[ids]
        for li, lw in enumerate(self.w.layers):
            h = rms_norm(x, lw.input_norm, s.rms_norm_eps)
            qkv = F.linear(h, lw.qkv)
            q, k, v = qkv.split_with_sizes([nh * hd, nkv * hd, nkv * hd], dim=-1)
            q = apply_rope(q.view(total, nh, hd), cos, sin)
            k = apply_rope(k.view(total, nkv, hd), cos, sin)
            v = v.view(total, nkv, hd)
            kc, vc = self.k_cache[li], self.v_cache[li]
            kc.index_copy_(0, slots, k)
            vc.index_copy_(0, slots, v)
            attn = torch.empty((total, nh * hd), dtype=x.dtype, device=dev)
            if decode_plan is not None:
                attn[:nd] = self._decode_attention(q[:nd], kc, vc, decode_plan)
            off = nd
            for c, plan in zip(prefills, prefill_plans, strict=True):
                n = c.num_tokens
                attn[off : off + n] = self._prefill_attention(
                    plan, q[off : off + n], k[off : off + n], v[off : off + n], kc, vc
                )
                off += n
            x = x + F.linear(attn, lw.o)
            x = x + mlp(rms_norm(x, lw.post_norm, s.rms_norm_eps), lw)
        # Logits only for the last token of each chunk that samples, in `chunks` order.
        row_of: dict[int, int] = {}
        off = 0
        for c in ordered:
            off += c.num_tokens
            row_of[id(c)] = off - 1
        rows = [row_of[id(c)] for c in chunks if c.samples]
        if not rows:
            return torch.empty((0, s.vocab_size), device=dev)
        last = x[torch.tensor(rows, device=dev)] if len(rows) < total else x
        return F.linear(rms_norm(last, self.w.norm, s.rms_norm_eps), self.w.lm_head).float()

    def _fill_inputs(self, ordered: Sequence[ScheduledChunk]) -> int:
        bs = self.block_size
        off = 0
        for i, c in enumerate(ordered):
            seq, start, n = c.seq, c.start, c.num_tokens
            end = start + n
            self._ids_np[off : off + n] = seq.token_ids[start:end]
            self._pos_np[off : off + n] = range(start, end)
            blocks = seq.block_ids
            if n == 1:
                self._slots_np[off] = blocks[start // bs] * bs + start % bs
                nb = len(blocks)
                self._tables_np[i, :nb] = blocks
                self._ctx_np[i] = end
            else:
                table = np.asarray(blocks, dtype=np.int64)
                p = self._pos_np[off : off + n]
                self._slots_np[off : off + n] = table[p // bs] * bs + p % bs
            off += n
        return off

    # -- attention -------------------------------------------------------------
    # The context is gathered whole blocks at a time with index_select on a
    # [blocks, block_size * kv_heads * head_dim] view: contiguous 4 KB rows,
    # several times faster on a CPU than advanced indexing of the 4-d view.

    def _gather(self, cache: torch.Tensor, flat_blocks: torch.Tensor) -> torch.Tensor:
        s = self.spec
        rows = torch.index_select(cache.view(self.num_blocks, -1), 0, flat_blocks)
        return rows.view(-1, s.num_kv_heads, s.head_dim)  # [blocks * block_size, kv, hd]

    def _decode_plan(self, tables: torch.Tensor, ctx: torch.Tensor, longest: int) -> _DecodePlan:
        b = tables.shape[0]
        nb = -(-longest // self.block_size)  # from the host copy: no device sync
        length = nb * self.block_size
        mask = (self._arange[:length].unsqueeze(0) < ctx.unsqueeze(1)).view(b, 1, 1, length)
        return _DecodePlan(tables[:, :nb].reshape(-1), b, length, mask)

    def _decode_attention(
        self,
        q: torch.Tensor,  # [B, heads, hd]
        kc: torch.Tensor,  # [slots, kv heads, hd]
        vc: torch.Tensor,
        plan: _DecodePlan,
    ) -> torch.Tensor:
        s = self.spec
        b, length = plan.batch, plan.length
        k = self._gather(kc, plan.flat_blocks).view(b, length, s.num_kv_heads, s.head_dim)
        v = self._gather(vc, plan.flat_blocks).view(b, length, s.num_kv_heads, s.head_dim)
        # One query per sequence: fold the query heads of each KV head into the
        # query-length axis ([B, kv, group, hd]), so no KV head is repeated.
        group = s.num_heads // s.num_kv_heads
        qg = q.view(b, s.num_kv_heads, group, s.head_dim)
        out = F.scaled_dot_product_attention(
            qg, k.transpose(1, 2), v.transpose(1, 2), attn_mask=plan.mask
        )
        return out.reshape(b, s.num_heads * s.head_dim)

    def _prefill_plan(self, c: ScheduledChunk) -> _PrefillPlan | None:
        if c.start == 0:
            return None  # the whole context is this chunk: plain causal attention
        length = c.start + c.num_tokens
        nb = -(-length // self.block_size)
        table = torch.tensor(c.seq.block_ids[:nb], device=self.device)
        qpos = self._arange[c.start : length].unsqueeze(1)
        return _PrefillPlan(table, length, self._arange[:length].unsqueeze(0) <= qpos)

    def _prefill_attention(
        self,
        plan: _PrefillPlan | None,
        q: torch.Tensor,  # [n, heads, hd]
        k: torch.Tensor,  # [n, kv heads, hd] (this chunk's, already in the cache too)
        v: torch.Tensor,
        kc: torch.Tensor,
        vc: torch.Tensor,
    ) -> torch.Tensor:
        n = q.shape[0]
        qt = q.transpose(0, 1).unsqueeze(0)
        if plan is None:
            out = F.scaled_dot_product_attention(
                qt,
                k.transpose(0, 1).unsqueeze(0),
                v.transpose(0, 1).unsqueeze(0),
                is_causal=True,
                enable_gqa=True,
            )
        else:  # a later chunk, or after a prefix-cache hit: attend to the cached context
            kk = self._gather(kc, plan.blocks)[: plan.length]
            vv = self._gather(vc, plan.blocks)[: plan.length]
            out = F.scaled_dot_product_attention(
                qt,
                kk.transpose(0, 1).unsqueeze(0),
                vv.transpose(0, 1).unsqueeze(0),
                attn_mask=plan.mask,
                enable_gqa=True,
            )
        return out.squeeze(0).transpose(0, 1).reshape(n, -1)


@dataclass(frozen=True)
class _DecodePlan:
    flat_blocks: torch.Tensor  # [B * nb] block ids, row-major
    batch: int
    length: int  # nb * block_size, the padded context
    mask: torch.Tensor  # [B, 1, 1, length]: True where a key is in the context


@dataclass(frozen=True)
class _PrefillPlan:
    blocks: torch.Tensor  # the sequence's first nb block ids
    length: int  # context length after this chunk
    mask: torch.Tensor  # [n, length] causal, offset by the chunk's start


# -- sampling ---------------------------------------------------------------


def sample(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator],
) -> list[int]:
    """One token per row. Greedy rows take the argmax; the others draw from the
    temperature-scaled distribution, cut to the top-p nucleus, with the
    request's own generator (so a seeded request repeats whatever its batch)."""
    out: list[int] = logits.argmax(dim=-1).tolist()
    for i, p in enumerate(params):
        if p.temperature == 0:
            continue
        probs = torch.softmax(logits[i] / p.temperature, dim=-1)
        if p.top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            # Keep a token while the mass before it is below top_p (so at least one).
            drop = (sorted_p.cumsum(0) - sorted_p) >= p.top_p
            sorted_p[drop] = 0.0
            pick = torch.multinomial(sorted_p, 1, generator=generators[i])
            out[i] = int(order[pick])
        else:
            out[i] = int(torch.multinomial(probs, 1, generator=generators[i]))
    return out
