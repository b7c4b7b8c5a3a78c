"""Failure detection: the probe loop, suspicion and local health.

SWIM (Das et al., 2002) with Lifeguard (Dadgar et al., 2018): each node
heartbeats its successor on a hash ring and watches its predecessor; silence
triggers a direct ping plus `indirect_probes` ping-reqs in parallel; if all
fail the member becomes suspect, and the suspicion timeout shrinks from
`suspicion_max` towards `suspicion_min` as other nodes independently confirm.
A suspect refutes by raising its incarnation.

Local health (Lifeguard): a node whose own ticks run late, or whose probes
fail with no helper's NACK, waits longer before accusing anyone or declaring
a suspect dead, checks no one else's suspicions, and after a stall gives
every member fresh credit. A suspect that still speaks to us gets another
term, not a death.
"""

from __future__ import annotations

import math
from typing import Any

from .base import Probe
from .broadcast import Dissemination
from .events import EventType
from .status import Member
from .wire import Message, MsgType, Status


class FailureDetection(Dissemination):
    """The detector's half of a GossipNode (its state is declared in Shared)."""

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
        n = max(1, len(self.table.live))
        scale = max(1.0, math.log10(n))
        lo, hi = c.suspicion_min * scale, c.suspicion_max * scale
        # Confirmations can only come from members other than the suspect and
        # its first accuser: a 3-node cluster can gather one, a 2-node none
        # (memberlist likewise drops to the minimum when too few could confirm).
        k = min(c.suspicion_confirmations, max(0, n - 2))
        confirmations = max(0, len(m.suspectors) - 1)
        frac = math.log(confirmations + 1) / math.log(k + 1) if k > 0 else 1.0
        timeout = max(lo, hi - (hi - lo) * min(1.0, frac))
        # Lifeguard's local health scales our probes; it scales our verdicts
        # too: a node that is itself late or failing probes waits longer.
        timeout *= 1 + self.local_health
        m.suspicion_deadline = m.suspicion_start + timeout
        self._suspects.add(m.name)

    def _declare_dead(self, m: Member, now: float) -> None:
        self.table.set_status(m, Status.DEAD, now)
        m.suspicion_deadline = 0.0
        self._emit(EventType.DEAD, m.name, now)
        self._queue_rumor(m.name)
        self._push_now(now)

    def _neighbours(self) -> tuple[str | None, str | None]:
        return self.table.live.neighbours(self.name)

    def _probe_timeout(self) -> float:
        return self.config.probe_timeout * (1 + self.local_health)

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
        self._probes[seq] = Probe(
            target, now + self._probe_timeout(), light=light, generation=m.generation
        )
        self.counters["probes"] += 1
        ping = self._msg(MsgType.PING, seq=seq, target=target, target_gen=m.generation)
        self._send(m.addr, ping, now)
        if light:
            return
        helpers = [p for p in self._random_peers(self.config.indirect_probes + 1) if p != target]
        helpers = helpers[: self.config.indirect_probes]
        self._probes[seq].helpers = len(helpers)
        for h in helpers:
            req = self._msg(
                MsgType.PING_REQ,
                seq=seq,
                target=target,
                target_addr=m.addr,
                target_gen=m.generation,
            )
            self._send(self.members[h].addr, req, now)

    def _on_ack(self, msg: Message, now: float) -> None:
        probe = self._probes.get(msg.seq)
        if probe is None:
            return
        if msg.sender == probe.target and probe.generation not in (0, msg.generation):
            # Another process of that name answered (a restart): it vouches
            # for itself, not for the generation we probe. (A relayed ack
            # comes from the helper, which made the same check.)
            self.counters["acks_other_generation"] += 1
            return
        del self._probes[msg.seq]
        if probe.relay_to is not None:
            self._send(probe.relay_to, self._msg(MsgType.ACK, seq=probe.relay_seq), now)
            return
        self._probing.discard(probe.target)
        self._health(-1, now)
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
            self._health(missing, now)
            self.counters["probe_failures"] += 1
            if m.status == Status.ALIVE:
                self.table.set_status(m, Status.SUSPECT, now)
                m.suspectors = frozenset((self.name,))
                self._start_suspicion(m, now, confirm=False)
                self._queue_rumor(m.name)
                self._push_now(now)
                self._tell(m.name, m.addr, m.rumor(), now)
            elif m.status == Status.SUSPECT and self.name not in m.suspectors:
                m.suspectors = m.suspectors | {self.name}  # our own confirmation
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

    def _health(self, change: int, now: float) -> None:
        """Lifeguard's local health, moved by `change` within 0..max_local_health."""
        self.local_health = min(self.config.max_local_health, max(0, self.local_health + change))
        if change > 0:
            self._health_raised_at = now

    def _recover_health(self, now: float) -> None:
        """One step back towards 0 per `local_health_decay` seconds with no new
        reason to raise it. Lifeguard lowers it on each successful probe, and a
        node whose ring heartbeats keep everyone quiet makes few probes: without
        this, one stall (a model loading) would slow every later detection."""
        decay = self.config.local_health_decay
        if self.local_health and decay > 0 and now - self._health_raised_at >= decay:
            self.local_health -= 1
            self._health_raised_at = now

    def _on_nack(self, msg: Message) -> None:
        probe = self._probes.get(msg.seq)
        if probe is not None and probe.relay_to is None and len(probe.nackers) < probe.helpers:
            probe.nackers.add(msg.sender)  # a duplicated NACK counts once

    def _on_ping_req(self, msg: Message, now: float) -> None:
        assert msg.target_addr is not None
        seq = self._next_seq()
        # Give up a little before the asker does, so our NACK reaches it in time.
        self._probes[seq] = Probe(
            msg.target,
            now + 0.8 * self._probe_timeout(),
            relay_to=msg.addr,
            relay_seq=msg.seq,
            generation=msg.target_gen,
        )
        ping = self._msg(MsgType.PING, seq=seq, target=msg.target, target_gen=msg.target_gen)
        self._send(msg.target_addr, ping, now)

    def _check_own_lateness(self, now: float, due: float) -> float:
        """Lifeguard's view of our own process, from how late this tick is;
        returns when the round is now due."""
        if now - due > self.config.lag_threshold:
            # Our own loop stalled (GC, GPU stall, overload): the silence we saw
            # is ours, not theirs. Give everyone fresh credit and accuse nobody.
            self.counters["local_stalls"] += 1
            self._health(2, now)
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
            return now
        if now - due > self.config.lag_threshold / 4:
            # Late, though not stalled: the host is busy (CPU starvation makes
            # every peer look slow), so trust our own timeouts less. Acks
            # bring it back down as the load passes.
            self.counters["late_ticks"] += 1
            self._health(1, now)
        return due

    def _tell_the_accused(self, now: float) -> None:
        for name in sorted(self._suspects):
            m = self.members.get(name)
            if m is not None and m.status == Status.SUSPECT and self.name in m.suspectors:
                # We accuse it: tell it directly, so a live member whose
                # refutation our gossip keeps missing (a lossy link) can
                # refute straight back to us before the timeout.
                self._tell(name, m.addr, m.rumor(), now)

    def _detector_deadline(self, t: float) -> float:
        """The earliest of `t` and every detector timer."""
        watch = self._silence_deadline()
        if watch is not None:
            t = min(t, watch)
        for p in self._probes.values():
            t = min(t, p.deadline)
        for name in self._suspects:
            m = self.members.get(name)
            if m is not None and m.status == Status.SUSPECT and m.suspicion_deadline:
                t = min(t, max(m.suspicion_deadline, self._quiet_until))
        return t
