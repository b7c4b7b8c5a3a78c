"""The daemon's two halves of prefix-aware routing (node/cluster/prefix.py):

* `PrefixPublishers`: what this node's engines cache, as gossiped summaries.
  For each LLM held here, once per publish interval, it reads the engine's KV
  events (`kv_events_since`) into a SummaryPublisher, and publishes the
  summary's changes at most every SUMMARY_EVERY; a new engine (a reload, a
  restart) starts from its cache snapshot, and its fresh, empty summary is
  published at once. A built-in engine without KV events is summarised
  from the prompts this node served (approximate). An engine the node fronts
  (vLLM, SGLang: inference/remote) is followed the same way when its KV
  events are configured and its blocks translate to rumor's hashes
  (`info.hash_name`); without them it publishes no summary.
* `PromptHasher`: a request's block-hash chain, as the replicas' engines
  would compute it, for the router. Tokenized with the model's tokenizer: a
  local engine's, or the built-in one when the gossiped tokenizer fingerprint
  says it is the same. Without the tokenizer (an `hf:` model held only on
  other nodes) it falls back to chained hashes of 64-character blocks of the
  prompt text, matched against the prompts this router sent to each replica
  (llm-d's approximate prefix scorer does the same).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import trio

from .cluster.prefix import (
    SUMMARY_EVERY,
    PrefixRequest,
    Scheme,
    ServedPrefixes,
    Summary,
    SummaryPublisher,
    scheme_of,
)
from .cluster.view import model_info

if TYPE_CHECKING:
    from gossip.core import GossipNode
    from inference.llm.client import KVEvents
    from inference.llm.tokenizer import LLMTokenizer
    from inference.service import InferenceService, ModelStatus

log = logging.getLogger("rumor.node")

#: The fallback scheme: 64-character blocks count as 16 tokens (about 4
#: characters a token), so matches compare with token-block matches.
CHAR_BLOCK = 64
CHAR_SCHEME_NAME = "chars64-blake2b"
#: Blocks of routed prompts remembered per replica in the fallback.
ROUTED_BLOCKS = 8_192


class BlockHashing(Protocol):
    """How an engine's blocks are hashed (ModelInfo, RemoteEngineInfo)."""

    @property
    def block_size(self) -> int: ...

    @property
    def hash_salt(self) -> str: ...


class KVFeed(Protocol):
    """An engine whose prefix-cache changes can be followed: the built-in
    engine's LLMClient, or a fronted engine's RemoteEngine (which re-hashes
    the engine's KV events into rumor's chain hashes)."""

    @property
    def info(self) -> BlockHashing: ...

    async def kv_events_since(self, cursor: int) -> KVEvents: ...

    async def cached_block_hashes(self) -> list[int]: ...


class _Followed:
    """One local LLM engine and the summary of its cache."""

    def __init__(self, model: str, engine: KVFeed, kv_blocks: int, tokenizer: str | None) -> None:
        self.engine = engine
        self.cursor = 0
        self.synced = False
        self.events = True  # False: the engine has no KV events; summarise what we served
        self.summary = SummaryPublisher(model, kv_blocks=kv_blocks)
        self.served = ServedPrefixes(self.summary, kv_blocks or ROUTED_BLOCKS)
        self.tokenizer = tokenizer
        self.published_at = -SUMMARY_EVERY  # a new engine's summary goes out at once
        self.header: dict[str, Any] = self.summary.header()
        self.keys: dict[str, bytes] = {}

    def publish(self, now: float) -> None:
        """Take the summary's slots and header as published (together: a level
        change rewrites both), if SUMMARY_EVERY has passed."""
        if now - self.published_at < SUMMARY_EVERY:
            return
        self.published_at = now
        self.summary.changes()
        self.keys = self.summary.published()
        self.header = self.summary.header()


