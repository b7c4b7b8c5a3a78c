"""Any request to a running daemon (any path, method, headers and body) gets
an answer, and never a 5xx other than 503 (a 503 says "not now, retry"): a
client's mistake is a 4xx and never the server's fault.

The daemon runs in this process with its real HTTP server on loopback
(tests/node/inprocess.py), serving the built-in `mlp`, so inference bodies
reach the model and catalog writes reach placement.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from node.config import NodeConfig
from tests.waiting import wait_for

from .inprocess import served_in_thread
from .test_http_input import JSON, TENSOR

METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
MODEL = st.one_of(st.sampled_from(["mlp", "nope", "m"]), st.text(min_size=1, max_size=12))
SEGMENT = st.text(max_size=12).map(lambda s: urllib.parse.quote(s, safe=""))


def encoded(values: st.SearchStrategy[object]) -> st.SearchStrategy[bytes]:
    return values.map(lambda v: json.dumps(v).encode())


GARBAGE = st.one_of(st.binary(max_size=256), encoded(JSON))
SPEC = st.fixed_dictionaries(
    {"name": MODEL, "source": st.sampled_from(["builtin:mlp", "builtin:nope", "x:y", ""])},
    optional={"max_batch_size": JSON | st.integers(), "device": st.sampled_from(["cpu", "tpu"])},
)
#: The body each route expects, nearly right: what reaches its handler's checks.
SHAPED = {
    "infer": encoded(st.lists(TENSOR, max_size=2).map(lambda ts: {"inputs": ts})),
    "spec": encoded(SPEC),
    "replicas": encoded(st.fixed_dictionaries({"replicas": JSON | st.integers()})),
    "tags": encoded(st.dictionaries(st.text(max_size=8), st.text(max_size=8) | JSON, max_size=4)),
    "openai": encoded(
        st.fixed_dictionaries(
            {"model": MODEL},
            optional={
                "messages": st.lists(
                    st.fixed_dictionaries(
                        {"role": st.sampled_from(["user", "system", "x"]), "content": JSON}
                    ),
                    max_size=3,
                )
                | JSON,
                "prompt": st.text(max_size=40) | JSON,
                "max_tokens": st.integers(-5, 10**7) | JSON,
                "temperature": JSON | st.floats(allow_nan=True),
                "stream": JSON,
                "stop": JSON,
            },
        )
    ),
    "none": st.just(b""),
}
#: Every route the app serves: method, path ({m}: a model name), body kind.
ROUTES = [
    ("GET", "/v2/health/live", "none"), ("GET", "/v2/health/ready", "none"),
    ("GET", "/v2", "none"), ("GET", "/v2/models/{m}", "none"),
    ("GET", "/v2/models/{m}/ready", "none"), ("POST", "/v2/models/{m}/infer", "infer"),
    ("PUT", "/v1/node/tags", "tags"), ("GET", "/v1/catalog", "none"),
    ("POST", "/v1/catalog", "spec"), ("DELETE", "/v1/catalog/{m}", "none"),
    ("PUT", "/v1/catalog/{m}/replicas", "replicas"), ("GET", "/v1/cluster", "none"),
    ("GET", "/v1/cluster/prefix/{m}", "none"), ("GET", "/v1/events", "none"),
    ("GET", "/metrics", "none"), ("GET", "/ui", "none"),
    ("GET", "/v1/models", "none"), ("POST", "/v1/completions", "openai"),
    ("POST", "/v1/chat/completions", "openai"),
]  # fmt: skip


def path_of(route: str, model: str) -> str:
    return route.replace("{m}", urllib.parse.quote(model, safe=""))


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, bytes]:
    """Mostly a route with its own method and a nearly right body; else anything."""
    method, route, kind = draw(st.sampled_from(ROUTES))
    path = path_of(route, draw(MODEL))
    if draw(st.integers(0, 9)) == 0:
        method = draw(st.sampled_from(METHODS))
    if draw(st.integers(0, 9)) == 0:
        path = "/" + "/".join(draw(st.lists(SEGMENT, min_size=1, max_size=5)))
    body = draw(st.one_of(SHAPED[kind], GARBAGE) if kind != "none" else GARBAGE)
    return method, path, body


HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "content-type": st.sampled_from(["application/json", "text/plain", "x/y"]),
        "x-rumor-forwarded": st.sampled_from(["1", "0", "", "yes"]),
        "x-rumor-final-attempt": st.sampled_from(["1", "0"]),
        "x-rumor-trace-id": st.text(
            st.characters(min_codepoint=33, max_codepoint=126), max_size=40
        ),
        "authorization": st.sampled_from(["Bearer x", "Basic eA==", ""]),
    },
)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, str]]:
    data = tmp_path_factory.mktemp("fuzz-node")
    cfg = NodeConfig(
        name="fuzz",
        log_level="error",
        data_dir=str(Path(data) / "data"),
        models=("mlp=builtin:mlp",),
        request_timeout=10.0,
    )
    with served_in_thread(cfg) as (_daemon, http), httpx.Client(timeout=30) as client:
        base = f"http://{http}"
        wait_for(
            lambda: client.get(f"{base}/v2/models/mlp/ready").status_code == 200,
            60,
            "mlp ready",
        )
        yield client, base


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(request=requests(), headers=HEADERS)
def test_no_request_gets_a_5xx_other_than_503(
    node: tuple[httpx.Client, str], request: tuple[str, str, bytes], headers: dict[str, str]
) -> None:
    client, base = node
    method, path, body = request
    # Streamed: /v1/events answers with an endless stream; its status is enough.
    with client.stream(method, base + path, content=body, headers=headers) as r:
        event(f"{r.status_code}")
        if r.status_code >= 500 and r.status_code != 503:
            r.read()
            raise AssertionError(f"{method} {path} -> {r.status_code}: {r.text[:300]}")
