"""Daemons beside engines they do not run (issue #16): two daemons front two
fake vLLM servers, a third holds nothing and routes to them. The engines' KV
events reach every node's gossiped prefix state."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from inference.llm.prefix import HASH_NAME, block_hashes
from node.cluster.prefix import SUMMARY_EVERY, PrefixRequest, Summary
from node.config import NodeConfig
from node.localcluster import ROOT, LocalCluster, read_line

MODEL = "m"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Engine:
    """A fake vLLM server as a process (tests/fakes/fake_engine.py)."""

    def __init__(self) -> None:
        self.port, self.kv, self.replay = _free_port(), _free_port(), _free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.fake_engine", "--port", str(self.port),
             "--kind", "vllm", "--served-name", "served-m", "--kv-events-port", str(self.kv),
             "--kv-replay-port", str(self.replay), "--ttft", "0.02", "--itl", "0.005"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            start_new_session=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = read_line(self.proc.stdout, 30)
        assert line.startswith("READY"), line

    @property
    def spec(self) -> str:
        return (
            f"{MODEL}=vllm+http://127.0.0.1:{self.port},served_name=served-m,"
            f"kv_events=tcp://127.0.0.1:{self.kv},kv_events_replay=tcp://127.0.0.1:{self.replay}"
        )

    def control(self, **settings: object) -> None:
        r = httpx.post(f"http://127.0.0.1:{self.port}/fake/control", json=settings, timeout=5)
        r.raise_for_status()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[LocalCluster, list[Engine]]]:
    engines: list[Engine] = []
    try:
        engines = [Engine(), Engine()]
        with LocalCluster(tmp_path) as c:
            c.start("e0", models=[engines[0].spec])
            c.start("e1", models=[engines[1].spec], join=["e0"])
            c.start("r", join=["e0"])
            for n in ("e0", "e1", "r"):
                c.wait_for(
                    lambda n=n: _ready(c, n) == {"e0", "e1"}, 30, f"both engines ready at {n}"
                )
            yield c, engines
    finally:
        for e in engines:
            e.kill()


def _ready(c: LocalCluster, observer: str) -> set[str]:
    return {
        m["name"]
        for m in c.view(observer)["members"]
        if m["status"] == "alive" and m["models"].get(MODEL, {}).get("state") == "ready"
    }


def _chat(c: LocalCluster, node: str, stream: bool = False) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    if stream:
        body["stream"] = True
    return httpx.post(c.url(node, "/v1/chat/completions"), json=body, timeout=30)


def test_the_busier_engine_gets_less_traffic(fleet: tuple[LocalCluster, list[Engine]]) -> None:
    c, engines = fleet
    engines[0].control(load={"running": 60, "waiting": 40})  # e0's engine is swamped
    c.wait_for(
        lambda: (
            next(m for m in c.view("r")["members"] if m["name"] == "e0")["models"][MODEL].get(
                "waiting"
            )
            == 40
        ),
        10,
        "e0's engine load, scraped from its /metrics, gossiped to r",
    )
    served: Counter[str] = Counter()
    for _ in range(40):
        r = _chat(c, "r")
        assert r.status_code == 200, r.text
        assert r.json()["model"] == MODEL  # the served name mapped back
        served[r.headers["x-rumor-served-by"]] += 1
    assert served["e1"] > 3 * served["e0"], served


def test_a_killed_engine_is_routed_around_with_no_failed_request(
    fleet: tuple[LocalCluster, list[Engine]],
) -> None:
    c, engines = fleet
    ok = failed = 0
    for i in range(60):
        if i == 10:
            engines[0].kill()
        r = _chat(c, "r", stream=(i % 2 == 0))
        if r.status_code == 200:
            ok += 1
        else:
            failed += 1
    assert failed == 0 and ok == 60
    # ...and the model on e0 is marked not ready within two gossip intervals
    # (plus the time to gossip it), so the routers stop trying it.
    c.wait_for(lambda: _ready(c, "r") == {"e1"}, 5, "e0's model not ready, as r sees it")


def test_garbage_metrics_and_a_hung_stream_do_not_hurt_the_daemon(
    fleet: tuple[LocalCluster, list[Engine]],
) -> None:
    c, engines = fleet
    engines[0].control(metrics="garbage")
    engines[1].control(metrics="garbage")
    for _ in range(6):
        assert _chat(c, "r").status_code == 200
    assert "falling back to the daemon's in-flight count" in c.log("e0")
    engines[0].control(hang_after_chunks=1)
    engines[1].control(hang_after_chunks=1)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            c.url("e0", "/v1/chat/completions"),
            json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True},
            timeout=3,
        )
    for n in ("e0", "e1", "r"):
        assert c.nodes[n].running()
        assert httpx.get(c.url(n, "/v2/health/live"), timeout=5).status_code == 200


#: The fake engine's tokens are the prompt's UTF-8 bytes; 16-token blocks.
BLOCK = 16
#: From a block cached at the engine to its block in every node's gossiped
#: summary: the subscriber applies it at once, the daemon polls the feed every
#: publish interval and publishes the summary at most every SUMMARY_EVERY,
#: then one gossip interval spreads it. With 3x headroom.
SPREAD_S = 3 * (SUMMARY_EVERY + 2 * NodeConfig.interval)


def _complete(c: LocalCluster, node: str, prompt: str) -> str:
    """A completion entering at `node`; returns the node that served it."""
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 2}
    r = httpx.post(c.url(node, "/v1/completions"), json=body, timeout=30)
    assert r.status_code == 200, r.text
    return str(r.headers["x-rumor-served-by"])


def _held_tokens(c: LocalCluster, observer: str, holder: str, prompt: str) -> int:
    """The prompt's tokens `observer`'s routers believe `holder`'s engine holds:
    the request's chain, hashed as a router with the engine's tokenizer hashes
    it, matched against `holder`'s summary as gossiped to `observer`."""
    view = httpx.get(c.url(observer, f"/v1/cluster/prefix/{MODEL}"), timeout=5).json()
    found = view["members"].get(holder)
    if found is None:
        return 0
    scheme = (found["block_size"], found["hash"], found["hash_salt"])
    assert scheme == (BLOCK, HASH_NAME, MODEL)  # the salt is the model's rumor name
    summary = Summary(found["level"], frozenset(found["fingerprints"]), found["blocks"])
    ids = list(prompt.encode())
    req = PrefixRequest(MODEL, len(ids), {scheme: block_hashes(ids, BLOCK, MODEL)})
    return req.matched_tokens(scheme, summary)


