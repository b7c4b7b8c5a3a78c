"""What every concern of a GossipNode shares: its identity, state, queues and
timers, declared once, and how it speaks (message building, sealing, sending).

The concerns are classes over this base (`clock.Clocks`, `sync.AntiEntropy`,
`broadcast.Dissemination`, `detector.FailureDetection`, `members.Membership`),
joined into `core.GossipNode`, the way memberlist spreads one struct's methods
over files by concern. A concern calls another's methods through the
declarations at the end of this class.

They are stacked in one line (Clocks over NodeBase, AntiEntropy over Clocks,
..., GossipNode over Membership) rather than mixed in side by side, because
mypyc compiles single inheritance only (the compiled build, setup.py). The
method resolution order is the one the mixins had, and each concern still
reads and writes only the state declared here.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgpack

from crdt import CRDT, HLC

from .config import GossipConfig
from .crypto import DATAGRAM, SEAL_OVERHEAD, STREAM, Opener, ReplayWindow, Sealer
from .errors import RemoteProtocolError
from .events import EventType, GossipEvent
from .state import ClusterState, NodeRecord
from .status import Member, MemberTable
from .wire import (
    MAX_PREAMBLE,
    PREAMBLE_MAGIC,
    Addr,
    Message,
    MsgType,
    Rumor,
    decode_preamble,
    encode_message,
)

log = logging.getLogger("rumor.gossip")

#: Header fields and array framing around a message's variable parts.
MSGPACK_SLACK = 48


# Outgoing packets are not declared frozen: a frozen dataclass's __init__
# costs 0.1 us more per field, per packet.


@dataclass(slots=True, init=False)
class Datagram:
    dst: Addr
    data: bytes

    def __init__(self, dst: Addr, data: bytes) -> None:  # compiled (see wire.py)
        self.dst = dst
        self.data = data


@dataclass(slots=True)
class StreamFrame:
    """A message too large for a datagram: send over a framed TCP stream."""

    dst: Addr
    data: bytes


Outgoing = Datagram | StreamFrame


@dataclass
class Probe:
    target: str
    deadline: float
    # Set on a helper's relay: where to forward the ack.
    relay_to: Addr | None = None
    relay_seq: int = 0
    light: bool = False  # a direct ping only; escalates to a full probe on timeout
    generation: int = 0  # the target's generation this probe is for (0: any)
    helpers: int = 0  # PING_REQs sent (each helper nacks if it cannot reach the target)
    nackers: set[str] = field(default_factory=set)  # helpers that did (each counted once)


class NodeBase:
    # Identity and configuration.
    name: str
    addr: Addr
    generation: int
    incarnation: int
    config: GossipConfig
    rng: random.Random
    left: bool
    counters: Counter[str]
    # Clocks (gossip/clock.py): wall clock = core time + wall_offset.
    wall_offset: float
    hlc: HLC
    _peer_clocks: dict[str, tuple[float, float]]  # name -> (their clock - ours, when)
    # Replicated state, and what we know of members.
    state: ClusterState
    own: NodeRecord
    table: MemberTable
    members: dict[str, Member]
    # Broadcast queues (memberlist's TransmitLimitedQueue): what, and how many
    # more times to send it. Items are rebuilt from current state at send time.
    _bc_records: dict[str, list[int]]  # name -> [from_version, left]
    _bc_rumors: dict[str, int]  # member name -> left
    _bc_crdts: dict[str, tuple[CRDT, int]]  # crdt name -> (joined delta, left)
    # Failure detection.
    local_health: int
    _health_raised_at: float  # when local health last rose (it decays from there)
    _probes: dict[int, Probe]
    _probing: set[str]
    _suspects: set[str]  # members with a running suspicion timer
    _seq: int
    _quiet_until: float  # no accusations before this (after a local stall)
    _predecessor: str | None
    _last_told: dict[str, float]
    # Anti-entropy.
    _pulls: dict[str, tuple[tuple[int, int], float]]  # name -> ((gen, max_version), when)
    _graveyard: dict[str, Addr]  # removed members' addresses, knocked on now and then
    _digest_cursor: str | None
    _last_syn_to: dict[str, float]
    _seeds: list[Addr]
    _remembered: list[Addr]  # members a previous process knew (its snapshot)
    _remember_until: float
    # Rounds and time.
    _round: int
    _work_memo: tuple[int, bool, int]  # (round, anyone departed, rounds to the next work)
    _next_round: float
    _last_tick: float
    _clock: float  # the latest time we were given
    # Sealing and the receive path's memory.
    _sealer: Sealer
    _opener: Opener
    _replay: dict[tuple[str, bytes, int], ReplayWindow]  # (sender, salt, channel)
    _outbox: list[Outgoing]
    _events: list[GossipEvent]

    # ------------------------------------------------------------------ speaking

    def _msg(
        self,
        mtype: MsgType,
        *,
        rumor_budget: int | None = None,
        extra_rumors: tuple[Rumor, ...] = (),
        copies: int = 1,
        **fields: Any,
    ) -> Message:
        if rumor_budget is None:
            rumor_budget = self.config.max_datagram - SEAL_OVERHEAD - MSGPACK_SLACK - 200
            if mtype in (MsgType.SYN, MsgType.SYNACK, MsgType.ACK2):
                rumor_budget = 300
        target = fields.get("target")
        rumors = extra_rumors + self._take_rumors(rumor_budget, first=target, copies=copies)
        wall_ms = int((self._clock + self.wall_offset) * 1000)
        msg = Message(mtype, self.name, self.generation, self.addr, rumors=rumors, wall_ms=wall_ms)
        # Set one by one rather than passed on as `**fields`: compiled, a call
        # with `**` takes the class's generic entry, which parses every
        # argument by name (1.5% of a simulation). Same fields, same message.
        for name, value in fields.items():
            setattr(msg, name, value)
        return msg

    def _send(self, dst: Addr, msg: Message, now: float) -> None:
        self._send_plaintext(dst, encode_message(msg))

    def _send_plaintext(self, dst: Addr, plaintext: bytes) -> None:
        size = len(plaintext) + (SEAL_OVERHEAD if self._sealer.keyring else 2)
        if size <= self.config.max_datagram:
            data = self._sealer.seal(plaintext, DATAGRAM)
            self._outbox.append(Datagram(dst, data))
            self.counters["datagrams_out"] += 1
        elif size <= self.config.max_stream_frame:
            data = self._sealer.seal(plaintext, STREAM)
            self._outbox.append(StreamFrame(dst, data))
            self.counters["frames_out"] += 1
        else:
            self.counters["too_large_to_send"] += 1
            return
        self.counters["bytes_out"] += len(data)

    def _drop(self, reason: str, src: Addr, detail: str = "") -> None:
        self.counters[f"dropped_{reason}"] += 1
        self.counters["dropped"] += 1
        log.debug("drop from %s:%s: %s %s", src[0], src[1], reason, detail)

    def seal_preamble(self, length: int) -> bytes:
        """The small authenticated frame that opens a TCP stream: it names us and
        the bytes that follow, so a receiver buffers nothing large for a peer
        that cannot seal (gossip/transport.py)."""
        body = [PREAMBLE_MAGIC, self.name, self.generation, length]
        return self._sealer.seal(msgpack.packb(body, use_bin_type=True), STREAM)

    def open_preamble(self, data: bytes, src: Addr, now: float) -> int:
        """Check a stream's preamble; returns the byte count it announces.
        Raises RemoteProtocolError (counted and dropped, as for any packet)."""
        try:
            if len(data) > MAX_PREAMBLE:
                raise RemoteProtocolError("oversized", "stream preamble too long")
            plaintext, salt, counter = self._opener.open(data, STREAM)
            body = decode_preamble(plaintext)
            if salt:
                key = (body[0], salt, STREAM)
                window = self._replay.setdefault(key, ReplayWindow())
                if not window.check_and_set(counter):
                    raise RemoteProtocolError("replay", f"stream preamble from {body[0]}")
        except RemoteProtocolError as e:
            self._drop(e.reason, src, str(e))
            raise
        self._clock = max(self._clock, now)
        return body[2]

    def _random_peers(self, k: int) -> list[str]:
        return self.table.live.sample(self.rng, k, exclude=self.name)

    def _emit(self, etype: EventType, member: str, now: float, keys: tuple[str, ...] = ()) -> None:
        self._events.append(GossipEvent(etype, member, now, keys))

    def _tell(self, name: str, addr: Addr, verdict: Rumor, now: float) -> None:
        """Send a member our verdict about it (at most once a round)."""
        last = self._last_told.get(name, -1e9)
        if now - last >= self.config.interval:
            self._last_told[name] = now
            tell = self._msg(MsgType.PUSH, extra_rumors=(verdict,), rumor_budget=0)
            self._send(addr, tell, now)

    # ------------------------------------------------------------------ the other concerns'

    def _take_rumors(
        self, budget: int, first: str | None = None, copies: int = 1
    ) -> tuple[Rumor, ...]:
        raise NotImplementedError  # broadcast.Dissemination

    def _queue_rumor(self, name: str) -> None:
        raise NotImplementedError  # broadcast.Dissemination

    def _queue_record(self, name: str, from_version: int) -> None:
        raise NotImplementedError  # broadcast.Dissemination

    def _queue_crdt(self, name: str, delta: CRDT) -> None:
        raise NotImplementedError  # broadcast.Dissemination

    def _push_now(self, now: float) -> None:
        raise NotImplementedError  # broadcast.Dissemination

    def _new_member(
        self,
        name: str,
        generation: int,
        addr: Addr,
        now: float,
        rumor: Rumor | None = None,
        announce: bool = True,
    ) -> None:
        raise NotImplementedError  # members.Membership

    def _probe(self, target: str, now: float, light: bool = False) -> None:
        raise NotImplementedError  # detector.FailureDetection

    def _hear_of_self(self, generation: int, now: float) -> bool:
        raise NotImplementedError  # members.Membership

    def _witness(self, value: CRDT, now: float) -> None:
        raise NotImplementedError  # clock.Clocks

    def _probe_timeout(self) -> float:
        raise NotImplementedError  # detector.FailureDetection

    def _start_suspicion(self, m: Member, now: float, confirm: bool) -> None:
        raise NotImplementedError  # detector.FailureDetection

    def _update_suspicion_deadline(self, m: Member) -> None:
        raise NotImplementedError  # detector.FailureDetection

    def _health(self, change: int, now: float) -> None:
        raise NotImplementedError  # detector.FailureDetection
