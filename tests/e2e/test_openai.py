"""The OpenAI-compatible API against a 3-daemon cluster, with the official
`openai` client: any node answers, streams pass through a node that does not
hold the model, errors are OpenAI's, and a client that leaves frees its KV
blocks on the serving node."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import openai
import pytest

from node.localcluster import LocalCluster

MODEL = "chat"
SPEC = f"{MODEL}=builtin:llm,size=tiny"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("openai")) as c:
        c.start("n0", models=[SPEC])
        c.start("n1", join=["n0"])
        c.start("n2", join=["n0"])
        for n in ("n0", "n1", "n2"):
            c.wait_for(
                lambda n=n: any(
                    m["name"] == "n0" and m["models"].get(MODEL, {}).get("state") == "ready"
                    for m in c.view(n)["members"]
                ),
                90,
                f"{MODEL} ready as {n} sees it",
            )
        yield c


def client(c: LocalCluster, node: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=c.url(node, "/v1"), api_key="unused", max_retries=0, timeout=60)


def test_models_are_listed_by_every_node(cluster: LocalCluster) -> None:
    for node in ("n0", "n1", "n2"):
        ids = [m.id for m in client(cluster, node).models.list()]
        assert MODEL in ids


def test_completion_and_chat_through_a_node_without_the_model(cluster: LocalCluster) -> None:
    c = client(cluster, "n2")
    r = c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=0)
    assert r.object == "text_completion" and r.choices[0].finish_reason in ("length", "stop")
    assert r.usage is not None and r.usage.completion_tokens >= 1
    again = c.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=0
    )
    assert again.choices[0].text == r.choices[0].text  # greedy: the same tokens
    raw = c.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=5,
        seed=3,
    )
    assert raw.headers["x-rumor-served-by"] == "n0"
    chat = raw.parse()
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    assert chat.usage is not None and chat.usage.prompt_tokens > 0


def test_chat_streams_chunk_by_chunk_with_usage(cluster: LocalCluster) -> None:
    stream = client(cluster, "n1").chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count with me"}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
        temperature=0,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    finished = [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert len(finished) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (
        chunks[-1].usage.completion_tokens == 12 or finished[0].choices[0].finish_reason == "stop"
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text  # the tiny random model says something


def test_errors_are_openais(cluster: LocalCluster) -> None:
    c = client(cluster, "n2")
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="non-empty"):
        c.chat.completions.create(model=MODEL, messages=[])
    with pytest.raises(openai.BadRequestError, match="exceeds"):
        c.completions.create(model=MODEL, prompt="hi", max_tokens=10**6)
    with pytest.raises(openai.BadRequestError, match="context"):
        c.completions.create(model=MODEL, prompt="word " * 6000, max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="unknown field"):
        c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], extra_body={"bogus": 1}
        )
    r = httpx.post(
        cluster.url("n2", "/v1/chat/completions"),
        content=b'{"model": "chat", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def _engine(c: LocalCluster, observer: str) -> dict:
    for m in c.view(observer)["members"]:
        if m["name"] == "n0":
            return dict(m["models"][MODEL])
    raise AssertionError("n0 not seen")


def test_a_client_that_disconnects_mid_stream_frees_its_kv_blocks(cluster: LocalCluster) -> None:
    c = cluster
    c.wait_for(lambda: _engine(c, "n0")["running"] == 0, 30, "n0 idle")
    base = _engine(c, "n0")["kv_used"]
    aborts = _aborts(c)
    host, _, port = c.http("n2").rpartition(":")
    body = json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "a long story " * 50}],
            "max_tokens": 2000,
            "stream": True,
            "temperature": 1.0,
        }
    ).encode()
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        got = b""
        while got.count(b"data: ") < 3:  # generation is under way
            got += s.recv(65536)
        c.wait_for(lambda: _engine(c, "n0")["running"] == 1, 10, "the request running on n0")
    # The client is gone: n2 closes its hop to n0, and n0 aborts the request.
    c.wait_for(
        lambda: _engine(c, "n0")["running"] == 0 and _engine(c, "n0")["kv_used"] == base,
        15,
        "n0 to drop the request and free its blocks",
    )
    c.wait_for(lambda: _aborts(c) == aborts + 1, 5, "the engine to count one abort")


def _aborts(c: LocalCluster) -> float:
    for line in httpx.get(c.url("n0", "/metrics"), timeout=5).text.splitlines():
        if line.startswith('rumor:request_aborts_total{model_name="chat"}'):
            return float(line.split()[-1])
    raise AssertionError("no abort counter")


def test_rumor_chat_streams_a_reply_and_keeps_a_conversation(cluster: LocalCluster) -> None:
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "node.cli", "chat", "--http", cluster.http("n2"), MODEL]
    one = subprocess.run(
        [*cmd, "hello", "--max-tokens", "4", "--seed", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert one.returncode == 0, one.stderr
    assert one.stdout.endswith("\n") and one.stdout.strip()
    two = subprocess.run(
        [*cmd, "--max-tokens", "3"],
        input="first\nsecond\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("\n") >= 2  # a reply (and its newline) per message
    bad = subprocess.run(
        [*cmd, "x", "--max-tokens", "0"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 1 and "400" in bad.stderr
