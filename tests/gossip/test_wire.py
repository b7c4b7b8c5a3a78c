"""Wire messages round-trip, and newer peers' extra fields are tolerated."""

from __future__ import annotations

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from gossip.wire import (
    Announce,
    DigestEntry,
    KeyUpdate,
    Message,
    MsgType,
    NodeDelta,
    Rumor,
    Status,
    decode_message,
    encode_message,
)

NAMES = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12)
U = st.integers(0, 2**63)
ADDR = st.tuples(st.sampled_from(["127.0.0.1", "::1", "10.1.2.3"]), st.integers(1, 65535))
RUMOR = st.builds(
    Rumor, NAMES, U, U, st.sampled_from(list(Status)), ADDR, st.lists(NAMES, max_size=3).map(tuple)
)
DIGEST = st.builds(DigestEntry, NAMES, U, U)
UPDATE = st.one_of(
    st.builds(
        KeyUpdate,
        st.text(max_size=8),
        st.integers(1, 2**40),
        st.one_of(st.integers(-(2**63), 2**63), st.text(), st.lists(st.booleans())),
        st.just(False),
    ),
    st.builds(KeyUpdate, st.text(max_size=8), st.integers(1, 2**40), st.none(), st.just(True)),
)
DELTA = st.builds(
    NodeDelta,
    NAMES,
    U,
    ADDR,
    U,
    st.lists(UPDATE, max_size=4, unique_by=lambda u: u.key).map(tuple),
    st.booleans(),
    U,
)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    t = draw(st.sampled_from(list(MsgType)))
    base = dict(
        type=t,
        sender=draw(NAMES),
        generation=draw(U),
        addr=draw(ADDR),
        rumors=tuple(draw(st.lists(RUMOR, max_size=3))),
    )
    if t in (MsgType.HEARTBEAT,):
        return Message(**base, state_hash=draw(U))
    if t == MsgType.PING:
        return Message(**base, seq=draw(U), target=draw(NAMES), state_hash=draw(U))
    if t in (MsgType.ACK, MsgType.NACK):
        return Message(**base, seq=draw(U), state_hash=draw(U))
    if t == MsgType.PING_REQ:
        return Message(**base, seq=draw(U), target=draw(NAMES), target_addr=draw(ADDR))
    if t == MsgType.SYN:
        return Message(
            **base,
            state_hash=draw(U),
            digest=tuple(draw(st.lists(DIGEST, max_size=4))),
            lo=draw(st.none() | NAMES),
            hi=draw(st.none() | NAMES),
            crdt_hashes=tuple(draw(st.lists(st.tuples(NAMES, U), max_size=2))),
        )
    return Message(
        **base,
        digest=tuple(draw(st.lists(DIGEST, max_size=3))),
        deltas=tuple(draw(st.lists(DELTA, max_size=3))),
        crdts=tuple(draw(st.lists(st.tuples(NAMES, st.binary(max_size=8)), max_size=2))),
        announces=tuple(draw(st.lists(st.builds(Announce, DIGEST, ADDR), max_size=2))),
        crdt_digests=tuple(draw(st.lists(st.tuples(NAMES, st.binary(max_size=8)), max_size=2))),
    )


@given(msg=messages())
def test_messages_round_trip(msg: Message) -> None:
    assert decode_message(encode_message(msg), 1 << 20) == msg


@given(msg=messages(), extra=st.lists(st.integers(-1000, 1000), min_size=1, max_size=3))
def test_trailing_fields_from_a_newer_version_are_ignored(msg: Message, extra: list[int]) -> None:
    obj = msgpack.unpackb(encode_message(msg), raw=False)
    obj[0] = msg.version + 1  # a newer protocol version ...
    if msg.type in (MsgType.SYNACK, MsgType.ACK2, MsgType.PUSH) and not msg.crdt_digests:
        obj.append([])  # ... sends every field before those it adds (this one may be left off)
    obj.extend(extra)  # ... and appends fields
    back = decode_message(msgpack.packb(obj, use_bin_type=True), 1 << 20)
    assert back.type == msg.type and back.sender == msg.sender and back.rumors == msg.rumors
