"""Anti-entropy: scuttlebutt reconciliation, pulls and garbage collection.

Digests are exchanged as SYN -> SYNACK -> ACK2 (van Renesse et al., 2008;
Quickwit chitchat). A digest is a rotating window of at most `digest_window`
entries, so no message grows with N, and an idle peer whose 8-byte state hash
equals ours stays silent. Records travel as complete version ranges; what is
too large for a datagram is announced and pulled (over TCP if need be).
Removed members are knocked on now and then, so the halves of a healed
partition find each other (Serf's reconnect).
"""

from __future__ import annotations

import msgpack

from crdt import CRDT, ContextDigest, DecodeError, encode, unpack_limited

from .clock import Clocks
from .errors import RemoteProtocolError
from .events import EventType
from .wire import Addr, DigestEntry, Message, MsgType, NodeDelta, Rumor, Status


class Inbox:
    """A message's CRDT parts, decoded and checked before anything is applied:
    states or deltas to join, and peers' context digests to answer."""

    __slots__ = ("crdts", "digests")

    def __init__(
        self,
        crdts: list[tuple[str, CRDT]] | None = None,
        digests: list[tuple[str, ContextDigest]] | None = None,
    ) -> None:
        self.crdts = crdts or []
        self.digests = digests or []


#: The inbox of a message that carries no CRDT part (almost all of them).
EMPTY = Inbox()


def _digest_blob(value: CRDT) -> bytes | None:
    """A causal CRDT's context digest as msgpack, or None for other types."""
    digest = getattr(value, "context_digest", None)
    if digest is None:
        return None
    out: bytes = msgpack.packb(digest().to_wire(), use_bin_type=True)
    return out


class AntiEntropy(Clocks):
    """The reconciliation half of a GossipNode."""

    def _pull_wait(self) -> float:
        """How long a pull may take before an announcement asks again."""
        return 4 * self._probe_timeout()

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
            if e.name == self.name and self._hear_of_self(e.generation, now):
                continue
            rec = self.state.records.get(e.name)
            if rec is None:
                if self.state.is_tombstoned(e.name, e.generation):
                    gen, inc, _ = self.state.tombstones[e.name]
                    # The removed member's own address (not the asker's: a
                    # rumor's address replaces the member's where it is applied).
                    addr = self._graveyard.get(e.name)
                    if addr is not None:
                        rumors.append(Rumor(e.name, gen, inc, Status.DEAD, addr))
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
        crdts, digests = self._crdts_for(dict(msg.crdt_hashes))
        if not (want or deltas or crdts or digests or rumors) and msg.state_hash == self.state.hash:
            return
        reply = self._msg(
            MsgType.SYNACK,
            digest=tuple(want),
            deltas=tuple(deltas),
            crdts=crdts,
            crdt_digests=digests,
            extra_rumors=tuple(rumors),
        )
        self._send(msg.addr, reply, now)
        if msg.state_hash != self.state.hash and not (want or deltas or crdts or digests):
            # They lack nothing we could see in their window: look at ours.
            self._send_syn(msg.addr, now, peer=msg.sender)

    def _crdts_for(
        self, hashes: dict[str, int]
    ) -> tuple[tuple[tuple[str, bytes], ...], tuple[tuple[str, bytes], ...]]:
        """For each CRDT whose hash differs from the peer's: the whole state,
        or, for a causal CRDT whose context digest is smaller than its state,
        the digest, which the peer answers with exactly what we lack and its
        own digest (`_answer_digests`): two small deltas instead of two states."""
        crdts: list[tuple[str, bytes]] = []
        digests: list[tuple[str, bytes]] = []
        for n, v in sorted(self.state.crdts.items()):
            theirs = hashes.get(n)
            if theirs == self.state.crdt_hash(n):
                continue
            blob = encode(v)
            if self.config.crdt_digest_sync and theirs is not None:
                digest = _digest_blob(v)
                if digest is not None and len(digest) < len(blob):
                    digests.append((n, digest))
                    continue
            crdts.append((n, blob))
        return tuple(crdts), tuple(digests)

    def _decode_digests(self, msg: Message) -> list[tuple[str, ContextDigest]]:
        """Part of validation: every digest must parse, for a causal CRDT we hold."""
        out = []
        for name, blob in msg.crdt_digests:
            mine = self.state.crdts.get(name)
            if mine is None or not hasattr(mine, "delta_since"):
                raise RemoteProtocolError("bad_payload", f"a digest of {name!r}, not causal here")
            try:
                digest = ContextDigest.from_wire(unpack_limited(blob, self.config.max_stream_frame))
            except DecodeError as e:
                raise RemoteProtocolError("bad_payload", f"digest of {name!r}: {e}") from None
            out.append((name, digest))
        return out

    def _answer_digests(self, msg: Message, inbox: Inbox, now: float) -> None:
        """Send the peer what its digests show it lacks (after joining what it
        sent, so our answer covers both sides); a SYNACK's digest is answered
        with ours too, so the peer sends back what we lack."""
        deltas: list[tuple[str, bytes]] = []
        ours: list[tuple[str, bytes]] = []
        for name, digest in inbox.digests:
            mine = self.state.crdts[name]
            delta = mine.delta_since(digest)  # type: ignore[attr-defined]
            if delta.context_digest().context.dot_count():
                deltas.append((name, encode(delta)))
            if msg.type == MsgType.SYNACK:
                blob = _digest_blob(mine)
                if blob is not None:
                    ours.append((name, blob))
        if not (deltas or ours):
            return
        kind = MsgType.ACK2 if msg.type == MsgType.SYNACK else MsgType.PUSH
        self._send(msg.addr, self._msg(kind, crdts=tuple(deltas), crdt_digests=tuple(ours)), now)

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

    def _apply_payload(self, msg: Message, inbox: Inbox, now: float) -> None:
        """Apply deltas, CRDTs (already decoded and checked) and announces;
        answer the peer's CRDT digests."""
        gaps: list[DigestEntry] = []
        forward = False
        for d in msg.deltas:
            if d.name == self.name:
                self._hear_of_self(d.generation, now)
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
        for name, value in inbox.crdts:
            mine = self.state.crdts.get(name)
            if mine is None:
                continue
            before = self.state.crdt_hash(name)
            self._witness(value, now)
            mine.merge(value)
            self.state.crdt_changed(name)
            if self.state.crdt_hash(name) != before:
                self._emit(EventType.CRDT, name, now)
                self._queue_crdt(name, value)
                forward = True
        for a in msg.announces:
            if a.entry.name == self.name:
                self._hear_of_self(a.entry.generation, now)
                continue
            if self.state.is_tombstoned(a.entry.name, a.entry.generation):
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
        if inbox.digests:
            self._answer_digests(msg, inbox, now)
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

    def _knock_on_the_dead(self, now: float) -> None:
        """A hash-only SYN to one dead or removed member; if it is alive after
        all (a healed partition), the verdicts it triggers lead to refutation."""
        candidates = sorted(self._graveyard) + sorted(
            n for n in self.table.departed if self.members[n].status == Status.DEAD
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
        for name in sorted(self.table.live_departed()):
            m = self.members[name]
            if now - m.status_since >= c.dead_grace:
                self.table.remove(m.name)
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
