"""The daemon's prefix halves (node/prefixes.py) on a real engine and on a
fronted one: the gossiped summary follows the engine's KV events, a new engine
publishes an empty cache at the next poll, and the router hashes a prompt as
the engine does."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

from gossip.core import GossipNode
from gossip.wire import KeyUpdate, NodeDelta
from inference.llm.client import KVEvents, open_in_process
from inference.llm.params import SamplingParams
from inference.llm.prefix import HASH_NAME, block_hashes
from inference.remote.kv_wire import decode_event_batch
from inference.remote.prefix_state import RemotePrefixState
from node.cluster.prefix import PrefixRequest, SummaryCache
from node.cluster.view import GossipView
from node.prefixes import PrefixPublishers, PromptHasher, char_scheme

from ..fakes.fake_kv import cleared, encode_batch, stored
from ..inference.llm.conftest import llm_config

PARAMS = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)


class _Service:
    """The part of InferenceService that the publishers read: model `t`, on a
    built-in engine (`llm`) or a fronted one (`remote`)."""

    def __init__(self, llm: Any, remote: Any = None) -> None:
        self.llm, self.remote = llm, remote

    def models(self) -> dict[str, Any]:
        return {"t": self.status("t")}

    def status(self, name: str) -> Any:
        if name != "t":
            return None
        return SimpleNamespace(llm=self.llm, remote=self.remote, llm_stats=None)


class _Fronted:
    """A RemoteEngine's KV feed without the processes: its prefix state fed
    the engine's decoded KV-event batches."""

    def __init__(self, hash_name: str = HASH_NAME, tokenizer: Any = None) -> None:
        self.prefix_state = RemotePrefixState(16, salt="t")
        self.info = SimpleNamespace(block_size=16, hash_name=hash_name, hash_salt="t")
        self.tokenizer = tokenizer
        self.snapshots = 0  # cached_block_hashes() calls: resyncs

    def apply(self, *events: object) -> None:
        self.prefix_state.apply(decode_event_batch(encode_batch(list(events))))

    async def kv_events_since(self, cursor: int) -> KVEvents:
        return self.prefix_state.kv_events_since(cursor)

    async def cached_block_hashes(self) -> list[int]:
        self.snapshots += 1
        return self.prefix_state.cached_block_hashes()


def _observer(values: dict[str, Any]) -> GossipNode:
    """A gossip node that knows one member, `n1`, holding `values`."""
    me = GossipNode("me", ("127.0.0.1", 1), rng=random.Random(0), now=0.0, generation=1)
    ups = tuple(KeyUpdate(k, i + 1, v) for i, (k, v) in enumerate(values.items()))
    me.warm_start([NodeDelta("n1", 1, ("127.0.0.1", 2), 0, ups, True)], 0.0)
    return me


def _summary(pubs: PrefixPublishers, engine: Any) -> Any:
    """`t`'s summary as a router elsewhere decodes it from the gossiped record."""
    found = GossipView(_observer(_record(pubs, engine)), SummaryCache()).prefix_summary("n1", "t")
    assert found is not None
    return found


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


async def test_a_fronted_engines_kv_events_reach_the_summary_and_a_gap_resyncs() -> None:
    pubs = PrefixPublishers()
    fronted = _Fronted()
    service = _Service(None, fronted)
    fronted.apply(cleared())  # the engine's first batch: its history is known
    first = list(range(200, 200 + 100))  # six full blocks of 16 and a tail
    await pubs.poll(service, 5.0, 0.0)  # type: ignore[arg-type]
    assert pubs.entry_fields("t")["prefix"]["blocks"] == 0  # a new engine: at once
    assert pubs.entry_fields("t")["tokenizer"] is None  # no `tokenizer=` option
    fronted.apply(stored([1, 2, 3, 4, 5, 6], None, first[:96], 16))
    await pubs.poll(service, 5.0, 1.0)  # type: ignore[arg-type]
    scheme, summary = _summary(pubs, fronted)
    assert scheme == (16, HASH_NAME, "t")
    chain = block_hashes(first, 16, "t")  # what a router computes from the token ids
    assert summary.exact and summary.blocks == 6 and all(summary.held(h) for h in chain)
    assert PrefixRequest("t", len(first), {scheme: chain}).matched_tokens(scheme, summary) == 96
    snapshots = fronted.snapshots
    # Events were lost (the subscriber could not fill a gap): the feed says
    # incomplete, and the summary is rebuilt from the engine's cached blocks.
    fronted.prefix_state.reset("a gap the replay could not fill")
    second = list(range(500, 500 + 32))
    fronted.apply(stored([11, 12], None, second, 16))
    await pubs.poll(service, 5.0, 2.0)  # type: ignore[arg-type]
    assert fronted.snapshots == snapshots + 1
    _, summary = _summary(pubs, fronted)
    assert summary.blocks == 2 and all(summary.held(h) for h in block_hashes(second, 16, "t"))
    assert not any(summary.held(h) for h in chain)
    # A new engine object (the engine restarted): followed from scratch.
    fresh = _Fronted()
    await pubs.poll(_Service(None, fresh), 5.0, 2.1)  # type: ignore[arg-type]
    assert fresh.snapshots == 1
    rec = _record(pubs, fresh)
    assert rec["models"]["t"]["prefix"]["blocks"] == 0
    assert all(v == b"" for k, v in rec.items() if k.startswith("px:"))


async def test_a_fronted_engine_without_usable_kv_events_publishes_no_summary() -> None:
    pubs = PrefixPublishers()
    mismatch = _Fronted(hash_name="")  # e.g. the engine's block size is not the config's
    await pubs.poll(_Service(None, mismatch), 5.0, 0.0)  # type: ignore[arg-type]
    assert pubs.entry_fields("t") == {} and pubs.record_keys() == {} and mismatch.snapshots == 0
    no_events = _Fronted()
    no_events.prefix_state = None  # type: ignore[assignment]  # no kv_events= in the spec
    await pubs.poll(_Service(None, no_events), 5.0, 0.0)  # type: ignore[arg-type]
    assert pubs.entry_fields("t") == {}


def test_the_router_uses_a_fronted_engines_tokenizer_here() -> None:
    from inference.llm.tokenizer import builtin_tokenizer

    tok = builtin_tokenizer()
    hasher = PromptHasher(_Service(None, _Fronted(tokenizer=tok)))  # type: ignore[arg-type]
    assert hasher.tokenizer("t", None) is tok
    bare = PromptHasher(_Service(None, _Fronted()))  # type: ignore[arg-type]
    assert bare.tokenizer("t", None) is None  # no `tokenizer=`: the character fallback