class PrefixPublishers:
    def __init__(self) -> None:
        self._models: dict[str, _Followed] = {}

    async def poll(self, inference: InferenceService, timeout: float, now: float) -> None:
        """Bring every local LLM's summary up to date (at most `timeout` s: a
        stuck engine must not stall the publish loop), and take what is due
        for publishing."""
        live = {}
        for name, status in inference.models().items():
            engine = _kv_feed(status)
            if engine is None:
                continue
            f = self._models.get(name)
            if f is None or f.engine is not engine:
                f = _new_follower(name, status, engine)
            live[name] = f
        self._models = live
        with trio.move_on_after(timeout):
            for f in live.values():
                await self._follow(f)
        for f in live.values():
            f.publish(now)

    async def _follow(self, f: _Followed) -> None:
        from inference.errors import EngineDeadError

        if not f.events:
            return
        try:
            ev = await f.engine.kv_events_since(f.cursor)
            if not f.synced or not ev.complete:
                snapshot = await f.engine.cached_block_hashes()
                after = await f.engine.kv_events_since(ev.cursor)
                f.summary.reset(snapshot)
                ev = after
                f.synced = True
            # Stored before removed: a block both evicted and recomputed within
            # one poll reads as absent, the safe error (it attracts nothing).
            f.summary.stored(ev.stored)
            f.summary.removed(ev.removed)
            f.cursor = ev.cursor
        except NotImplementedError:
            f.events = False
            f.summary.exact = False
            log.info("engine of %s has no KV events: summarising served prompts", f.summary.model)
        except (EngineDeadError, OSError):
            pass  # the service marks the model failed; its entry goes with it

    def served(self, model: str, token_ids: Sequence[int]) -> None:
        """A prompt served here (feeds the approximate summary of an engine
        without KV events; a no-op otherwise)."""
        f = self._models.get(model)
        if f is None or f.events:
            return
        from inference.llm.prefix import block_hashes

        info = f.engine.info
        f.served.served(block_hashes(token_ids, info.block_size, info.hash_salt))

    def entry_fields(self, model: str) -> dict[str, Any]:
        """What goes into `model`'s entry in the record: the summary's header
        and the tokenizer's fingerprint (routers elsewhere check theirs)."""
        f = self._models.get(model)
        if f is None:
            return {}
        return {"prefix": f.header, "tokenizer": f.tokenizer}

    def record_keys(self) -> dict[str, bytes]:
        """Every summary slot key of every local LLM, as last published."""
        out: dict[str, bytes] = {}
        for f in self._models.values():
            out.update(f.keys)
        return out


