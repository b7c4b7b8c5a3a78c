"""Membership: what messages and rumors tell us about members.

A sender is alive at its generation; a rumor is a claim about a member's
(generation, incarnation, status), applied when it outranks what we hold and
the move is legal (`status.set_status`). A member accused of being suspect or
dead that hears of it refutes with a higher incarnation (SWIM).
"""

from __future__ import annotations

from .detector import FailureDetection
from .events import EventType
from .status import Member, legal
from .wire import Addr, Message, MsgType, Rumor, Status


class Membership(FailureDetection):
    """What messages and rumors tell us about members."""

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
        elif msg.type != MsgType.PUSH:
            # A process of that name below the generation we hold (its restart
            # went back in time: a wiped disk, a clock set back). Tell it what
            # we hold, so it moves above; until then we credit it nothing.
            self._tell(m.name, msg.addr, m.rumor(), now)

    def _hear_of_self(self, generation: int, now: float) -> bool:
        """Others hold our name at `generation`; if that is above ours, a
        previous process of ours got there, and we move above it (else our
        news would be stale everywhere, forever). True if we moved."""
        if generation <= self.generation or self.left:
            return False
        old = self.generation
        self.generation = generation + 1
        self.incarnation = 0
        self.members[self.name] = Member(
            self.name, self.generation, self.addr, status_since=now, last_heard=now
        )
        self.table.sync(self.name)
        # The record starts over at the new generation with the same keys.
        keep = sorted(
            ((e.version, k, e.value) for k, e in self.own.entries.items() if not e.deleted),
            key=lambda t: t[0],
        )
        self.own = self.state.add_record(self.name, self.generation, self.addr, now)
        for _, key, value in keep:
            self.own.set_local(key, value, now)
        self.state.touched(self.name)
        self.counters["generation_moves"] += 1
        self._emit(EventType.GENERATION, self.name, now, (str(old), str(self.generation)))
        self._queue_rumor(self.name)
        self._queue_record(self.name, 0)
        self._push_now(now)
        return True

    def _new_member(
        self,
        name: str,
        generation: int,
        addr: Addr,
        now: float,
        rumor: Rumor | None = None,
        announce: bool = True,
    ) -> None:
        """Know a member first heard of now. `announce=False` (a warm start:
        the member is part of the state we start from, known to every peer,
        not news) emits no JOIN event and queues no rumor of it."""
        old = self.members.get(name)
        if old is not None and self.state.records.get(name) is not None:
            rec = self.state.records[name]
            if rec.generation < generation:
                self.state.drop_record(name)
        m = Member(name, generation, addr, status_since=now, last_heard=now)
        if rumor is not None:
            m.incarnation, m.status = rumor.incarnation, rumor.status
            m.suspectors = frozenset(rumor.suspectors)
        self.members[name] = m
        if m.status == Status.SUSPECT:
            self._start_suspicion(m, now, confirm=False)
        self.table.sync(name)
        if announce:
            self._emit(EventType.JOIN, name, now)
            if m.status == Status.ALIVE:
                self._queue_rumor(name)

    def _apply_rumor(self, r: Rumor, now: float, reply_to: Addr | None = None) -> None:
        if r.name == self.name:
            if self._hear_of_self(r.generation, now):
                return
            accused = (
                r.generation == self.generation
                and r.status in (Status.SUSPECT, Status.DEAD)
                and not self.left
            )
            if accused and r.incarnation >= self.incarnation:
                # Refute (SWIM): a higher incarnation overrides the accusation.
                self.incarnation = r.incarnation + 1
                self.members[self.name].incarnation = self.incarnation
                self._health(1, now)
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
            if not legal(m.status, r.status, r.incarnation > m.incarnation):
                return  # news of a member whose generation is over (it left)
            was = m.status
            self.table.set_status(m, r.status, now, r.incarnation)
            m.addr = r.addr
            if r.status == Status.SUSPECT:
                m.suspectors = frozenset(r.suspectors)
                self._start_suspicion(m, now, confirm=True)
            elif r.status == Status.ALIVE:
                m.suspectors = frozenset()
                m.suspicion_deadline = 0.0
                m.last_heard = max(m.last_heard, now)
                if was != Status.ALIVE:
                    self._emit(EventType.ALIVE, m.name, now)
            elif r.status == Status.DEAD:
                self._emit(EventType.DEAD, m.name, now)
            elif r.status == Status.LEFT:
                self._emit(EventType.LEAVE, m.name, now)
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
            new = frozenset(r.suspectors) - m.suspectors
            if new:
                m.suspectors = m.suspectors | new
                self._update_suspicion_deadline(m)
                self._queue_rumor(m.name)
