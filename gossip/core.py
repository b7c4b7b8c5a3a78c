"""The sans-IO gossip state machine.

A `GossipNode` is driven entirely from outside (as h11 drives HTTP):

    node.receive_datagram(data, src, now)   # bytes a socket received
    node.receive_stream(frame, now)         # one frame of a TCP bulk stream
    node.tick(now)                          # call at node.next_deadline()
    for out in node.take_outgoing(): ...    # Datagram / StreamFrame to send
    for ev in node.take_events(): ...       # what changed, for the application

It never reads a clock, opens a socket or touches global randomness: time is
passed in, and all choices come from the `random.Random` it was given. The
trio daemon and the simulator run this same class.

Its concerns live in one module each, as memberlist spreads its node's methods
over state.go, suspicion.go and queue.go: `members` (status and its legal
moves), `detector` (probes, suspicion, local health), `broadcast`
(dissemination) and `sync` (anti-entropy). This module holds what ties them:
the public API, the receive path, the round timer and sending.
docs/PROTOCOL.md has the wire format.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from crdt import CRDT, HLC, DecodeError, decode

from .base import Datagram, Outgoing, Probe, StreamFrame
from .config import GossipConfig
from .counts import Counts
from .crypto import DATAGRAM, STREAM, Keyring, Opener, ReplayWindow, Sealer
from .errors import LocalProtocolError, RemoteProtocolError, StateTooLarge
from .events import EventType, GossipEvent
from .members import Membership
from .state import ClusterState, NodeRecord
from .status import Member, MemberTable
from .sync import EMPTY, Inbox
from .wire import (
    Addr,
    Message,
    MsgType,
    NodeDelta,
    Status,
    decode_message,
    packb,
)

__all__ = [
    "Datagram",
    "EventType",
    "GossipEvent",
    "GossipNode",
    "Member",
    "Outgoing",
    "StreamFrame",
]

log = logging.getLogger("rumor.gossip")


class GossipNode(Membership):
    def __init__(
        self,
        name: str,
        addr: Addr,
        *,
        rng: random.Random,
        now: float,
        generation: int,
        config: GossipConfig | None = None,
        keyring: Keyring | None = None,
        wall_offset: float = 0.0,
    ) -> None:
        self.name = name
        self.addr = addr
        self.generation = generation
        self.config = config or GossipConfig()
        self.rng = rng
        self.wall_offset = wall_offset
        self.hlc = HLC(self.config.max_clock_offset)
        self._peer_clocks: dict[str, tuple[float, float]] = {}
        self.state = ClusterState()
        self.incarnation = 0
        self.local_health = 0
        self._health_raised_at = now
        self.counters: Counter[str] = Counts()
        self.left = False
        self._sealer = Sealer(keyring, rng)
        self._opener = Opener(keyring)
        self._replay: dict[tuple[str, bytes, int], ReplayWindow] = {}
        self._outbox: list[Outgoing] = []
        #: Record pulls asked for: name -> ((generation, max_version), when).
        self._pulls: dict[str, tuple[tuple[int, int], float]] = {}
        self._events: list[GossipEvent] = []
        self.table = MemberTable()
        self.members: dict[str, Member] = self.table.by_name
        self.members[name] = Member(name, generation, addr, status_since=now, last_heard=now)
        self.table.sync(name)
        self.own: NodeRecord = self.state.add_record(name, generation, addr, now)
        # Broadcast queues (memberlist's TransmitLimitedQueue): what, and how many
        # more times to send it. Items are rebuilt from current state at send time.
        self._bc_records: dict[str, list[int]] = {}  # name -> [from_version, left]
        self._bc_rumors: dict[str, int] = {}  # member name -> left
        self._bc_crdts: dict[str, tuple[CRDT, int]] = {}  # crdt name -> (joined delta, left)
        self._probes: dict[int, Probe] = {}
        self._probing: set[str] = set()
        self._suspects: set[str] = set()  # members with a running suspicion timer
        self._seq = 0
        self._round = 0
        self._next_round = now + self.rng.uniform(0, self.config.interval)
        self._last_tick = now
        self._clock = now  # the latest time we were given
        self._quiet_until = 0.0  # no accusations before this (after a local stall)
        # Addresses of removed members: we knock now and then, so a healed
        # partition finds its other half (Serf's reconnect).
        self._graveyard: dict[str, Addr] = {}
        self._predecessor: str | None = None
        self._digest_cursor: str | None = None
        self._last_syn_to: dict[str, float] = {}
        self._last_told: dict[str, float] = {}
        self._seeds: list[Addr] = []
        self._remembered: list[Addr] = []
        self._remember_until = 0.0
        self._work_memo: tuple[int, bool, int] = (-1, False, 0)

    # ------------------------------------------------------------------ public API

    def join(
        self,
        seeds: list[Addr],
        now: float,
        remembered: list[Addr] | None = None,
        remember_for: float = 600.0,
    ) -> None:
        """Contact seed addresses: a full-window SYN to each, retried every round
        while no other member is known. `remembered`: members a previous process
        of ours knew (its snapshot); they are knocked on like seeds for
        `remember_for` seconds, so a restart rejoins them even if the seeds died."""
        self._seeds = [s for s in seeds if s != self.addr]
        self._remembered = [a for a in remembered or () if a != self.addr and a not in seeds]
        self._remember_until = now + remember_for
        for addr in [*self._seeds, *self._remembered]:
            self._send_syn(addr, now)

    def snapshot(self) -> list[tuple[str, Addr, float]]:
        """Live members other than us: (name, address, when last heard), for a
        restart to rejoin (`join(remembered=...)`)."""
        return [
            (m.name, m.addr, m.last_heard)
            for m in self.members.values()
            if m.live and m.name != self.name
        ]

    def set_key(self, key: str, value: Any, now: float) -> None:
        """Set a key in this node's own record and push the change at once."""
        self.set_keys({key: value}, now)

    def set_keys(self, values: Mapping[str, Any], now: float) -> None:
        """Set several keys of this node's own record as one change: one push
        carries them all, where `set_key` pushes each at once. All or nothing:
        StateTooLarge (nothing written) if the record would pass its limit."""
        if not values:
            return
        sizes = {key: len(packb(value)) for key, value in values.items()}
        grow = 0
        for key, size in sizes.items():
            old = self.own.entries.get(key)
            grow += size - (old.size if old is not None else 0)
        if self.own.size + grow > self.config.max_node_state:
            raise StateTooLarge(
                f"node state would be {self.own.size + grow - self.config.max_node_state} "
                f"bytes over max_node_state={self.config.max_node_state}"
            )
        since = self.own.max_version
        for key, value in values.items():
            self.own.set_local(key, value, now, sizes[key])
        self._own_changed(now, since)

    def delete_key(self, key: str, now: float) -> None:
        if self.own.delete_local(key, now):
            self.state.with_tombstones.add(self.name)
            self._own_changed(now)

    def register_crdt(self, name: str, value: CRDT) -> None:
        """Replicate `value` cluster-wide under `name` (every node registers it)."""
        self.witness_local(value)
        self.state.register_crdt(name, value)

    def update_crdt(self, name: str, delta: CRDT, now: float) -> None:
        """Hand in the delta a local mutation returned; it is joined and pushed."""
        crdt = self.state.crdts.get(name)
        if crdt is None:
            raise LocalProtocolError(f"CRDT {name!r} is not registered")
        crdt.merge(delta)
        self.state.crdt_changed(name)
        self._queue_crdt(name, delta)
        self._push_now(now)

    def crdt(self, name: str) -> CRDT:
        return self.state.crdts[name]

    def leave(self, now: float) -> None:
        """Announce a graceful leave to many peers; the node then stops gossiping."""
        self.incarnation += 1
        me = self.members[self.name]
        self.table.set_status(me, Status.LEFT, now, self.incarnation)
        self._queue_rumor(self.name)
        self._push_to(self._random_peers(2 * self.config.fanout), now)
        self.left = True

    def take_outgoing(self) -> list[Outgoing]:
        out, self._outbox = self._outbox, []
        return out

    def take_events(self) -> list[GossipEvent]:
        ev, self._events = self._events, []
        return ev

    def next_deadline(self) -> float:
        t = self._next_work_round()
        t = self._detector_deadline(t)
        # Never ask to be woken at or before the last tick: whatever was due then
        # has been handled, and a stale deadline must not become a busy loop.
        return max(t, self._last_tick + 1e-3)

    def live_members(self) -> list[Member]:
        return [m for m in self.members.values() if m.live]

    def record(self, name: str) -> NodeRecord | None:
        return self.state.records.get(name)

    def warm_start(self, records: list[NodeDelta], now: float) -> None:
        """Know these members and their records at once, as if learned from a
        SYNACK, announcing nothing (a simulator's or benchmark's warm start):
        the state a node starts from, not news, so no rumor is queued and no
        JOIN event emitted for them."""
        self._bc_records.clear()
        for delta in records:
            if delta.name == self.name:
                continue
            self.state.apply_delta(delta, now)
            self._new_member(delta.name, delta.generation, delta.addr, now, announce=False)
        self._bc_rumors.clear()  # nothing to announce: all known

    def align_rounds(self, at: float) -> None:
        """Start the next gossip round at `at` (lines nodes up on one grid, for
        measuring rounds against the epidemic bounds)."""
        self._next_round = at

    # ------------------------------------------------------------------ receive path

    def receive_datagram(self, data: bytes, src: Addr, now: float) -> None:
        """Handle one datagram. Never raises for anything the peer sent."""
        self._receive(data, src, now, stream=False)

    def receive_stream(self, frame: bytes, src: Addr, now: float) -> None:
        """Handle one frame of a TCP bulk stream (same envelope, larger limit)."""
        self._receive(frame, src, now, stream=True)

    def _receive(self, data: bytes, src: Addr, now: float, stream: bool) -> None:
        counters = self.counters
        counters["frames_in" if stream else "datagrams_in"] += 1
        counters["bytes_in"] += len(data)
        limit = self.config.max_stream_frame if stream else self.config.max_datagram
        if len(data) > limit:
            self._drop("oversized", src)
            return
        if self.left:
            return
        if now > self._clock:
            self._clock = now
        try:
            plaintext, salt, counter = self._opener.open(data, STREAM if stream else DATAGRAM)
            msg = decode_message(plaintext, limit)
            self._check_sender(msg, salt, counter, src, stream)
            # Every part of the message is validated here, before anything is
            # applied: a bad message is dropped whole, never half-applied.
            inbox = EMPTY
            if msg.crdts or msg.crdt_digests:
                inbox = Inbox(self._decode_crdts(msg), self._decode_digests(msg))
                self._check_timestamps(inbox.crdts, now)
        except RemoteProtocolError as e:
            self._drop(e.reason, src, str(e))
            return
        counters[_MSG_COUNTERS[msg.type]] += 1
        try:
            self._handle(msg, inbox, now)
        except Exception:
            # A bug on our side, triggered by a peer: loud in the log and the
            # counters, but a peer's message must never take the node down.
            self.counters["handler_errors"] += 1
            log.warning(
                "error handling %s from %s:%s", msg.type.name, src[0], src[1], exc_info=True
            )

    def _check_sender(
        self, msg: Message, salt: bytes, counter: int, src: Addr, stream: bool
    ) -> None:
        if msg.sender == self.name and msg.generation == self.generation:
            raise RemoteProtocolError("identity", "a packet claims to be from us")
        m = self.members.get(msg.sender)
        if not stream and msg.addr != src:
            raise RemoteProtocolError(
                "identity", f"{msg.sender} claims {msg.addr}, sent from {src}"
            )
        if m is not None and m.generation == msg.generation and m.addr != msg.addr:
            raise RemoteProtocolError("identity", f"{msg.sender} is known at {m.addr}")
        if salt:
            key = (msg.sender, salt, STREAM if stream else DATAGRAM)
            window = self._replay.get(key)
            if window is None:
                if len(self._replay) > 8 * len(self.members) + 64:
                    self._replay.clear()  # bounded memory; stale windows only
                window = self._replay[key] = ReplayWindow()
            if not window.check_and_set(counter):
                raise RemoteProtocolError("replay", f"counter {counter} from {msg.sender}")

    def _decode_crdts(self, msg: Message) -> list[tuple[str, CRDT]]:
        decoded = []
        for name, blob in msg.crdts:
            try:
                value = decode(blob, self.config.max_stream_frame)
            except DecodeError as e:
                raise RemoteProtocolError("bad_payload", f"CRDT {name!r}: {e}") from None
            mine = self.state.crdts.get(name)
            if mine is not None and type(value) is not type(mine):
                raise RemoteProtocolError("bad_payload", f"CRDT {name!r} has the wrong type")
            decoded.append((name, value))
        return decoded

    def _handle(self, msg: Message, inbox: Inbox, now: float) -> None:
        self._heard_from(msg, now)
        self._note_peer_clock(msg, now)
        for r in msg.rumors:
            self._apply_rumor(r, now, reply_to=msg.addr)
        _HANDLERS[msg.type](self, msg, inbox, now)

    def _on_heartbeat(self, msg: Message, inbox: Inbox, now: float) -> None:
        if msg.state_hash != self.state.hash:
            self._send_syn(msg.addr, now, peer=msg.sender)

    def _on_ping(self, msg: Message, inbox: Inbox, now: float) -> None:
        if msg.target == self.name:
            # Probed as a generation above ours: a former process of ours.
            self._hear_of_self(msg.target_gen, now)
            self._send(msg.addr, self._msg(MsgType.ACK, seq=msg.seq), now)

    def _on_synack(self, msg: Message, inbox: Inbox, now: float) -> None:
        self._apply_payload(msg, inbox, now)
        if msg.digest:  # what the peer asked us for
            deltas = self._deltas_for(msg.digest)
            if deltas:
                self._send(msg.addr, self._msg(MsgType.ACK2, deltas=tuple(deltas)), now)

    # ------------------------------------------------------------------ timers

    def tick(self, now: float) -> None:
        if self.left:
            return
        due = self._next_work_round()
        self._clock = max(self._clock, now)
        due = self._check_own_lateness(now, due)
        self._recover_health(now)
        self._check_timers(now)
        self._watch_predecessor(now)
        if now >= self._next_round:
            # Every round boundary passed is counted; only one with work is run.
            # Rounds with nothing to do are skipped (no tick was even scheduled).
            interval = self.config.interval
            passed = int((now - self._next_round) // interval) + 1
            work = now >= due
            self._round += passed - (1 if work else 0)
            self._next_round += passed * interval
            if self._next_round <= now:
                self._next_round = now + interval
            if work:
                self._do_round(now)
        self._last_tick = now

    # Rounds in which periodic work falls; the others run only if updates wait.
    _GC_EVERY = 10

    def _round_has_work(self, r: int) -> bool:
        c = self.config
        return (
            (c.heartbeat_every > 0 and r % c.heartbeat_every == 0)
            or (c.anti_entropy_every > 0 and r % c.anti_entropy_every == 0)
            or r % self._GC_EVERY == 0
            or r % c.random_probe_every == 0
            or (r % c.reconnect_every == 0 and bool(self._graveyard or self.table.departed))
        )

    def _next_work_round(self) -> float:
        """When the next round that has something to do is due."""
        if self._next_round < self._clock:
            # Boundaries passed while we had nothing to do were skipped: the
            # next round is the next boundary on the grid, not a late one now.
            interval = self.config.interval
            missed = math.ceil((self._clock - self._next_round) / interval - 1e-9)
            self._round += missed
            self._next_round += missed * interval
        if (
            self._bc_records
            or self._bc_rumors
            or self._bc_crdts
            or ((self._seeds or self._remembered) and len(self.table.live) <= 1)
        ):
            return self._next_round
        # Which coming round has periodic work depends only on the round number
        # and on whether anyone is dead or removed: worked out once per round
        # (this runs after every datagram).
        departed = bool(self._graveyard or self.table.departed)
        memo = self._work_memo
        if memo[0] == self._round and memo[1] == departed:
            k = memo[2]
        else:
            k = 0
            while k < self._GC_EVERY and not self._round_has_work(self._round + 1 + k):
                k += 1
            self._work_memo = (self._round, departed, k)
        return self._next_round + k * self.config.interval

    def _do_round(self, now: float) -> None:
        self._round += 1
        c = self.config
        self._tell_the_accused(now)
        alone = len(self.table.live) <= 1
        if alone:
            # Still alone: keep knocking on the seeds, and on the members a
            # previous process of ours knew (until they age out).
            if now >= self._remember_until:
                self._remembered = []
            for addr in [*self._seeds, *self._remembered]:
                self._send_syn(addr, now)
        if c.heartbeat_every > 0 and self._round % c.heartbeat_every == 0:
            _, succ = self._neighbours()
            if succ is not None:
                msg = self._msg(MsgType.HEARTBEAT, state_hash=self.state.hash)
                self._send(self.members[succ].addr, msg, now)
        if self._bc_records or self._bc_rumors or self._bc_crdts:
            self._push_to(self._random_peers(c.fanout), now)
        if c.anti_entropy_every > 0 and self._round % c.anti_entropy_every == 0 and not alone:
            (peer,) = self._random_peers(1)
            if c.anti_entropy_full:
                self._send_syn(self.members[peer].addr, now)
            else:
                # Hash only: an idle peer with equal state stays silent.
                msg = self._msg(MsgType.SYN, state_hash=self.state.hash)
                self._send(self.members[peer].addr, msg, now)
        if self._round % self._GC_EVERY == 0:
            self._collect_garbage(now)
        if self._round % c.reconnect_every == 0:
            self._knock_on_the_dead(now)
        if self._round % c.random_probe_every == 0:
            self._probe_a_stranger(now)


#: The receive path's dispatch, one handler per message type.
_HANDLERS: dict[MsgType, Callable[[GossipNode, Message, Inbox, float], None]] = {
    MsgType.HEARTBEAT: GossipNode._on_heartbeat,
    MsgType.PING: GossipNode._on_ping,
    MsgType.ACK: lambda node, msg, inbox, now: node._on_ack(msg, now),
    MsgType.NACK: lambda node, msg, inbox, now: node._on_nack(msg),
    MsgType.PING_REQ: lambda node, msg, inbox, now: node._on_ping_req(msg, now),
    MsgType.SYN: lambda node, msg, inbox, now: node._on_syn(msg, now),
    MsgType.SYNACK: GossipNode._on_synack,
    MsgType.ACK2: GossipNode._apply_payload,
    MsgType.PUSH: GossipNode._apply_payload,
}
#: Counter names, one per message type (formatting one per message cost 1 us).
_MSG_COUNTERS = {t: f"msg_{t.name.lower()}" for t in MsgType}