class PromptHasher:
    """Block-hash chains of prompts, for the router (see the module docstring)."""

    def __init__(self, inference: InferenceService) -> None:
        self.inference = inference
        self._builtin: tuple[str, LLMTokenizer] | None = None
        #: Fallback: per replica, the character blocks of prompts we sent it.
        self.routed: dict[tuple[str, str], ServedPrefixes] = {}
        self._fallback_said: set[str] = set()

    def tokenizer(self, model: str, fingerprint: object) -> LLMTokenizer | None:
        """A tokenizer that yields the replicas' token ids, or None."""
        status = self.inference.status(model)
        if status is not None and status.llm is not None:
            return status.llm.tokenizer
        if status is not None and status.remote is not None and status.remote.tokenizer:
            return status.remote.tokenizer  # the `tokenizer=` option: the engine's own
        if not isinstance(fingerprint, str):
            return None
        if self._builtin is None:
            from inference.llm.tokenizer import builtin_tokenizer

            tok = builtin_tokenizer()
            self._builtin = (tok.fingerprint(), tok)
        return self._builtin[1] if self._builtin[0] == fingerprint else None

    def request(
        self, node: GossipNode, model: str, chat: bool, messages: list[dict[str, Any]], prompt: str
    ) -> PrefixRequest | None:
        """The request's chain under every scheme its replicas gossip; None if
        no replica of `model` publishes a summary."""
        from inference.llm.prefix import block_hashes

        entries = []
        for name in sorted(node.members):
            entry = model_info(node.record(name), model)
            if entry is not None and isinstance(entry.get("prefix"), dict):
                entries.append(entry)
        if not entries:
            return None
        tok = None
        for e in entries:
            tok = self.tokenizer(model, e.get("tokenizer"))
            if tok is not None:
                break
        if tok is None:
            if model not in self._fallback_said:
                self._fallback_said.add(model)
                log.info(
                    "no tokenizer for %s here: routing its requests on 64-character "
                    "blocks of the prompts this node sent to each replica",
                    model,
                )
            text = _render(messages) if chat else prompt
            chain = char_block_hashes(text, model)
            return PrefixRequest(model, max(1, len(text) // 4), {char_scheme(model): chain})
        try:
            ids = tok.encode_chat(messages) if chat else tok.encode(prompt)
        except Exception:  # the serving node answers the client's error; route on load
            return None
        chains: dict[Scheme, Sequence[int]] = {}
        for e in entries:
            scheme = scheme_of(e)
            if scheme is not None and scheme not in chains:
                chains[scheme] = block_hashes(ids, scheme[0], scheme[2])
        return PrefixRequest(model, len(ids), chains)

    def note_routed(self, target: str, prefix: PrefixRequest) -> None:
        """Remember a fallback request's character blocks at its replica."""
        scheme = char_scheme(prefix.model)
        chain = prefix.chains.get(scheme)
        if chain is None:
            return
        key = (target, prefix.model)
        routed = self.routed.get(key)
        if routed is None:
            summary = SummaryPublisher(prefix.model, kv_blocks=ROUTED_BLOCKS, exact=False)
            routed = self.routed[key] = ServedPrefixes(summary, ROUTED_BLOCKS)
        routed.served(chain)

    def routed_summary(self, name: str, model: str) -> tuple[Scheme, Summary] | None:
        routed = self.routed.get((name, model))
        return (char_scheme(model), routed.summary.snapshot()) if routed is not None else None


class FallbackView:
    """The router's own record of where it sent which prompt texts, as a
    PrefixView (used when the model's tokenizer is not here)."""

    def __init__(self, hasher: PromptHasher) -> None:
        self.hasher = hasher

    def prefix_summary(self, name: str, model: str) -> tuple[Scheme, Summary] | None:
        return self.hasher.routed_summary(name, model)


def _kv_feed(status: ModelStatus) -> KVFeed | None:
    """The model's engine if its cache can be followed here: the built-in
    engine, or a fronted one with KV events whose blocks rumor can re-hash."""
    if status.llm is not None:
        return status.llm
    remote = status.remote
    if remote is not None and remote.prefix_state is not None and remote.info.hash_name:
        return remote
    return None


def _new_follower(name: str, status: ModelStatus, engine: KVFeed) -> _Followed:
    if status.llm is not None:
        return _Followed(
            name, engine, status.llm.info.kv_blocks_total, status.llm.tokenizer.fingerprint()
        )
    assert status.remote is not None
    # A fronted engine's pool size is known once /metrics was scraped; 0
    # (unknown) only means the summary tracks every sampled hash it is told.
    kv_blocks = status.llm_stats.kv_blocks_total if status.llm_stats is not None else 0
    tok = status.remote.tokenizer
    return _Followed(name, engine, kv_blocks, tok.fingerprint() if tok is not None else None)


def char_scheme(model: str) -> Scheme:
    return (16, CHAR_SCHEME_NAME, model)


def char_block_hashes(text: str, salt: str) -> list[int]:
    """Chained BLAKE2b-64 hashes of the text's full 64-character blocks."""
    out = []
    parent = hashlib.blake2b(b"rumor-chars-v1" + salt.encode(), digest_size=8).digest()
    for start in range(0, len(text) - CHAR_BLOCK + 1, CHAR_BLOCK):
        parent = hashlib.blake2b(
            parent + text[start : start + CHAR_BLOCK].encode(), digest_size=8
        ).digest()
        out.append(int.from_bytes(parent, "little"))
    return out


def _render(messages: list[dict[str, Any]]) -> str:
    """Messages as plain text, in order (only for the character fallback)."""
    parts = []
    for m in messages:
        content = m.get("content", "")
        if not isinstance(content, str):
            content = str(content)
        parts.append(f"{m.get('role', '')}: {content}\n")
    return "".join(parts)
