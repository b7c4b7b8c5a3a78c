"""Gossip messages and their msgpack encoding (see docs/PROTOCOL.md).

Plaintext message: msgpack array

    [proto_version, type, sender_name, sender_generation, sender_addr, body...]

Bodies are arrays; a decoder reads the fields it knows and ignores trailing
extras, so a newer version can append fields and still be read by an older
node. Unknown message types are dropped and counted, never fatal.

Everything is validated before it is returned: `decode_message` either gives a
complete, well-typed `Message` or raises `RemoteProtocolError`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import msgpack

from crdt import DecodeError, unpack_limited, validate_plain

from .errors import RemoteProtocolError
from .messages import (
    MAX_NAME,
    MAX_PREAMBLE,
    MIN_PROTO_VERSION,
    PREAMBLE_MAGIC,
    PROTO_VERSION,
    Addr,
    Announce,
    DigestEntry,
    KeyUpdate,
    Message,
    MsgType,
    NodeDelta,
    Rumor,
    Status,
)

#: The message objects live in messages.py; this module gives their wire form.
__all__ = [
    "MAX_NAME",
    "MAX_PREAMBLE",
    "MIN_PROTO_VERSION",
    "PREAMBLE_MAGIC",
    "PROTO_VERSION",
    "Addr",
    "Announce",
    "DigestEntry",
    "KeyUpdate",
    "Message",
    "MsgType",
    "NodeDelta",
    "Rumor",
    "Status",
    "announce_wire",
    "body_wire",
    "decode_message",
    "decode_preamble",
    "delta_wire",
    "digest_wire",
    "encode_message",
    "packb",
    "parse_announce",
    "parse_delta",
    "parse_digest",
    "parse_rumor",
    "rumor_wire",
]

# -- encoding ------------------------------------------------------------------

#: One packer, reused: msgpack.packb builds a Packer per call. Packing holds
#: the GIL throughout, so sharing it between threads is safe.
_packer = msgpack.Packer(use_bin_type=True)


def packb(obj: Any) -> bytes:
    """msgpack bytes of `obj` (bin type for bytes), as every encoder here writes them."""
    out: bytes = _packer.pack(obj)
    return out


def _addr(a: Addr) -> list[Any]:
    return [a[0], a[1]]


def rumor_wire(r: Rumor) -> list[Any]:
    return [
        r.name,
        r.generation,
        r.incarnation,
        int(r.status),
        [r.addr[0], r.addr[1]],
        list(r.suspectors),
    ]


def delta_wire(d: NodeDelta) -> list[Any]:
    ups = [[u.key, u.version] if u.deleted else [u.key, u.version, u.value] for u in d.updates]
    return [d.name, d.generation, [d.addr[0], d.addr[1]], d.from_version, ups, d.reset, d.gc_floor]


def digest_wire(e: DigestEntry) -> list[Any]:
    return [e.name, e.generation, e.max_version]


def announce_wire(a: Announce) -> list[Any]:
    return [*digest_wire(a.entry), _addr(a.addr)]


# The body of each type, then the fields version 2 appended (older readers
# ignore them). One function per type, looked up in a table.


def _heartbeat_body(m: Message, rumors: list[Any]) -> list[Any]:
    return [m.state_hash, rumors, m.wall_ms]


def _ping_body(m: Message, rumors: list[Any]) -> list[Any]:
    return [m.seq, m.target, m.state_hash, rumors, m.wall_ms, m.target_gen]


def _ack_body(m: Message, rumors: list[Any]) -> list[Any]:
    return [m.seq, m.state_hash, rumors, m.wall_ms]


def _ping_req_body(m: Message, rumors: list[Any]) -> list[Any]:
    assert m.target_addr is not None
    return [m.seq, m.target, _addr(m.target_addr), rumors, m.wall_ms, m.target_gen]


def _syn_body(m: Message, rumors: list[Any]) -> list[Any]:
    return [
        m.state_hash,
        [[e.name, e.generation, e.max_version] for e in m.digest],
        m.lo,
        m.hi,
        [list(h) for h in m.crdt_hashes],
        rumors,
        m.wall_ms,
    ]


def _payload_body(m: Message, rumors: list[Any]) -> list[Any]:
    """SYNACK, ACK2 and PUSH share one body layout; `crdt_digests`, the last
    field, is sent only when there are some."""
    body = [
        [[e.name, e.generation, e.max_version] for e in m.digest],
        [delta_wire(d) for d in m.deltas],
        [[n, b] for n, b in m.crdts],
        [announce_wire(a) for a in m.announces],
        rumors,
        m.wall_ms,
    ]
    if m.crdt_digests:
        body.append([[n, b] for n, b in m.crdt_digests])
    return body


_BODIES: dict[int, Callable[[Message, list[Any]], list[Any]]] = {
    MsgType.HEARTBEAT: _heartbeat_body,
    MsgType.PING: _ping_body,
    MsgType.ACK: _ack_body,
    MsgType.NACK: _ack_body,
    MsgType.PING_REQ: _ping_req_body,
    MsgType.SYN: _syn_body,
    MsgType.SYNACK: _payload_body,
    MsgType.ACK2: _payload_body,
    MsgType.PUSH: _payload_body,
}


def body_wire(m: Message) -> list[Any]:
    """The body, then the fields version 2 appended (older readers ignore them)."""
    return _BODIES[m.type](m, [rumor_wire(r) for r in m.rumors] if m.rumors else [])


def encode_message(m: Message) -> bytes:
    return packb(
        [m.version, int(m.type), m.sender, m.generation, [m.addr[0], m.addr[1]], *body_wire(m)]
    )


# -- decoding: validate everything, raise RemoteProtocolError -------------------


def _fail(detail: str) -> RemoteProtocolError:
    return RemoteProtocolError("malformed", detail)


def _list(o: object, what: str, min_len: int = 0) -> list[Any]:
    if type(o) is not list or len(o) < min_len:
        raise _fail(f"{what}: expected an array of at least {min_len}")
    return o


def _uint(o: object, what: str) -> int:
    if type(o) is not int or not 0 <= o < 2**64:
        raise _fail(f"{what}: expected an unsigned int")
    return o


def _name(o: object, what: str) -> str:
    if type(o) is not str or not 0 < len(o) <= MAX_NAME:
        raise _fail(f"{what}: expected a name of 1..{MAX_NAME} chars")
    return o


def _key(o: object) -> str:
    if type(o) is not str or len(o) > 1024:
        raise _fail("key: expected a string of at most 1024 chars")
    return o


#: Addresses already validated, as tuples: every message carries one or more,
#: and a cluster has few (bounded: cleared when full).
_addrs: dict[tuple[object, object], Addr] = {}


def _parse_addr(o: object, what: str) -> Addr:
    a = _list(o, what, 2)
    host, port = a[0], a[1]
    if type(host) is not str or type(port) is not int:
        raise _fail(f"{what}: expected [host, port]")
    got = _addrs.get((host, port))
    if got is not None:
        return got
    if not 0 < len(host) <= 255:
        raise _fail(f"{what}: expected [host, port]")
    if not 0 < port < 65536:
        raise _fail(f"{what}: port out of range")
    if not _is_ip(host):  # gossip addresses are bound sockets': IP literals, never names
        raise _fail(f"{what}: {host[:64]!r} is not an IP address")
    if len(_addrs) >= 4096:
        _addrs.clear()
    addr = _addrs[(host, port)] = (host, port)
    return addr


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _plain(o: object) -> Any:
    if type(o) is str or type(o) is int:
        return o  # the common values: plain by themselves (no call into crdt's checks)
    try:
        return validate_plain(o, "value")
    except DecodeError as e:
        raise _fail(str(e)) from None


def _opt_name(o: object, what: str) -> str | None:
    return None if o is None else _name(o, what)


def parse_rumor(o: object) -> Rumor:
    r = _list(o, "rumor", 5)
    status = _STATUSES.get(_uint(r[3], "status"))
    if status is None:
        raise _fail("rumor: unknown status")
    suspectors: tuple[str, ...] = ()
    if len(r) > 5:
        suspectors = tuple([_name(s, "suspector") for s in _list(r[5], "suspectors")[:16]])
    return Rumor(
        _name(r[0], "rumor name"),
        _uint(r[1], "generation"),
        _uint(r[2], "incarnation"),
        status,
        _parse_addr(r[4], "rumor addr"),
        suspectors,
    )


_STATUSES: dict[int, Status] = {s.value: s for s in Status}


def parse_digest(o: object) -> DigestEntry:
    e = _list(o, "digest entry", 3)
    return DigestEntry(_name(e[0], "digest name"), _uint(e[1], "generation"), _uint(e[2], "ver"))


def parse_delta(o: object) -> NodeDelta:
    d = _list(o, "delta", 7)
    ups: list[KeyUpdate] = []
    updates = _list(d[4], "updates")
    seen: set[str] | None = set() if len(updates) > 1 else None  # none to compare one with
    for u in updates:
        u = _list(u, "update", 2)
        key, version = _key(u[0]), _uint(u[1], "version")
        if version == 0:
            raise _fail("delta: duplicate key or zero version")
        if seen is not None:
            if key in seen:
                raise _fail("delta: duplicate key or zero version")
            seen.add(key)
        if len(u) > 2:
            ups.append(KeyUpdate(key, version, _plain(u[2]), False))
        else:
            ups.append(KeyUpdate(key, version, None, True))
    if type(d[5]) is not bool:
        raise _fail("delta: reset must be a boolean")
    return NodeDelta(
        _name(d[0], "delta name"),
        _uint(d[1], "generation"),
        _parse_addr(d[2], "delta addr"),
        _uint(d[3], "from_version"),
        tuple(ups),
        d[5],
        _uint(d[6], "gc_floor"),
    )


def parse_announce(o: object) -> Announce:
    a = _list(o, "announce", 4)
    return Announce(parse_digest(a[:3]), _parse_addr(a[3], "announce addr"))


def _rumors(o: object) -> tuple[Rumor, ...]:
    rumors = _list(o, "rumors")
    return tuple([parse_rumor(r) for r in rumors]) if rumors else ()


def _extra(b: list[Any], i: int, what: str) -> int:
    """An appended (version 2) unsigned field, 0 when an older sender left it out."""
    return _uint(b[i], what) if len(b) > i else 0


# One parser per type: `decode_message` builds the Message from the validated
# head (type, sender, generation, addr, version), and the type's parser
# validates the body into it; a failure raises and the message is dropped.
# Fields are set one by one rather than passed as `**fields` or `*head`:
# compiled, such a call takes the class's generic entry, which parses its
# arguments by name (1-3% of a simulation).


def _parse_heartbeat(m: Message, b: list[Any]) -> None:
    b = _list(b, "heartbeat", 2)
    m.state_hash = _uint(b[0], "hash")
    m.rumors = _rumors(b[1])
    m.wall_ms = _extra(b, 2, "wall")


def _parse_ping(m: Message, b: list[Any]) -> None:
    b = _list(b, "ping", 4)
    m.seq = _uint(b[0], "seq")
    m.target = _name(b[1], "target")
    m.state_hash = _uint(b[2], "hash")
    _probe_tail(m, b)


def _probe_tail(m: Message, b: list[Any]) -> None:
    """What PING and PING_REQ carry after their third field, at the same places."""
    m.rumors = _rumors(b[3])
    m.wall_ms = _extra(b, 4, "wall")
    m.target_gen = _extra(b, 5, "target generation")


def _parse_ack(m: Message, b: list[Any]) -> None:
    b = _list(b, "ack", 3)
    m.seq = _uint(b[0], "seq")
    m.state_hash = _uint(b[1], "hash")
    m.rumors = _rumors(b[2])
    m.wall_ms = _extra(b, 3, "wall")


def _parse_ping_req(m: Message, b: list[Any]) -> None:
    b = _list(b, "ping-req", 4)
    m.seq = _uint(b[0], "seq")
    m.target = _name(b[1], "target")
    m.target_addr = _parse_addr(b[2], "target addr")
    _probe_tail(m, b)


def _parse_syn(m: Message, b: list[Any]) -> None:
    b = _list(b, "syn", 6)
    hashes = []
    for c in _list(b[4], "crdt hashes"):
        c = _list(c, "crdt hash", 2)
        hashes.append((_name(c[0], "crdt name"), _uint(c[1], "crdt hash")))
    m.state_hash = _uint(b[0], "hash")
    m.digest = tuple([parse_digest(e) for e in _list(b[1], "digest")])
    m.lo = _opt_name(b[2], "lo")
    m.hi = _opt_name(b[3], "hi")
    m.crdt_hashes = tuple(hashes)
    m.rumors = _rumors(b[5])
    m.wall_ms = _extra(b, 6, "wall")


def _named_blobs(o: object, what: str) -> tuple[tuple[str, bytes], ...]:
    out = []
    for c in _list(o, what):
        c = _list(c, what, 2)
        if type(c[1]) is not bytes:
            raise _fail(f"{what}: payload must be bytes")
        out.append((_name(c[0], "crdt name"), c[1]))
    return tuple(out)


def _parse_payload(m: Message, b: list[Any]) -> None:
    """SYNACK, ACK2 and PUSH."""
    b = _list(b, "body", 5)
    m.crdts = _named_blobs(b[2], "crdts")
    m.digest = tuple([parse_digest(e) for e in _list(b[0], "digest")])
    m.deltas = tuple([parse_delta(d) for d in _list(b[1], "deltas")])
    m.announces = tuple([parse_announce(a) for a in _list(b[3], "announces")])
    m.rumors = _rumors(b[4])
    m.wall_ms = _extra(b, 5, "wall")
    if len(b) > 6:
        m.crdt_digests = _named_blobs(b[6], "crdt digests")


_PARSERS: dict[object, tuple[MsgType, Callable[[Message, list[Any]], None]]] = {
    MsgType.HEARTBEAT: (MsgType.HEARTBEAT, _parse_heartbeat),
    MsgType.PING: (MsgType.PING, _parse_ping),
    MsgType.ACK: (MsgType.ACK, _parse_ack),
    MsgType.NACK: (MsgType.NACK, _parse_ack),
    MsgType.PING_REQ: (MsgType.PING_REQ, _parse_ping_req),
    MsgType.SYN: (MsgType.SYN, _parse_syn),
    MsgType.SYNACK: (MsgType.SYNACK, _parse_payload),
    MsgType.ACK2: (MsgType.ACK2, _parse_payload),
    MsgType.PUSH: (MsgType.PUSH, _parse_payload),
}


def decode_message(plaintext: bytes, max_bytes: int) -> Message:
    try:
        obj = unpack_limited(plaintext, max_bytes)
    except DecodeError as e:
        raise _fail(str(e)) from None
    m = _list(obj, "message", 5)
    version = m[0]
    if type(version) is not int or version < MIN_PROTO_VERSION:
        raise RemoteProtocolError("bad_version", f"protocol version {version!r}")
    try:
        found = _PARSERS.get(m[1])
    except TypeError:  # an unhashable type field
        found = None
    if found is None:
        raise RemoteProtocolError("unknown_type", f"message type {m[1]!r}")
    mtype, parse = found
    msg = Message(
        mtype,
        _name(m[2], "sender"),
        _uint(m[3], "generation"),
        _parse_addr(m[4], "sender addr"),
        version,
    )
    parse(msg, m[5:])
    return msg


def decode_preamble(plaintext: bytes) -> tuple[str, int, int]:
    """(sender, generation, byte count) of a stream preamble."""
    try:
        obj = unpack_limited(plaintext, MAX_PREAMBLE)
    except DecodeError as e:
        raise _fail(str(e)) from None
    p = _list(obj, "preamble", 4)
    if p[0] != PREAMBLE_MAGIC:
        raise _fail("preamble: not a rumor stream")
    return _name(p[1], "sender"), _uint(p[2], "generation"), _uint(p[3], "length")
