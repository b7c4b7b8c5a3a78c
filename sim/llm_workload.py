"""Workloads for `rumor sim llm`, and the block hashes of their prompts.

A prompt is a token stream cut into blocks of `block_size` tokens; a block
is named by a chained hash, so equal hashes mean equal prefixes (the engine's
rule, inference/llm/prefix.py). The simulator never materialises tokens: a
stream is a list of *segments* (a shared system prompt, then one agent
session's history), and block i of a segment is `block_hash(segment, i)`,
a bijective 64-bit mix of (segment, i), uniform like a real hash (the
summaries sample hashes by their low bits). Because the mix is invertible, a
hash says which segment and block it names: the simulator's omniscient
router reads exact cache contents through it.

Workloads:

* `agent`: sessions like Open-AutoGLM's phone agent over an OpenAI API. A
  shared system prompt (2-4k tokens); each session takes 5-30 steps; each
  step's prompt is the previous prompt, the previous reply and a new
  observation (500-1,500 tokens), and generates 20-100 tokens; the agent acts
  on the reply before its next step (0.5-2 s). Sessions arrive as a Poisson
  process.
* `chat`: unrelated prompts (256-4,096 tokens, 50-300 generated), Poisson
  arrivals: nothing to reuse.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

#: Tokens per KV block (the engine's default).
BLOCK_SIZE = 16
MASK64 = (1 << 64) - 1
#: Bits of a block's index inside its segment (a million blocks: 16 M tokens).
INDEX_BITS = 20
SYSTEM_NS = 1 << 42  # segment keys of system prompts
CHAT_NS = 1 << 41  # segment keys of chat prompts
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_M1_INV, _M2_INV = pow(_M1, -1, 1 << 64), pow(_M2, -1, 1 << 64)


def mix(x: int) -> int:
    """SplitMix64's finaliser: a bijection on 64-bit ints that looks uniform."""
    x = ((x ^ (x >> 30)) * _M1) & MASK64
    x = ((x ^ (x >> 27)) * _M2) & MASK64
    return x ^ (x >> 31)


