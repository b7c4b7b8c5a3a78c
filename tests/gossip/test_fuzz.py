"""Hostile datagrams against the receive path: nothing escapes, nothing changes."""

from __future__ import annotations

import random

import msgpack
from hypothesis import assume, given
from hypothesis import strategies as st

from gossip.core import Datagram, GossipNode
from gossip.crypto import ENVELOPE_VERSION, Keyring
from gossip.wire import PROTO_VERSION, MsgType

from .helpers import KEY

SRC = ("10.0.0.9", 7000)


def _pair(keyring: Keyring | None) -> tuple[GossipNode, GossipNode]:
    a = GossipNode(
        "a", ("10.0.0.1", 7000), rng=random.Random(1), now=0, generation=1, keyring=keyring
    )
    b = GossipNode(
        "b", ("10.0.0.9", 7000), rng=random.Random(2), now=0, generation=1, keyring=keyring
    )
    a.set_key("k", "v", 0)
    return a, b


def _snapshot(node: GossipNode) -> tuple[object, ...]:
    return (
        node.state.hash,
        sorted((m.name, m.generation, m.incarnation, int(m.status)) for m in node.members.values()),
        sorted(node.state.records),
    )


def _valid_datagrams(sender: GossipNode, receiver: GossipNode) -> list[bytes]:
    sender.join([receiver.addr], 0.0)
    sender.set_key("x", list(range(20)), 0.0)
    return [o.data for o in sender.take_outgoing() if isinstance(o, Datagram)]


@given(blob=st.binary(max_size=1500))
def test_random_bytes_never_raise_or_change_state(blob: bytes) -> None:
    a, _ = _pair(KEY)
    before = _snapshot(a)
    a.receive_datagram(blob, SRC, 1.0)
    assert _snapshot(a) == before
    assert a.counters["dropped"] == 1


@given(data=st.data())
def test_mutated_sealed_datagrams_are_rejected(data: st.DataObject) -> None:
    a, b = _pair(KEY)
    valid = _valid_datagrams(b, a)
    original = data.draw(st.sampled_from(valid))
    blob = bytearray(original)
    for _ in range(data.draw(st.integers(1, 3))):
        how = data.draw(st.sampled_from(["flip", "truncate", "extend"]))
        if not blob:
            break
        pos = data.draw(st.integers(0, len(blob) - 1))
        if how == "flip":
            blob[pos] ^= data.draw(st.integers(1, 255))
        elif how == "truncate":
            del blob[pos:]
        else:
            blob += data.draw(st.binary(min_size=1, max_size=8))
    assume(bytes(blob) != original)  # two flips of one byte can cancel out
    before = _snapshot(a)
    a.receive_datagram(bytes(blob), b.addr, 1.0)
    # AES-GCM authenticates every byte: any change is a counted drop.
    assert _snapshot(a) == before
    assert a.counters["dropped"] == 1


PLAIN = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**65), 2**65),
        st.text(max_size=5),
        st.binary(max_size=5),
        st.floats(allow_nan=False),
    ),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=25,
)


@given(mtype=st.sampled_from(list(MsgType)), body=st.lists(PLAIN, max_size=7))
def test_authentic_but_malformed_messages_are_dropped_whole(mtype: MsgType, body: list) -> None:
    """A keyholder sending structurally wrong messages (a buggy or newer peer)."""
    from gossip.crypto import Sealer

    a, _ = _pair(KEY)
    sealer = Sealer(KEY, random.Random(5))
    try:
        plaintext = msgpack.packb(
            [PROTO_VERSION, int(mtype), "b", 1, list(SRC), *body], use_bin_type=True
        )
    except (OverflowError, ValueError):
        return
    before = _snapshot(a)
    a.receive_datagram(sealer.seal(plaintext), SRC, 1.0)
    if a.counters["dropped"]:
        # Rejected: nothing at all was applied (not even "b" as a member).
        assert _snapshot(a) == before
    else:
        # Accepted: it was a well-formed message after all.
        assert a.counters[f"msg_{mtype.name.lower()}"] == 1


def test_insecure_node_rejects_sealed_and_garbage() -> None:
    a, _ = _pair(None)
    sealed = _valid_datagrams(*reversed(_pair(KEY)))[0]
    a.receive_datagram(sealed, SRC, 1.0)
    a.receive_datagram(bytes((ENVELOPE_VERSION, 0)) + b"\xc1", SRC, 1.0)
    assert a.counters["dropped_auth_failed"] == 1 and a.counters["dropped_malformed"] == 1


def test_bad_crdt_blob_drops_the_whole_message() -> None:
    """Rumors and deltas riding with a malformed CRDT payload are not applied."""
    from gossip.crypto import Sealer
    from gossip.wire import Message, Rumor, Status, encode_message

    a, _ = _pair(KEY)
    msg = Message(
        MsgType.PUSH,
        "b",
        1,
        SRC,
        rumors=(Rumor("zed", 1, 0, Status.ALIVE, ("10.0.0.7", 7000)),),
        crdts=(("catalog", b"\x93\x01\x06\xc1"),),
    )
    before = _snapshot(a)
    a.receive_datagram(Sealer(KEY, random.Random(9)).seal(encode_message(msg)), SRC, 1.0)
    assert a.counters["dropped_bad_payload"] == 1
    assert _snapshot(a) == before and "zed" not in a.members and "b" not in a.members


def test_addresses_must_be_ip_literals() -> None:
    """Found by bench/fuzz_daemons.py: a keyholder's PING_REQ whose target host
    held a NUL made sendto raise TypeError and took the daemon down. Addresses
    on the wire are IP literals or the whole message is dropped."""
    from gossip.crypto import Sealer
    from gossip.wire import Message, encode_message

    a, _ = _pair(KEY)
    sealer = Sealer(KEY, random.Random(11))
    for host in ("10.0.0.\x007", "example.com", "", "1.2.3.4.5"):
        msg = Message(MsgType.PING_REQ, "b", 1, SRC, seq=1, target="c", target_addr=(host, 7000))
        before = _snapshot(a)
        a.receive_datagram(sealer.seal(encode_message(msg)), SRC, 1.0)
        assert _snapshot(a) == before
        assert a.take_outgoing() == []  # nothing is sent to such an address
    assert a.counters["dropped_malformed"] == 4
