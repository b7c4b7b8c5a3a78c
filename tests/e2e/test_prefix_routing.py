"""Prefix-cache-aware routing on real daemons: a conversation entering at any
node is served where its prefix is cached, and a holder that restarts with an
empty cache publishes an empty summary as soon as its model is ready."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from node.cluster.prefix import SUMMARY_EVERY
from node.localcluster import LocalCluster

MODEL = "agent"
SPEC = f"{MODEL}=builtin:llm,size=tiny,kv_cache_bytes=16777216,cpu_threads=1"
NODES = ("n0", "n1", "n2")


def _entry(c: LocalCluster, observer: str, member: str) -> dict:  # type: ignore[type-arg]
    m = c.member(observer, member) or {}
    return dict(m.get("models", {}).get(MODEL, {}))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("prefix")) as c:
        c.start("n0", models=[SPEC])
        for n in NODES[1:]:
            c.start(n, models=[SPEC], join=["n0"])
        for n in NODES:
            c.wait_for(
                lambda n=n: all(_entry(c, n, m).get("state") == "ready" for m in NODES),
                120,
                f"every engine ready as {n} sees it",
            )
        yield c


def _chat(c: LocalCluster, node: str, messages: list[dict[str, str]]) -> tuple[str, dict, str]:  # type: ignore[type-arg]
    r = httpx.post(
        c.url(node, "/v1/chat/completions"),
        json={"model": MODEL, "messages": messages, "max_tokens": 4, "temperature": 0},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    return r.headers["x-rumor-served-by"], body["usage"], body["choices"][0]["message"]["content"]


def test_a_conversation_follows_its_cached_prefix_whichever_node_it_enters(
    cluster: LocalCluster,
) -> None:
    system = "You are a phone agent. Tap, swipe and type to finish the task. " * 12
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": "Turn on wifi."}]
    first, usage, reply = _chat(cluster, "n0", msgs)
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    for i, entry in enumerate(["n1", "n2", "n0", "n1"]):
        msgs += [
            {"role": "assistant", "content": reply},
            {"role": "user", "content": f"Screen {i}: the settings list, wifi off."},
        ]
        # Once the holder's summary has been published (SUMMARY_EVERY)
        # and gossiped, every node routes the next step there.
        time.sleep(SUMMARY_EVERY + 0.4)
        served, usage, reply = _chat(cluster, entry, msgs)
        assert served == first, (i, entry)
        assert usage["prompt_tokens_details"]["cached_tokens"] >= 0.8 * usage["prompt_tokens"]
    holder = _entry(cluster, "n2", first)["prefix"]
    assert holder["exact"] and holder["blocks"] > 0


def test_a_restarted_holder_publishes_an_empty_cache_when_ready(cluster: LocalCluster) -> None:
    holder = max(NODES, key=lambda n: _entry(cluster, "n1", n)["prefix"]["blocks"])
    observer = next(n for n in NODES if n != holder)
    assert _entry(cluster, observer, holder)["prefix"]["blocks"] > 0
    old = (cluster.member(observer, holder) or {})["generation"]
    cluster.kill(holder)
    cluster.start(holder, models=[SPEC], join=[observer])

    def restarted_and_ready() -> bool:
        m = cluster.member(observer, holder) or {}
        ready = m.get("models", {}).get(MODEL, {}).get("state") == "ready"
        return bool(m.get("generation", 0) > old and ready)

    cluster.wait_for(restarted_and_ready, 120, "the restarted holder's model ready")
    entry = _entry(cluster, observer, holder)
    assert entry.get("prefix", {}).get("blocks", 0) == 0  # the new record: nothing cached