def _spread(c: LocalCluster, holder: str, prompt: str) -> float:
    """Seconds until every node sees all the prompt's full blocks at `holder`."""
    full = len(prompt.encode()) // BLOCK * BLOCK
    return c.wait_for(
        lambda: all(_held_tokens(c, n, holder, prompt) == full for n in ("e0", "e1", "r")),
        SPREAD_S,
        f"the prompt's {full // BLOCK} blocks in {holder}'s summary at every node",
    )


def test_kv_events_of_a_fronted_engine_reach_every_nodes_prefix_state(
    fleet: tuple[LocalCluster, list[Engine]],
) -> None:
    c, _ = fleet
    prompt = "You are a phone agent. Tap, swipe and type to finish the task. " * 4
    holder = _complete(c, "r", prompt)
    assert holder in ("e0", "e1")
    _spread(c, holder, prompt)
    other = "e1" if holder == "e0" else "e0"
    assert _held_tokens(c, "r", other, prompt) == 0  # the other engine never saw it
    entry = (c.member("r", holder) or {})["models"][MODEL]
    assert entry["prefix"]["exact"] and entry["prefix_state"] == "exact"


def test_garbage_kv_events_reset_the_summary_and_the_daemon_goes_on(
    fleet: tuple[LocalCluster, list[Engine]],
) -> None:
    c, engines = fleet
    before = "A conversation before the engine's publisher broke down. " * 3
    holder = _complete(c, "r", before)
    _spread(c, holder, before)
    engines[int(holder[1])].control(kv_garbage=True)
    # The events between are unknown: the summary empties (a stale block could
    # misroute; a missing one only costs affinity) and the state is partial.
    c.wait_for(
        lambda: all(_held_tokens(c, n, holder, before) == 0 for n in ("e0", "e1", "r")),
        SPREAD_S,
        f"{holder}'s summary emptied at every node",
    )
    entry = (c.member("r", holder) or {})["models"][MODEL]
    assert entry["prefix_state"].startswith("partial")
    for n in ("e0", "e1", "r"):
        assert c.nodes[n].running()
    # The next blocks the engine caches are followed again.
    after = "A conversation after the engine's publisher broke down. " * 3
    for _ in range(10):  # until the router sends it to the same engine
        if _complete(c, holder, after) == holder:
            break
    else:
        pytest.fail(f"{holder} never served a request entering at {holder}")
    _spread(c, holder, after)
