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

Design, in brief (docs/PROTOCOL.md has the wire format):

- Dissemination: a local change or newly learned state is pushed at once to
  `eager_fanout` random peers (infect-and-forward), then to `fanout` on later
  rounds, up to retransmit_mult * ceil(log10(N+1)) copies (memberlist's limit).
- Anti-entropy: scuttlebutt digests, exchanged as SYN -> SYNACK -> ACK2. The
  digest is a rotating window of at most `digest_window` entries, so no
  message grows with N; idle peers compare an 8-byte state hash and stay quiet.
- Failure detection: each node heartbeats its successor on a hash ring (one
  datagram per node per period, O(1) whatever N), and watches its predecessor.
  Silence triggers a direct ping plus `indirect_probes` ping-reqs in parallel
  (SWIM); if all fail the member becomes suspect, and Lifeguard's suspicion
  timeout shrinks as other nodes independently confirm. A suspect refutes by
  raising its incarnation. Local health awareness (Lifeguard): a node whose
  own ticks run late, or whose probes keep failing, waits longer before
  accusing anyone or declaring a suspect dead, checks no one else's
  suspicions, and after a stall it gives every member fresh credit. A suspect
  that still speaks to us gets another term, not a death.
"""

from __future__ import annotations

import enum
import logging
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from crdt import CRDT, DecodeError, decode, encode

from .config import GossipConfig
from .crypto import SEAL_OVERHEAD, Keyring, Opener, ReplayWindow, Sealer, nonce_counter
from .errors import LocalProtocolError, RemoteProtocolError, StateTooLarge
from .live import LiveIndex
from .state import ClusterState, NodeRecord
from .wire import (
    Addr,
    Announce,
    DigestEntry,
    Message,
    MsgType,
    NodeDelta,
    Rumor,
    Status,
    announce_wire,
    decode_message,
    delta_wire,
    encode_message,
    rumor_wire,
)

log = logging.getLogger("rumor.gossip")

_MSGPACK_SLACK = 48  # header fields and array framing around the variable parts


@dataclass(frozen=True, slots=True)
class Datagram:
    dst: Addr
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamFrame:
    """A message too large for a datagram: send over a framed TCP stream."""

    dst: Addr
    data: bytes


Outgoing = Datagram | StreamFrame


class EventType(enum.StrEnum):
    JOIN = "member-join"
    UPDATE = "member-update"
    SUSPECT = "member-suspect"
    ALIVE = "member-alive"
    DEAD = "member-dead"
    LEAVE = "member-leave"
    REMOVED = "member-removed"
    CRDT = "crdt-update"


@dataclass(frozen=True, slots=True)
class GossipEvent:
    type: EventType
    member: str
    time: float
    keys: tuple[str, ...] = ()


@dataclass
class Member:
    name: str
    generation: int
    addr: Addr
    incarnation: int = 0
    status: Status = Status.ALIVE
    status_since: float = 0.0
    last_heard: float = 0.0
    suspectors: set[str] = field(default_factory=set)
    suspicion_start: float = 0.0
    suspicion_deadline: float = 0.0

    def rumor(self) -> Rumor:
        return Rumor(
            self.name,
            self.generation,
            self.incarnation,
            self.status,
            self.addr,
            tuple(sorted(self.suspectors))[:8],
        )

    def rank(self) -> tuple[int, int, int]:
        return (self.generation, self.incarnation, int(self.status))

    @property
    def live(self) -> bool:
        return self.status in (Status.ALIVE, Status.SUSPECT)


@dataclass
class _Probe:
    target: str
    deadline: float
    # Set on a helper's relay: where to forward the ack.
    relay_to: Addr | None = None
    relay_seq: int = 0
    light: bool = False  # a direct ping only; escalates to a full probe on timeout
    helpers: int = 0  # PING_REQs sent (each helper nacks if it cannot reach the target)
    nackers: set[str] = field(default_factory=set)  # helpers that did (each counted once)


class GossipNode:
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
    ) -> None:
        self.name = name
        self.addr = addr
        self.generation = generation
        self.config = config or GossipConfig()
        self.rng = rng
        self.state = ClusterState()
        self.incarnation = 0
        self.local_health = 0
        self.counters: Counter[str] = Counter()
        self.left = False
        self._sealer = Sealer(keyring, rng)
        self._opener = Opener(keyring)
        self._replay: dict[tuple[str, bytes], ReplayWindow] = {}
        self._outbox: list[Outgoing] = []
        #: Record pulls asked for: name -> ((generation, max_version), when).
        self._pulls: dict[str, tuple[tuple[int, int], float]] = {}
        self._events: list[GossipEvent] = []
        self.members: dict[str, Member] = {}
        me = Member(name, generation, addr, status_since=now, last_heard=now)
        self.members[name] = me
        self.own: NodeRecord = self.state.add_record(name, generation, addr, now)
        # Broadcast queues (memberlist's TransmitLimitedQueue): what, and how many
        # more times to send it. Items are rebuilt from current state at send time.
        self._bc_records: dict[str, list[int]] = {}  # name -> [from_version, left]
        self._bc_rumors: dict[str, int] = {}  # member name -> left
        self._bc_crdts: dict[str, tuple[CRDT, int]] = {}  # crdt name -> (joined delta, left)
        self._probes: dict[int, _Probe] = {}
        self._probing: set[str] = set()
        self._suspects: set[str] = set()  # members with a running suspicion timer
        self._seq = 0
        self._round = 0
        self._next_round = now + self.rng.uniform(0, self.config.interval)
        self._last_tick = now
        self._clock = now  # the latest time we were given
        self._quiet_until = 0.0  # no accusations before this (after a local stall)
        self._live = LiveIndex()
        self._live.add(name)
        self._departed: set[str] = set()
        # Addresses of removed members: we knock now and then, so a healed
        # partition finds its other half (Serf's reconnect).
        self._graveyard: dict[str, Addr] = {}
        self._predecessor: str | None = None
        self._digest_cursor: str | None = None
        self._last_syn_to: dict[str, float] = {}
        self._last_told: dict[str, float] = {}
        self._seeds: list[Addr] = []

    # ------------------------------------------------------------------ public API

    def join(self, seeds: list[Addr], now: float) -> None:
        """Contact seed addresses: a full-window SYN to each (retried every round
        until some member is known)."""
        self._seeds = [s for s in seeds if s != self.addr]
        for seed in self._seeds:
            self._send_syn(seed, now)

    def set_key(self, key: str, value: Any, now: float) -> None:
        """Set a key in this node's own record and push the change at once."""
        before = self.own.size
        self.own.set_local(key, value, now)
        if self.own.size > self.config.max_node_state:
            self.own.delete_local(key, now)
            raise StateTooLarge(
                f"node state would be {self.own.size - before} bytes over "
                f"max_node_state={self.config.max_node_state}"
            )
        self._own_changed(now)

    def delete_key(self, key: str, now: float) -> None:
        if self.own.delete_local(key, now):
            self.state.with_tombstones.add(self.name)
            self._own_changed(now)

    def register_crdt(self, name: str, value: CRDT) -> None:
        """Replicate `value` cluster-wide under `name` (every node registers it)."""
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
        me.incarnation, me.status = self.incarnation, Status.LEFT
        self._sync_live(self.name)
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
        watch = self._silence_deadline()
        if watch is not None:
            t = min(t, watch)
        for p in self._probes.values():
            t = min(t, p.deadline)
        for name in self._suspects:
            m = self.members.get(name)
            if m is not None and m.status == Status.SUSPECT and m.suspicion_deadline:
                t = min(t, max(m.suspicion_deadline, self._quiet_until))
        # Never ask to be woken at or before the last tick: whatever was due then
        # has been handled, and a stale deadline must not become a busy loop.
        return max(t, self._last_tick + 1e-3)

    def live_members(self) -> list[Member]:
        return [m for m in self.members.values() if m.live]

    def evidence(self, name: str, now: float) -> dict[str, Any]:
        """Why we hold `name` at its status: what a failure detector saw."""
        m = self.members[name]
        out: dict[str, Any] = {
            "status": m.status.name.lower(),
            "incarnation": m.incarnation,
            "generation": m.generation,
            "last_heard_s": round(max(0.0, now - m.last_heard), 3),
            "status_since_s": round(max(0.0, now - m.status_since), 3),
            "probing": name in self._probing,
            "local_health": self.local_health,
        }
        if m.status == Status.SUSPECT:
            out["suspectors"] = sorted(m.suspectors)
            out["dead_in_s"] = round(max(0.0, m.suspicion_deadline - now), 3)
        return out

    def record(self, name: str) -> NodeRecord | None:
        return self.state.records.get(name)

    # ------------------------------------------------------------------ receive path

    def receive_datagram(self, data: bytes, src: Addr, now: float) -> None:
        """Handle one datagram. Never raises for anything the peer sent."""
        self._receive(data, src, now, stream=False)

    def receive_stream(self, frame: bytes, src: Addr, now: float) -> None:
        """Handle one frame of a TCP bulk stream (same envelope, larger limit)."""
        self._receive(frame, src, now, stream=True)

    def _drop(self, reason: str, src: Addr, detail: str = "") -> None:
        self.counters[f"dropped_{reason}"] += 1
        self.counters["dropped"] += 1
        log.debug("drop from %s:%s: %s %s", src[0], src[1], reason, detail)

    def _receive(self, data: bytes, src: Addr, now: float, stream: bool) -> None:
        self.counters["frames_in" if stream else "datagrams_in"] += 1
        self.counters["bytes_in"] += len(data)
        limit = self.config.max_stream_frame if stream else self.config.max_datagram
        if len(data) > limit:
            self._drop("oversized", src)
            return
        if self.left:
            return
        self._clock = max(self._clock, now)
        try:
            plaintext, nonce = self._opener.open(data)
            msg = decode_message(plaintext, limit)
            self._check_sender(msg, nonce, src, stream)
            # Every part of the message is validated here, before anything is
            # applied: a bad message is dropped whole, never half-applied.
            crdts = self._decode_crdts(msg)
        except RemoteProtocolError as e:
            self._drop(e.reason, src, str(e))
            return
        self.counters[f"msg_{msg.type.name.lower()}"] += 1
        try:
            self._handle(msg, crdts, now)
        except Exception:
            # A bug on our side, triggered by a peer: loud in the log and the
            # counters, but a peer's message must never take the node down.
            self.counters["handler_errors"] += 1
            log.warning(
                "error handling %s from %s:%s", msg.type.name, src[0], src[1], exc_info=True
            )

    def _check_sender(self, msg: Message, nonce: bytes, src: Addr, stream: bool) -> None:
        if msg.sender == self.name and msg.generation == self.generation:
            raise RemoteProtocolError("identity", "a packet claims to be from us")
        m = self.members.get(msg.sender)
        if not stream and msg.addr != src:
            raise RemoteProtocolError(
                "identity", f"{msg.sender} claims {msg.addr}, sent from {src}"
            )
        if m is not None and m.generation == msg.generation and m.addr != msg.addr:
            raise RemoteProtocolError("identity", f"{msg.sender} is known at {m.addr}")
        if nonce:
            salt, counter = nonce_counter(nonce)
            window = self._replay.get((msg.sender, salt))
            if window is None:
                if len(self._replay) > 4 * len(self.members) + 64:
                    self._replay.clear()  # bounded memory; stale windows only
                window = self._replay[(msg.sender, salt)] = ReplayWindow()
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

    def _handle(self, msg: Message, crdts: list[tuple[str, CRDT]], now: float) -> None:
        self._heard_from(msg, now)
        for r in msg.rumors:
            self._apply_rumor(r, now, reply_to=msg.addr)
        t = msg.type
        if t == MsgType.HEARTBEAT:
            if msg.state_hash != self.state.hash:
                self._send_syn(msg.addr, now, peer=msg.sender)
        elif t == MsgType.PING:
            if msg.target == self.name:
                self._send(msg.addr, self._msg(MsgType.ACK, seq=msg.seq), now)
        elif t == MsgType.ACK:
            self._on_ack(msg, now)
        elif t == MsgType.NACK:
            probe = self._probes.get(msg.seq)
            if probe is not None and probe.relay_to is None and len(probe.nackers) < probe.helpers:
                probe.nackers.add(msg.sender)  # a duplicated NACK counts once
        elif t == MsgType.PING_REQ:
            assert msg.target_addr is not None
            seq = self._next_seq()
            # Give up a little before the asker does, so our NACK reaches it in time.
            self._probes[seq] = _Probe(
                msg.target,
                now + 0.8 * self._probe_timeout(),
                relay_to=msg.addr,
                relay_seq=msg.seq,
            )
            self._send(msg.target_addr, self._msg(MsgType.PING, seq=seq, target=msg.target), now)
        elif t == MsgType.SYN:
            self._on_syn(msg, now)
        elif t == MsgType.SYNACK:
            self._apply_payload(msg, crdts, now)
            if msg.digest:  # what the peer asked us for
                deltas = self._deltas_for(msg.digest)
                if deltas:
                    self._send(msg.addr, self._msg(MsgType.ACK2, deltas=tuple(deltas)), now)
        elif t == MsgType.ACK2 or t == MsgType.PUSH:
            self._apply_payload(msg, crdts, now)

    def _heard_from(self, msg: Message, now: float) -> None:
        if self.state.is_tombstoned(msg.sender, msg.generation):
            # Removed as dead, yet it speaks: tell it, so it can refute with a
            # higher incarnation (the only way back for this generation).
            gen, inc, _ = self.state.tombstones[msg.sender]
            if gen == msg.generation and msg.type != MsgType.PUSH:
                verdict = Rumor(msg.sender, gen, inc, Status.DEAD, msg.addr)
                self._tell(msg.sender, msg.addr, verdict, now)
            return
        m = self.members.get(msg.sender)
        if m is None or msg.generation > m.generation:
            self._new_member(msg.sender, msg.generation, msg.addr, now)
            m = self.members[msg.sender]
        if m.generation == msg.generation:
            m.last_heard = now
            if m.status in (Status.SUSPECT, Status.DEAD) and msg.type != MsgType.PUSH:
                # It speaks, so it lives; but only it may overrule our verdict.
                # Tell it, so it refutes with a higher incarnation.
                self._tell(m.name, m.addr, m.rumor(), now)

    def _tell(self, name: str, addr: Addr, verdict: Rumor, now: float) -> None:
        """Send a member our verdict about it (at most once a round)."""
        last = self._last_told.get(name, -1e9)
        if now - last >= self.config.interval:
            self._last_told[name] = now
            tell = self._msg(MsgType.PUSH, extra_rumors=(verdict,), rumor_budget=0)
            self._send(addr, tell, now)

    def _new_member(
        self, name: str, generation: int, addr: Addr, now: float, rumor: Rumor | None = None
    ) -> None:
        old = self.members.get(name)
        if old is not None and self.state.records.get(name) is not None:
            rec = self.state.records[name]
            if rec.generation < generation:
                self.state.records.pop(name)
                self.state.touched(name)
        m = Member(name, generation, addr, status_since=now, last_heard=now)
        if rumor is not None:
            m.incarnation, m.status = rumor.incarnation, rumor.status
            m.suspectors = set(rumor.suspectors)
        self.members[name] = m
        if m.status == Status.SUSPECT:
            self._start_suspicion(m, now, confirm=False)
        self._sync_live(name)
        self._emit(EventType.JOIN, name, now)
        if m.status == Status.ALIVE:
            self._queue_rumor(name)

    # ------------------------------------------------------------------ membership

    def _apply_rumor(self, r: Rumor, now: float, reply_to: Addr | None = None) -> None:
        if r.name == self.name:
            accused = (
                r.generation == self.generation
                and r.status in (Status.SUSPECT, Status.DEAD)
                and not self.left
            )
            if accused and r.incarnation >= self.incarnation:
                # Refute (SWIM): a higher incarnation overrides the accusation.
                self.incarnation = r.incarnation + 1
                self.members[self.name].incarnation = self.incarnation
                self.local_health = min(self.config.max_local_health, self.local_health + 1)
                self.counters["refutations"] += 1
                self._queue_rumor(self.name)
                self._push_now(now)
                if reply_to is not None:  # and to the accuser, whoever our peers are
                    self._tell(self.name, reply_to, self.members[self.name].rumor(), now)
            elif accused and reply_to is not None:
                # An old verdict, already refuted, but the teller missed it.
                self._tell(self.name, reply_to, self.members[self.name].rumor(), now)
            return
        if self.state.is_tombstoned(r.name, r.generation):
            gen, inc, _ = self.state.tombstones[r.name]
            if not (r.status == Status.ALIVE and r.generation == gen and r.incarnation > inc):
                return
            # It refuted its death: a higher incarnation from the member itself.
            del self.state.tombstones[r.name]
            self._graveyard.pop(r.name, None)
        m = self.members.get(r.name)
        if m is None or r.generation > m.generation:
            if r.status in (Status.DEAD, Status.LEFT):
                return  # news of the death of someone we never knew
            self._new_member(r.name, r.generation, r.addr, now, r)
            return
        if r.generation < m.generation:
            return
        if r.rank() > m.rank():
            was = m.status
            m.incarnation, m.status, m.status_since = r.incarnation, r.status, now
            m.addr = r.addr
            if r.status == Status.SUSPECT:
                m.suspectors = set(r.suspectors)
                self._start_suspicion(m, now, confirm=True)
            elif r.status == Status.ALIVE:
                m.suspectors.clear()
                m.suspicion_deadline = 0.0
                m.last_heard = max(m.last_heard, now)
                if was != Status.ALIVE:
                    self._emit(EventType.ALIVE, m.name, now)
            elif r.status == Status.DEAD:
                self._emit(EventType.DEAD, m.name, now)
            elif r.status == Status.LEFT:
                self._emit(EventType.LEAVE, m.name, now)
            self._sync_live(m.name)
            self._queue_rumor(m.name)
            self._push_now(now)
        elif (
            r.status == Status.DEAD
            and m.status == Status.ALIVE
            and m.name not in self._probing
            and now >= self._quiet_until
            and now - m.last_heard > self._probe_timeout()
        ):
            # An older verdict: someone could not reach it. Our newer news of it
            # may be stale too (it may have died after refuting), so look.
            self._probe(m.name, now, light=True)
        elif r.rank() == m.rank() and m.status == Status.SUSPECT:
            new = set(r.suspectors) - m.suspectors
            if new:
                m.suspectors |= new
                self._update_suspicion_deadline(m)
                self._queue_rumor(m.name)

    def _start_suspicion(self, m: Member, now: float, confirm: bool) -> None:
        m.suspicion_start = now
        self._update_suspicion_deadline(m)
        self._emit(EventType.SUSPECT, m.name, now)
        if (
            confirm
            and m.name not in self._probing
            and now >= self._quiet_until
            and self.local_health == 0
        ):
            # Check it ourselves (Lifeguard's independent confirmation), with a
            # direct ping first: every hearer does this, so on a busy host the
            # checks alone could be the load that makes members look dead.
            # An unhealthy node's checks prove little, and it makes none.
            self._probe(m.name, now, light=True)

    def _update_suspicion_deadline(self, m: Member) -> None:
        """Lifeguard: timeout falls from max to min as confirmations arrive."""
        c = self.config
        n = max(1, len(self._live))
        scale = max(1.0, math.log10(n))
        lo, hi = c.suspicion_min * scale, c.suspicion_max * scale
        k = c.suspicion_confirmations
        confirmations = max(0, len(m.suspectors) - 1)
        frac = math.log(confirmations + 1) / math.log(k + 1) if k > 0 else 1.0
        timeout = max(lo, hi - (hi - lo) * min(1.0, frac))
        # Lifeguard's local health scales our probes; it scales our verdicts
        # too: a node that is itself late or failing probes waits longer.
        timeout *= 1 + self.local_health
        m.suspicion_deadline = m.suspicion_start + timeout
        self._suspects.add(m.name)

    def _declare_dead(self, m: Member, now: float) -> None:
        m.status, m.status_since = Status.DEAD, now
        m.suspicion_deadline = 0.0
        self._sync_live(m.name)
        self._emit(EventType.DEAD, m.name, now)
        self._queue_rumor(m.name)
        self._push_now(now)

    def _sync_live(self, name: str) -> None:
        m = self.members.get(name)
        if m is not None and m.live:
            self._live.add(name)
        else:
            self._live.discard(name)
        if m is not None and m.status in (Status.DEAD, Status.LEFT):
            self._departed.add(name)
        else:
            self._departed.discard(name)

    def _live_departed(self) -> set[str]:
        """Dead or left members still held (awaiting garbage collection)."""
        return {n for n in self._departed if n in self.members}

    # ------------------------------------------------------------------ failure detection

    def _neighbours(self) -> tuple[str | None, str | None]:
        return self._live.neighbours(self.name)

    def _probe_timeout(self) -> float:
        return self.config.probe_timeout * (1 + self.local_health)

    def _pull_wait(self) -> float:
        """How long a pull may take before an announcement asks again."""
        return 4 * self._probe_timeout()

    def _heartbeat_period(self) -> float:
        return self.config.interval * self.config.heartbeat_every

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _probe(self, target: str, now: float, light: bool = False) -> None:
        m = self.members.get(target)
        if m is None or not m.live:
            return
        self._probing.add(target)
        seq = self._next_seq()
        self._probes[seq] = _Probe(target, now + self._probe_timeout(), light=light)
        self.counters["probes"] += 1
        self._send(m.addr, self._msg(MsgType.PING, seq=seq, target=target), now)
        if light:
            return
        helpers = [p for p in self._random_peers(self.config.indirect_probes + 1) if p != target]
        helpers = helpers[: self.config.indirect_probes]
        self._probes[seq].helpers = len(helpers)
        for h in helpers:
            req = self._msg(MsgType.PING_REQ, seq=seq, target=target, target_addr=m.addr)
            self._send(self.members[h].addr, req, now)

    def _on_ack(self, msg: Message, now: float) -> None:
        probe = self._probes.pop(msg.seq, None)
        if probe is None:
            return
        if probe.relay_to is not None:
            self._send(probe.relay_to, self._msg(MsgType.ACK, seq=probe.relay_seq), now)
            return
        self._probing.discard(probe.target)
        self.local_health = max(0, self.local_health - 1)
        m = self.members.get(probe.target)
        if m is not None:
            m.last_heard = now

    def _check_timers(self, now: float) -> None:
        for seq, probe in list(self._probes.items()):
            if now < probe.deadline:
                continue
            del self._probes[seq]
            if probe.relay_to is not None:  # a helper that could not reach it: say so
                self._send(probe.relay_to, self._msg(MsgType.NACK, seq=probe.relay_seq), now)
                continue
            self._probing.discard(probe.target)
            m = self.members.get(probe.target)
            if m is None or not m.live or now < self._quiet_until:
                continue
            if now - m.last_heard < self._probe_timeout():
                continue  # heard from it meanwhile
            if probe.light:
                self._probe(probe.target, now)  # no answer: now ask others too
                continue
            # Lifeguard: a failed probe counts against our own health only when
            # helpers stayed silent too (no NACK): then the problem may be ours.
            missing = probe.helpers - len(probe.nackers) if probe.helpers else 1
            self.local_health = min(self.config.max_local_health, self.local_health + missing)
            self.counters["probe_failures"] += 1
            if m.status == Status.ALIVE:
                m.status, m.status_since = Status.SUSPECT, now
                m.suspectors = {self.name}
                self._start_suspicion(m, now, confirm=False)
                self._queue_rumor(m.name)
                self._push_now(now)
                self._tell(m.name, m.addr, m.rumor(), now)
            elif m.status == Status.SUSPECT and self.name not in m.suspectors:
                m.suspectors.add(self.name)  # our own confirmation
                self._update_suspicion_deadline(m)
                self._queue_rumor(m.name)
                self._push_now(now)
        if now < self._quiet_until:
            return
        for name in sorted(self._suspects):
            m = self.members.get(name)
            if m is None or m.status != Status.SUSPECT or not m.suspicion_deadline:
                self._suspects.discard(name)
            elif now >= m.suspicion_deadline:
                if m.last_heard > m.suspicion_start:
                    # It spoke to us after we came to suspect it: alive, only
                    # slow to refute (on an overloaded host, say). Tell it again
                    # and give it another term rather than a false death.
                    self.counters["suspicions_extended"] += 1
                    m.suspicion_start = now
                    self._update_suspicion_deadline(m)
                    self._tell(m.name, m.addr, m.rumor(), now)
                    continue
                self._suspects.discard(name)
                self._declare_dead(m, now)

    def _silence(self) -> float:
        return self.config.silence_periods * self._heartbeat_period() * (1 + self.local_health)

    def _silence_deadline(self) -> float | None:
        pred = self._predecessor
        if pred is None or pred in self._probing or self.config.heartbeat_every <= 0:
            return None
        m = self.members.get(pred)
        if m is None or m.status != Status.ALIVE:
            return None
        return max(m.last_heard + self._silence(), self._quiet_until)

    def _watch_predecessor(self, now: float) -> None:
        if self.config.heartbeat_every <= 0:
            return
        pred, _ = self._neighbours()
        if pred != self._predecessor:
            self._predecessor = pred
            if pred is not None:
                # A new duty: give it a full silence period before judging.
                m = self.members[pred]
                m.last_heard = max(m.last_heard, now)
        if pred is None or pred in self._probing or now < self._quiet_until:
            return
        m = self.members[pred]
        if m.status == Status.ALIVE and now - m.last_heard > self._silence():
            self._probe(pred, now)

    # ------------------------------------------------------------------ timers

    def tick(self, now: float) -> None:
        if self.left:
            return
        due = self._next_work_round()
        self._clock = max(self._clock, now)
        if now - due > self.config.lag_threshold:
            # Our own loop stalled (GC, GPU stall, overload): the silence we saw
            # is ours, not theirs. Give everyone fresh credit and accuse nobody.
            self.counters["local_stalls"] += 1
            self.local_health = min(self.config.max_local_health, self.local_health + 2)
            for m in self.members.values():
                m.last_heard = max(m.last_heard, now)
            for name in self._suspects:
                suspect = self.members.get(name)
                if suspect is not None and suspect.suspicion_deadline:
                    suspect.suspicion_deadline = max(
                        suspect.suspicion_deadline, now + self._probe_timeout()
                    )
            self._probes = {s: p for s, p in self._probes.items() if p.relay_to is not None}
            self._probing.clear()
            self._quiet_until = now + self._probe_timeout()
            due = now
        elif now - due > self.config.lag_threshold / 4:
            # Late, though not stalled: the host is busy (CPU starvation makes
            # every peer look slow), so trust our own timeouts less. Acks
            # bring it back down as the load passes.
            self.counters["late_ticks"] += 1
            self.local_health = min(self.config.max_local_health, self.local_health + 1)
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
            or (r % c.reconnect_every == 0 and bool(self._graveyard or self._departed))
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
            or (self._seeds and len(self._live) <= 1)
        ):
            return self._next_round
        k = 0
        while k < self._GC_EVERY and not self._round_has_work(self._round + 1 + k):
            k += 1
        return self._next_round + k * self.config.interval

    def _do_round(self, now: float) -> None:
        self._round += 1
        c = self.config
        for name in sorted(self._suspects):
            m = self.members.get(name)
            if m is not None and m.status == Status.SUSPECT and self.name in m.suspectors:
                # We accuse it: tell it directly, so a live member whose
                # refutation our gossip keeps missing (a lossy link) can
                # refute straight back to us before the timeout.
                self._tell(name, m.addr, m.rumor(), now)
        alone = len(self._live) <= 1
        if alone and self._seeds:
            for seed in self._seeds:  # still alone: keep knocking on the seeds
                self._send_syn(seed, now)
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

    def _probe_a_stranger(self, now: float) -> None:
        """SWIM's random probe as a backstop for the ring: views can differ, and
        a member nobody watches in our view must still be checked now and then."""
        if now < self._quiet_until:
            return
        quiet = self.random_probe_period()
        for name in self._random_peers(3):
            m = self.members[name]
            if (
                m.status == Status.ALIVE
                and name not in self._probing
                and (now - m.last_heard > quiet)
            ):
                self._probe(name, now, light=True)
                return

    def random_probe_period(self) -> float:
        return self.config.random_probe_every * self.config.interval

    def _knock_on_the_dead(self, now: float) -> None:
        """A hash-only SYN to one dead or removed member; if it is alive after
        all (a healed partition), the verdicts it triggers lead to refutation."""
        candidates = sorted(self._graveyard) + sorted(
            n for n in self._departed if self.members[n].status == Status.DEAD
        )
        if not candidates:
            return
        name = self.rng.choice(candidates)
        addr = self._graveyard.get(name) or self.members[name].addr
        self._send(addr, self._msg(MsgType.SYN, state_hash=self.state.hash), now)

    def _collect_garbage(self, now: float) -> None:
        c = self.config
        wait = self._pull_wait()
        self._pulls = {k: v for k, v in self._pulls.items() if now - v[1] < wait}
        for name in sorted(self._live_departed()):
            m = self.members[name]
            if now - m.status_since >= c.dead_grace:
                del self.members[m.name]
                self._live.discard(m.name)
                self._departed.discard(m.name)
                self.state.remove_record(m.name, m.incarnation, now)
                self.state.tombstones[m.name] = (m.generation, m.incarnation, now)
                self._graveyard[m.name] = m.addr
                self._bc_rumors.pop(m.name, None)
                self._bc_records.pop(m.name, None)
                self._emit(EventType.REMOVED, m.name, now)
        for name, (_, _, at) in list(self.state.tombstones.items()):
            if now - at >= c.tombstone_ttl:
                del self.state.tombstones[name]
                self._graveyard.pop(name, None)
        for name in sorted(self.state.with_tombstones):
            rec = self.state.records.get(name)
            if rec is None:
                self.state.with_tombstones.discard(name)
                continue
            if rec.collect_tombstones(now, c.key_gc_grace):
                self.state.touched(name)
            if not any(e.deleted for e in rec.entries.values()):
                self.state.with_tombstones.discard(name)

    # ------------------------------------------------------------------ anti-entropy

    def _send_syn(self, dst: Addr, now: float, peer: str | None = None) -> None:
        if peer is not None:
            last = self._last_syn_to.get(peer, -1e9)
            if now - last < self.config.interval:
                return  # at most one SYN per peer per round
            self._last_syn_to[peer] = now
        entries, lo, hi = self.state.digest_window(self._digest_cursor, self.config.digest_window)
        self._digest_cursor = hi  # None wraps to the start next time
        hashes = tuple((n, self.state.crdt_hash(n)) for n in sorted(self.state.crdts))
        msg = self._msg(
            MsgType.SYN,
            state_hash=self.state.hash,
            digest=tuple(entries),
            lo=lo,
            hi=hi,
            crdt_hashes=hashes,
        )
        self._send(dst, msg, now)

    def _on_syn(self, msg: Message, now: float) -> None:
        if not msg.digest:
            # A hash-only probe: answer with a real SYN only if we differ.
            if msg.state_hash != self.state.hash:
                self._send_syn(msg.addr, now, peer=msg.sender)
            return
        theirs = {e.name: e for e in msg.digest}
        want: list[DigestEntry] = []
        deltas: list[NodeDelta] = []
        rumors: list[Rumor] = []
        for e in msg.digest:
            rec = self.state.records.get(e.name)
            if rec is None:
                if self.state.is_tombstoned(e.name, e.generation):
                    gen, inc, _ = self.state.tombstones[e.name]
                    rumors.append(Rumor(e.name, gen, inc, Status.DEAD, msg.addr))
                elif e.name != self.name:
                    # Generation 0 (never issued) means "I have no record at all".
                    want.append(DigestEntry(e.name, 0, 0))
                continue
            if rec.generation > e.generation or (
                rec.generation == e.generation and rec.max_version > e.max_version
            ):
                since = e.max_version if rec.generation == e.generation else 0
                deltas.append(rec.delta_since(since, reset=rec.generation != e.generation))
            elif rec.generation < e.generation or rec.max_version < e.max_version:
                want.append(rec.digest())
        for name in self.state.names_in(msg.lo, msg.hi):
            if name not in theirs:
                deltas.append(self.state.records[name].delta_since(0, reset=True))
        hashes = dict(msg.crdt_hashes)
        crdts = tuple(
            (n, encode(v))
            for n, v in sorted(self.state.crdts.items())
            if hashes.get(n) != self.state.crdt_hash(n)
        )
        if not (want or deltas or crdts or rumors) and msg.state_hash == self.state.hash:
            return
        reply = self._msg(
            MsgType.SYNACK,
            digest=tuple(want),
            deltas=tuple(deltas),
            crdts=crdts,
            extra_rumors=tuple(rumors),
        )
        self._send(msg.addr, reply, now)
        if msg.state_hash != self.state.hash and not want and not deltas and not crdts:
            # They lack nothing we could see in their window: look at ours.
            self._send_syn(msg.addr, now, peer=msg.sender)

    def _deltas_for(self, wanted: tuple[DigestEntry, ...]) -> list[NodeDelta]:
        out = []
        for e in wanted:
            rec = self.state.records.get(e.name)
            if rec is None:
                continue
            if rec.generation > e.generation:
                out.append(rec.delta_since(0, reset=True))
            elif rec.generation == e.generation and rec.max_version > e.max_version:
                out.append(rec.delta_since(e.max_version))
        return out

    def _apply_payload(self, msg: Message, decoded: list[tuple[str, CRDT]], now: float) -> None:
        """Apply deltas, CRDTs (already decoded and checked) and announces."""
        gaps: list[DigestEntry] = []
        forward = False
        for d in msg.deltas:
            if d.name == self.name:
                continue
            outcome, changed = self.state.apply_delta(d, now)
            if outcome == "gap":
                rec = self.state.records.get(d.name)
                gaps.append(rec.digest() if rec else DigestEntry(d.name, 0, 0))
                continue
            if outcome in ("stale", "tombstoned"):
                continue
            if d.name not in self.members or self.members[d.name].generation < d.generation:
                self._new_member(d.name, d.generation, d.addr, now)
            if changed:
                self._emit(EventType.UPDATE, d.name, now, tuple(changed))
                self._queue_record(d.name, d.from_version if not d.reset else 0)
                forward = True
        for name, value in decoded:
            mine = self.state.crdts.get(name)
            if mine is None:
                continue
            before = self.state.crdt_hash(name)
            mine.merge(value)
            self.state.crdt_changed(name)
            if self.state.crdt_hash(name) != before:
                self._emit(EventType.CRDT, name, now)
                self._queue_crdt(name, value)
                forward = True
        for a in msg.announces:
            if a.entry.name == self.name or self.state.is_tombstoned(
                a.entry.name, a.entry.generation
            ):
                continue
            rec = self.state.records.get(a.entry.name)
            if (
                rec is None
                or rec.generation < a.entry.generation
                or (rec.generation == a.entry.generation and rec.max_version < a.entry.max_version)
            ):
                # Announcements of one change arrive from several peers at once:
                # pull it once, unless that pull has had time to fail.
                asked = self._pulls.get(a.entry.name)
                version = (a.entry.generation, a.entry.max_version)
                if asked is not None and asked[0] >= version and now - asked[1] < self._pull_wait():
                    continue
                self._pulls[a.entry.name] = (version, now)
                gaps.append(rec.digest() if rec else DigestEntry(a.entry.name, 0, 0))
        if gaps:
            # Pull what we are missing from the node that knows it.
            # An empty range (lo == hi): only the listed entries.
            first = gaps[0].name
            pull = self._msg(
                MsgType.SYN, state_hash=self.state.hash, digest=tuple(gaps), lo=first, hi=first
            )
            self._send(msg.addr, pull, now)
        if forward:
            self._push_now(now)

    # ------------------------------------------------------------------ dissemination

    def _retransmit_limit(self) -> int:
        n = len(self._live)
        return self.config.retransmit_mult * max(1, math.ceil(math.log10(n + 1)))

    def _queue_record(self, name: str, from_version: int) -> None:
        if self.config.retransmit_mult <= 0:
            return
        cur = self._bc_records.get(name)
        fv = from_version if cur is None else min(cur[0], from_version)
        self._bc_records[name] = [fv, self._retransmit_limit()]

    def _queue_rumor(self, name: str) -> None:
        if self.config.retransmit_mult <= 0:
            return
        self._bc_rumors[name] = self._retransmit_limit()

    def _queue_crdt(self, name: str, delta: CRDT) -> None:
        if self.config.retransmit_mult <= 0:
            return
        cur = self._bc_crdts.get(name)
        if cur is None:
            joined = delta.copy()
        else:
            joined = cur[0]
            joined.merge(delta)
        self._bc_crdts[name] = (joined, self._retransmit_limit())

    def _own_changed(self, now: float) -> None:
        self.state.touched(self.name)
        self._emit(EventType.UPDATE, self.name, now)
        cur = self._bc_records.get(self.name)
        self._queue_record(self.name, self.own.max_version - 1 if cur is None else cur[0])
        self._push_now(now)

    def _push_now(self, now: float) -> None:
        """Eager push: send pending updates to `eager_fanout` random peers right away."""
        if not self.config.eager_push:
            return
        self._push_to(self._random_peers(self.config.eager_fanout), now)

    def _push_to(self, peers: list[str], now: float) -> None:
        """One PUSH of pending updates, built and encoded once, sealed per peer;
        every item it carries is charged one transmission per peer."""
        if not peers:
            return
        copies = len(peers)
        budget = self.config.max_datagram - SEAL_OVERHEAD - _MSGPACK_SLACK - 64
        deltas: list[NodeDelta] = []
        announces: list[Announce] = []
        for name, item in sorted(self._bc_records.items(), key=lambda kv: -kv[1][1]):
            rec = self.state.records.get(name)
            if rec is None:
                self._bc_records.pop(name, None)
                continue
            delta = rec.delta_since(item[0])
            size = len(_packb(delta_wire(delta)))
            if size <= budget:
                deltas.append(delta)
                budget -= size
            else:
                ann = Announce(rec.digest(), rec.addr)
                size = len(_packb(announce_wire(ann)))
                if size > budget:
                    continue
                announces.append(ann)
                budget -= size
            item[1] -= copies
            if item[1] <= 0:
                del self._bc_records[name]
        crdts: list[tuple[str, bytes]] = []
        for name, (delta_crdt, left) in sorted(self._bc_crdts.items()):
            blob = encode(delta_crdt)
            if len(blob) + 16 > budget:
                if not crdts and not deltas:
                    # Too big for any datagram: the next anti-entropy SYN carries
                    # its hash and the full state follows over a stream.
                    del self._bc_crdts[name]
                continue
            crdts.append((name, blob))
            budget -= len(blob) + 16
            if left <= copies:
                del self._bc_crdts[name]
            else:
                self._bc_crdts[name] = (delta_crdt, left - copies)
        msg = self._msg(
            MsgType.PUSH,
            deltas=tuple(deltas),
            announces=tuple(announces),
            crdts=tuple(crdts),
            rumor_budget=budget,
            copies=copies,
        )
        if msg.deltas or msg.announces or msg.crdts or msg.rumors:
            plaintext = encode_message(msg)
            for peer in peers:
                self._send_plaintext(self.members[peer].addr, plaintext)

    def _take_rumors(
        self, budget: int, first: str | None = None, copies: int = 1
    ) -> tuple[Rumor, ...]:
        out: list[Rumor] = []
        order = sorted(self._bc_rumors.items(), key=lambda kv: -kv[1])
        if first is not None and first in self._bc_rumors:
            order.sort(key=lambda kv: kv[0] != first)
        for name, left in order:
            m = self.members.get(name)
            if m is None:
                del self._bc_rumors[name]
                continue
            r = m.rumor()
            size = len(_packb(rumor_wire(r)))
            if size > budget:
                break
            out.append(r)
            budget -= size
            if left <= copies:
                del self._bc_rumors[name]
            else:
                self._bc_rumors[name] = left - copies
        return tuple(out)

    # ------------------------------------------------------------------ sending

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
            rumor_budget = self.config.max_datagram - SEAL_OVERHEAD - _MSGPACK_SLACK - 200
            if mtype in (MsgType.SYN, MsgType.SYNACK, MsgType.ACK2):
                rumor_budget = 300
        target = fields.get("target")
        rumors = extra_rumors + self._take_rumors(rumor_budget, first=target, copies=copies)
        return Message(mtype, self.name, self.generation, self.addr, rumors=rumors, **fields)

    def _send(self, dst: Addr, msg: Message, now: float) -> None:
        self._send_plaintext(dst, encode_message(msg))

    def _send_plaintext(self, dst: Addr, plaintext: bytes) -> None:
        data = self._sealer.seal(plaintext)
        if len(data) <= self.config.max_datagram:
            self._outbox.append(Datagram(dst, data))
            self.counters["datagrams_out"] += 1
        elif len(data) <= self.config.max_stream_frame:
            self._outbox.append(StreamFrame(dst, data))
            self.counters["frames_out"] += 1
        else:
            self.counters["too_large_to_send"] += 1
            return
        self.counters["bytes_out"] += len(data)

    def _random_peers(self, k: int) -> list[str]:
        return self._live.sample(self.rng, k, exclude=self.name)

    def _emit(self, etype: EventType, member: str, now: float, keys: tuple[str, ...] = ()) -> None:
        self._events.append(GossipEvent(etype, member, now, keys))


def _packb(obj: Any) -> bytes:
    import msgpack

    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out
