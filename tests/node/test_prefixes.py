"""The daemon's prefix halves (node/prefixes.py) on a real engine: the gossiped
summary follows the engine's KV events, a new engine publishes an empty cache
at the next poll, and the router hashes a prompt as the engine does."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

from gossip.core import GossipNode
from gossip.wire import KeyUpdate, NodeDelta
from inference.llm.client import open_in_process
from inference.llm.params import SamplingParams
from inference.llm.prefix import block_hashes
from node.cluster.prefix import PrefixRequest, SummaryCache
from node.cluster.view import GossipView
from node.prefixes import PrefixPublishers, PromptHasher, char_scheme

from ..inference.llm.conftest import llm_config

PARAMS = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)


class _Service:
    """The part of InferenceService that the publishers read."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm

    def models(self) -> dict[str, Any]:
        return {"t": SimpleNamespace(llm=self.llm)}

    def status(self, name: str) -> Any:
        return SimpleNamespace(llm=self.llm) if name == "t" else None


def _observer(values: dict[str, Any]) -> GossipNode:
    """A gossip node that knows one member, `n1`, holding `values`."""
    me = GossipNode("me", ("127.0.0.1", 1), rng=random.Random(0), now=0.0, generation=1)
    ups = tuple(KeyUpdate(k, i + 1, v) for i, (k, v) in enumerate(values.items()))
    me.warm_start([NodeDelta("n1", 1, ("127.0.0.1", 2), 0, ups, True)], 0.0)
    return me


def _record(pubs: PrefixPublishers, llm: Any) -> dict[str, Any]:
    entry = {
        "state": "ready", "kind": "llm", "block_size": llm.info.block_size,
        "hash": llm.info.hash_name, "hash_salt": llm.info.hash_salt, **pubs.entry_fields("t"),
    }  # fmt: skip
    return {"models": {"t": entry}, **pubs.record_keys()}


async def test_the_summary_follows_the_engine_and_a_new_engine_starts_empty() -> None:
    pubs = PrefixPublishers()
    prompt = list(range(5, 5 + 100))  # six full blocks of 16 and a tail
    async with open_in_process(llm_config()) as llm:
        service = _Service(llm)
        await pubs.poll(service, 5.0, 0.0)  # type: ignore[arg-type]
        assert pubs.entry_fields("t")["prefix"]["blocks"] == 0
        async for _ in llm.generate(prompt, PARAMS):
            pass
        await pubs.poll(service, 5.0, 0.5)  # type: ignore[arg-type]
        assert pubs.entry_fields("t")["prefix"]["blocks"] == 0  # not due yet: 1 s apart
        await pubs.poll(service, 5.0, 1.0)  # type: ignore[arg-type]
        rec = _record(pubs, llm)
        observer = _observer(rec)
        view = GossipView(observer, SummaryCache())
        found = view.prefix_summary("n1", "t")
        assert found is not None
        scheme, summary = found
        assert scheme == (llm.info.block_size, llm.info.hash_name, llm.info.hash_salt)
        # The engine's own block hashes of the prompt are all in the summary.
        ids = block_hashes(prompt, llm.info.block_size, llm.info.hash_salt)
        assert all(summary.held(h) for h in ids)
        req = PrefixRequest("t", len(prompt), {scheme: ids})
        assert req.matched_tokens(scheme, summary) == 6 * 16
        assert summary.exact and summary.blocks >= 6
    async with open_in_process(llm_config()) as fresh:  # a restarted engine
        await pubs.poll(_Service(fresh), 5.0, 1.2)  # type: ignore[arg-type]
        rec = _record(pubs, fresh)
        assert rec["models"]["t"]["prefix"]["blocks"] == 0
        assert all(v == b"" for k, v in rec.items() if k.startswith("px:"))


async def test_the_router_tokenizes_as_the_replicas_or_falls_back_to_characters() -> None:
    from inference.llm.tokenizer import builtin_tokenizer

    tok = builtin_tokenizer()
    entry = {
        "state": "ready", "kind": "llm", "block_size": 16, "hash": "blake2b-64-chain-v1",
        "hash_salt": "t", "prefix": {"tag": "x", "level": 0, "blocks": 0},
        "tokenizer": tok.fingerprint(),
    }  # fmt: skip
    messages = [{"role": "system", "content": "You are a phone agent. " * 30}]
    hasher = PromptHasher(_Service(None))  # type: ignore[arg-type]
    # No engine here, but the gossiped fingerprint is the built-in tokenizer's.
    req = hasher.request(_observer({"models": {"t": entry}}), "t", True, messages, "")
    assert req is not None
    ids = tok.encode_chat(messages)
    assert req.prompt_tokens == len(ids)
    assert list(req.chains[(16, "blake2b-64-chain-v1", "t")]) == block_hashes(ids, 16, "t")
    # An unknown tokenizer (an hf: model held elsewhere): character blocks.
    other = {**entry, "tokenizer": "0123456789abcdef"}
    req = hasher.request(_observer({"models": {"t": other}}), "t", True, messages, "")
    assert req is not None and list(req.chains) == [char_scheme("t")]
    assert hasher.routed_summary("n1", "t") is None
    hasher.note_routed("n1", req)
    found = hasher.routed_summary("n1", "t")
    assert found is not None
    assert req.matched_tokens(found[0], found[1]) > 0
    # No replica publishes a summary: nothing to hash.
    bare = {k: v for k, v in entry.items() if k != "prefix"}
    assert hasher.request(_observer({"models": {"t": bare}}), "t", True, messages, "") is None