def _unshift(x: int, s: int) -> int:
    y = x
    for _ in range(64 // s + 1):
        y = x ^ (y >> s)
    return y


def unmix(h: int) -> int:
    x = _unshift(h, 31)
    x = _unshift((x * _M2_INV) & MASK64, 27)
    return _unshift((x * _M1_INV) & MASK64, 30)


def block_hash(segment: int, index: int) -> int:
    return mix((segment << INDEX_BITS) | index)


def block_of(h: int) -> tuple[int, int]:
    """(segment, index) of a block hash made by `block_hash`."""
    x = unmix(h)
    return x >> INDEX_BITS, x & ((1 << INDEX_BITS) - 1)


class Segments:
    """Each segment's hashes that a summary could keep (trailing zeros >=
    `floor`), computed once as the segment grows: what the nodes report to
    their summary publishers, and the sampled positions of a request's chain."""

    def __init__(self, floor: int) -> None:
        self.floor = floor
        self._idx: dict[int, list[int]] = {}
        self._hash: dict[int, list[int]] = {}
        self._extent: dict[int, int] = {}

    def _grow(self, seg: int, end: int) -> None:
        ext = self._extent.get(seg, 0)
        if end <= ext:
            return
        idx, hs = self._idx.setdefault(seg, []), self._hash.setdefault(seg, [])
        mask = (1 << self.floor) - 1
        base = seg << INDEX_BITS
        for i in range(ext, end):
            h = mix(base | i)
            if h & mask == 0:
                idx.append(i)
                hs.append(h)
        self._extent[seg] = end

    def sampled(self, seg: int, start: int, end: int) -> list[int]:
        """Hashes kept at the floor among blocks [start, end) of `seg`."""
        if end <= start:
            return []
        self._grow(seg, end)
        idx = self._idx[seg]
        return self._hash[seg][bisect.bisect_left(idx, start) : bisect.bisect_left(idx, end)]

    def positions(self, seg: int, start: int, end: int) -> list[tuple[int, int]]:
        """(index, hash) of the kept blocks in [start, end)."""
        if end <= start:
            return []
        self._grow(seg, end)
        idx = self._idx[seg]
        a, b = bisect.bisect_left(idx, start), bisect.bisect_left(idx, end)
        return list(zip(idx[a:b], self._hash[seg][a:b], strict=True))

    def forget(self, seg: int) -> None:
        """A finished session's segment (nothing will be asked of it again)."""
        self._idx.pop(seg, None)
        self._hash.pop(seg, None)
        self._extent.pop(seg, None)


class Chain(Sequence[int]):
    """A prompt's block hashes, computed on demand: blocks below `split` are
    the system prompt's, the rest the session's (or the chat prompt's)."""

    def __init__(self, system: int | None, split: int, own: int, blocks: int) -> None:
        self.system, self.split, self.own, self.blocks = system, split, own, blocks

    def __len__(self) -> int:
        return self.blocks

    def __getitem__(self, i: int) -> int:  # type: ignore[override]
        if i < 0:
            i += self.blocks
        if not 0 <= i < self.blocks:
            raise IndexError(i)
        if self.system is not None and i < self.split:
            return block_hash(self.system, i)
        return block_hash(self.own, i)

    def __iter__(self) -> Iterator[int]:
        return (self[i] for i in range(self.blocks))


@dataclass
class Request:
    """One step of a session (or one chat prompt), and what happened to it."""

    rid: int
    session: Session | None
    arrival: float
    prompt_tokens: int
    output_tokens: int
    system: int | None  # system prompt segment, or None
    system_blocks: int  # blocks of the stream that belong to the system prompt
    own: int  # the session's (or chat prompt's) segment
    router: int = 0
    node: int = -1
    cached_tokens: int = 0
    prefill_left: int = 0
    output_left: int = 0
    private: int = 0  # blocks reserved here and not (yet) in the cache
    first_token_at: float = 0.0
    done_at: float = 0.0

    def chain(self, block_size: int) -> Chain:
        return Chain(self.system, self.system_blocks, self.own, self.prompt_tokens // block_size)


@dataclass
class Session:
    """An agent session: its stream so far and the steps left."""

    sid: int
    system: int
    system_tokens: int
    steps_left: int
    tokens: int  # the stream's length so far (system prompt, observations, replies)
    #: The session's own draws (observations, replies, pauses), so every policy
    #: sees the same sessions whatever order their steps happen in.
    rng: random.Random
    step: int = 0


@dataclass(frozen=True)
class AgentWorkload:
    system_tokens: tuple[int, int] = (2_000, 4_000)
    system_prompts: int = 1
    steps: tuple[int, int] = (5, 30)
    observation_tokens: tuple[int, int] = (500, 1_500)
    output_tokens: tuple[int, int] = (20, 100)
    think_s: tuple[float, float] = (0.5, 2.0)
    name: str = "agent"

    def system_lengths(self, rng: random.Random) -> list[int]:
        return [rng.randint(*self.system_tokens) for _ in range(self.system_prompts)]

    def new_session(self, sid: int, rng: random.Random, systems: list[int]) -> Session:
        own = random.Random(rng.getrandbits(64))
        k = own.randrange(len(systems))
        return Session(sid, SYSTEM_NS | k, systems[k], own.randint(*self.steps), systems[k], own)

    def next_request(self, s: Session, rid: int, now: float) -> Request:
        """The session's next step: its stream grows by an observation."""
        s.tokens += s.rng.randint(*self.observation_tokens)
        s.step += 1
        s.steps_left -= 1
        out = s.rng.randint(*self.output_tokens)
        return Request(rid, s, now, s.tokens, out, s.system, s.system_tokens // BLOCK_SIZE, s.sid)

    def prefill_tokens_per_session(self, rng: random.Random, samples: int = 20_000) -> float:
        """Mean prompt tokens beyond the system prompt, summed over a session's
        steps: the work a router that ignores caches makes the nodes prefill
        (the system prompt is cached everywhere soon)."""
        total = 0
        for _ in range(samples):
            n, stream = rng.randint(*self.steps), 0
            for _ in range(n):
                stream += rng.randint(*self.observation_tokens)
                total += stream
                stream += (self.output_tokens[0] + self.output_tokens[1]) // 2
        return total / samples

    def think(self, s: Session) -> float:
        """How long the agent acts on a reply before its next step."""
        return s.rng.uniform(*self.think_s)


@dataclass(frozen=True)
class ChatWorkload:
    prompt_tokens: tuple[int, int] = (256, 4_096)
    output_tokens: tuple[int, int] = (50, 300)
    name: str = "chat"

    def request(self, rid: int, now: float, rng: random.Random) -> Request:
        return Request(
            rid,
            None,
            now,
            rng.randint(*self.prompt_tokens),
            rng.randint(*self.output_tokens),
            None,
            0,
            CHAT_NS | rid,
        )

    def prefill_tokens(self) -> float:
        return (self.prompt_tokens[0] + self.prompt_tokens[1]) / 2
