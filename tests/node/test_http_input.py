"""Client input never reaches a 5xx, and event streams say when they lose
events (issue #13, items 7 and 9)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.api.common import HTTPError
from node.api.kserve import parse_infer, to_tensors
from node.api.observe import sse_events
from node.config import NodeConfig
from node.daemon import Daemon
from node.errors import TooManySubscribers
from node.events import EVENT_BUFFER

# ---------------------------------------------------------------- 9. parsers


def _infer(shape: object, data: object, datatype: str = "FP32") -> bytes:
    tensor = {"name": "input", "shape": shape, "datatype": datatype, "data": data}
    return json.dumps({"inputs": [tensor]}).encode()


@pytest.mark.parametrize(
    "shape,data",
    [
        ([2**70, 0], []),  # the count 0 matched, then reshape raised: a 500
        ([2**31, 2**31], []),
        ([0] * 40, []),
        ([-1], []),
        ([2, 2], [1, 2, 3]),
        ([2], [[1, 2], [3]]),
        ([1], "abc"),
    ],
)
def test_malformed_tensors_are_client_errors(shape: object, data: object) -> None:
    with pytest.raises(HTTPError) as e:
        to_tensors(parse_infer(_infer(shape, data)))
    assert 400 <= e.value.status < 500


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
NUMBERS = st.lists(st.one_of(st.integers(), st.floats(), st.booleans()), max_size=8)
TENSOR = st.fixed_dictionaries(
    {
        "name": st.one_of(st.just("input"), JSON),
        "shape": st.one_of(st.lists(st.integers(-3, 2**72), max_size=4), JSON),
        "datatype": st.one_of(st.sampled_from(["FP32", "INT64", "BOOL", "UINT8", "FP16"]), JSON),
        "data": st.one_of(NUMBERS, st.lists(NUMBERS, max_size=3), JSON),
    }
)
BODY = st.one_of(
    st.binary(max_size=64),
    JSON.map(lambda v: json.dumps(v).encode()),
    st.lists(TENSOR, max_size=3).map(lambda ts: json.dumps({"inputs": ts}).encode()),
)


@settings(max_examples=300, deadline=None)
@given(BODY)
def test_no_body_makes_the_infer_parsers_fail_other_than_4xx(body: bytes) -> None:
    try:
        to_tensors(parse_infer(body))
    except HTTPError as e:
        assert 400 <= e.status < 500, e.message


# ---------------------------------------------------------------- 7. event streams


def _daemon() -> Daemon:
    return Daemon(NodeConfig(name="n0", max_event_subscribers=3))


async def test_a_subscriber_that_falls_behind_is_told_it_lost_events() -> None:
    d = _daemon()
    sub = d.subscribe()
    for i in range(EVENT_BUFFER + 5):  # nobody reads meanwhile
        d.events.emit({"type": "member-update", "member": f"m{i}"})
    assert sub.lost
    chunks = [chunk async for chunk in sse_events(sub, "n0")]
    assert len(chunks) == 1 + EVENT_BUFFER + 1  # comment, every buffered event, the notice
    assert chunks[-1].startswith("event: events-lost\n")
    assert json.loads(chunks[-1].split("data: ", 1)[1])["type"] == "events-lost"


async def test_subscribers_that_keep_up_lose_nothing_and_their_number_is_capped() -> None:
    d = _daemon()
    subs = [d.subscribe() for _ in range(3)]
    with pytest.raises(TooManySubscribers):
        d.subscribe()
    for i in range(10):
        d.events.emit({"type": "member-update", "member": f"m{i}"})
    for s in subs:
        s.send.close()
        got = [c async for c in sse_events(s, "n0")]
        assert not s.lost and len(got) == 11 and "events-lost" not in "".join(got)
