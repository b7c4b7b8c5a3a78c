"""The model name: rewritten on the way in, mapped back in the answer's bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference.errors import InvalidInput
from inference.remote.rewrite import ModelNameRewriter, rewrite_request

DATA = Path(__file__).parent / "data"


def test_request_model_becomes_the_served_name() -> None:
    out = json.loads(rewrite_request(b'{"model": "llama", "prompt": "hi", "stream": true}',
                                     "meta-llama/Llama-3.1-8B"))
    assert out == {"model": "meta-llama/Llama-3.1-8B", "prompt": "hi", "stream": True}
    assert json.loads(rewrite_request({"prompt": "x"}, "s"))["model"] == "s"


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'"x"', b"\xff\xfe"])
def test_a_body_that_is_no_object_is_the_clients_fault(body: bytes) -> None:
    with pytest.raises(InvalidInput):
        rewrite_request(body, "s")


def _rewrite_in_pieces(data: bytes, cuts: list[int], served: str, name: str) -> bytes:
    r = ModelNameRewriter(served, name)
    out, last = [], 0
    for cut in sorted(set(cuts)):
        out.append(r.feed(data[last:cut]))
        last = cut
    out.append(r.feed(data[last:]))
    out.append(r.flush())
    return b"".join(out)


def test_real_vllm_stream_maps_back_at_every_split() -> None:
    data = (DATA / "vllm-0.32.0-chat-stream.txt").read_bytes()
    expected = data.replace(b'"model":"tiny-real"', b'"model":"tiny"')
    assert expected != data
    for cut in range(len(data) + 1):
        assert _rewrite_in_pieces(data, [cut], "tiny-real", "tiny") == expected


def test_whole_sse_events_pass_at_once() -> None:
    r = ModelNameRewriter("served", "m")
    event = b'data: {"id":"x","model":"served","choices":[]}\n\n'
    assert r.feed(event) == event.replace(b"served", b"m")  # nothing held back


def test_only_the_model_key_with_that_value_changes() -> None:
    doc = {"model": "served", "choices": [{"text": '"model":"served" is quoted text'}],
           "other": "served", "models": "served"}
    data = json.dumps(doc, separators=(",", ":")).encode()
    out = json.loads(_rewrite_in_pieces(data, [7, 30], "served", "m"))
    assert out["model"] == "m"
    assert out["choices"][0]["text"] == '"model":"served" is quoted text'
    assert out["other"] == "served" and out["models"] == "served"


@given(
    served=st.text(min_size=1, max_size=12),
    texts=st.lists(st.text(max_size=20), max_size=4),
    cuts=st.lists(st.integers(0, 400), max_size=6),
    spaced=st.booleans(),
)
def test_rewriting_equals_parsing(served: str, texts: list[str], cuts: list[int],
                                  spaced: bool) -> None:
    """For any served name, content and chunking: the same as decoding each event,
    setting model, and encoding it again."""
    events = [{"model": served, "choices": [{"text": t}]} for t in texts]
    sep = (", ", ": ") if spaced else (",", ":")
    for ascii_only in (True, False):
        data = b"".join(b"data: " + json.dumps(e, separators=sep, ensure_ascii=ascii_only)
                        .encode() + b"\n\n" for e in events)
        out = _rewrite_in_pieces(data, cuts, served, "m")
        got = [json.loads(line[6:]) for line in out.split(b"\n\n") if line]
        assert got == [{**e, "model": "m"} for e in events]
