"""Gossip messages as objects: the message types, member statuses and what a
message carries (docs/PROTOCOL.md). Their wire form is in wire.py."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

PROTO_VERSION = 2
#: A TCP stream opens with a small sealed preamble, [magic, sender, generation,
#: byte count], before any large buffer is allocated for it.
PREAMBLE_MAGIC = "rumor-stream"
MAX_PREAMBLE = 512
MIN_PROTO_VERSION = 2
MAX_NAME = 128
Addr = tuple[str, int]


class MsgType(enum.IntEnum):
    HEARTBEAT = 1
    PING = 2
    ACK = 3
    PING_REQ = 4
    SYN = 5
    SYNACK = 6
    ACK2 = 7
    PUSH = 8
    #: A PING_REQ helper's "I could not reach it either" (Lifeguard): the asker's
    #: failed probe then says nothing about the asker's own health.
    NACK = 9


class Status(enum.IntEnum):
    """Member status; at equal (generation, incarnation) a higher value wins."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


# The wire records are treated as immutable but not declared frozen: a frozen
# dataclass's __init__ sets each field through object.__setattr__, which cost
# 0.1 us per field in CPython 3.11 (1.8 us for a Message), on every message.
# The hottest spell out their __init__ (init=False): mypyc compiles what is
# written, while the methods dataclasses generates stay interpreted.


@dataclass(slots=True)
class Rumor:
    """A claim about one member's liveness, spread SWIM-style."""

    name: str
    generation: int
    incarnation: int
    status: Status
    addr: Addr
    suspectors: tuple[str, ...] = ()

    def rank(self) -> tuple[int, int, int]:
        return (self.generation, self.incarnation, int(self.status))


@dataclass(slots=True, init=False)
class DigestEntry:
    name: str
    generation: int
    max_version: int

    def __init__(self, name: str, generation: int, max_version: int) -> None:
        self.name = name
        self.generation = generation
        self.max_version = max_version


@dataclass(slots=True, init=False)
class KeyUpdate:
    key: str
    version: int
    value: Any
    deleted: bool

    def __init__(self, key: str, version: int, value: Any, deleted: bool = False) -> None:
        self.key = key
        self.version = version
        self.value = value
        self.deleted = deleted


@dataclass(slots=True, init=False)
class NodeDelta:
    """Every entry of `name` with version > `from_version` (a complete range),
    or, with `reset`, the node's whole record replacing the receiver's copy."""

    name: str
    generation: int
    addr: Addr
    from_version: int
    updates: tuple[KeyUpdate, ...]
    reset: bool
    gc_floor: int

    def __init__(
        self,
        name: str,
        generation: int,
        addr: Addr,
        from_version: int,
        updates: tuple[KeyUpdate, ...],
        reset: bool = False,
        gc_floor: int = 0,
    ) -> None:
        self.name = name
        self.generation = generation
        self.addr = addr
        self.from_version = from_version
        self.updates = updates
        self.reset = reset
        self.gc_floor = gc_floor


@dataclass(slots=True)
class Announce:
    """ "`name` is at (generation, max_version)": sent instead of a delta too big
    for a datagram, so receivers that are behind pull it (over TCP if large)."""

    entry: DigestEntry
    addr: Addr


@dataclass(slots=True, init=False)
class Message:
    type: MsgType
    sender: str
    generation: int
    addr: Addr
    version: int
    # HEARTBEAT / PING / ACK / PING_REQ
    seq: int
    target: str
    target_addr: Addr | None
    #: PING / PING_REQ: the generation of the target being probed (0: any), so
    #: an ack is credited to the process it was for.
    target_gen: int
    #: Every type: the sender's wall clock, ms since the epoch (0: not given),
    #: from which each node estimates how far its own clock is from its peers'.
    wall_ms: int
    state_hash: int
    # SYN: a rotating digest window covering names in (lo, hi]; None is open-ended.
    digest: tuple[DigestEntry, ...]
    lo: str | None
    hi: str | None
    # SYN/SYNACK: hashes of cluster CRDTs, or CRDT states/deltas as encoded bytes.
    crdt_hashes: tuple[tuple[str, int], ...]
    crdts: tuple[tuple[str, bytes], ...]
    #: SYNACK/ACK2/PUSH: what the sender holds of a causal CRDT (a crdt
    #: ContextDigest, msgpack), asking for exactly what it lacks.
    crdt_digests: tuple[tuple[str, bytes], ...]
    deltas: tuple[NodeDelta, ...]
    announces: tuple[Announce, ...]
    rumors: tuple[Rumor, ...]

    def __init__(
        self,
        type: MsgType,
        sender: str,
        generation: int,
        addr: Addr,
        version: int = PROTO_VERSION,
        seq: int = 0,
        target: str = "",
        target_addr: Addr | None = None,
        target_gen: int = 0,
        wall_ms: int = 0,
        state_hash: int = 0,
        digest: tuple[DigestEntry, ...] = (),
        lo: str | None = None,
        hi: str | None = None,
        crdt_hashes: tuple[tuple[str, int], ...] = (),
        crdts: tuple[tuple[str, bytes], ...] = (),
        crdt_digests: tuple[tuple[str, bytes], ...] = (),
        deltas: tuple[NodeDelta, ...] = (),
        announces: tuple[Announce, ...] = (),
        rumors: tuple[Rumor, ...] = (),
    ) -> None:
        self.type = type
        self.sender = sender
        self.generation = generation
        self.addr = addr
        self.version = version
        self.seq = seq
        self.target = target
        self.target_addr = target_addr
        self.target_gen = target_gen
        self.wall_ms = wall_ms
        self.state_hash = state_hash
        self.digest = digest
        self.lo = lo
        self.hi = hi
        self.crdt_hashes = crdt_hashes
        self.crdts = crdts
        self.crdt_digests = crdt_digests
        self.deltas = deltas
        self.announces = announces
        self.rumors = rumors
