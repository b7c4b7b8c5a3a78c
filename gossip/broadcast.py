"""Dissemination: what is pushed, to whom, and how many more times.

A local change or newly learned state is pushed at once to `eager_fanout`
random peers (infect-and-forward), then to `fanout` peers on later rounds, up
to retransmit_mult * ceil(log10(N+1)) copies in all (memberlist's
TransmitLimitedQueue). Queues hold what to send, never encoded copies: items
are rebuilt from current state at send time, so a queued record always goes
out at its newest version. Rumors ride along on every message (SWIM's
piggybacking), most-needed first.
"""

from __future__ import annotations

import math

from crdt import CRDT, encode

from .base import MSGPACK_SLACK
from .crypto import SEAL_OVERHEAD
from .events import EventType
from .sync import AntiEntropy
from .wire import (
    Announce,
    MsgType,
    NodeDelta,
    Rumor,
    announce_wire,
    delta_wire,
    encode_message,
    packb,
    rumor_wire,
)


class Dissemination(AntiEntropy):
    """The broadcast queues' half of a GossipNode."""

    def _retransmit_limit(self) -> int:
        n = len(self.table.live)
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

    def _own_changed(self, now: float, since: int | None = None) -> None:
        """Our record changed (above version `since`; default: the last write)."""
        self.state.touched(self.name)
        self._emit(EventType.UPDATE, self.name, now)
        cur = self._bc_records.get(self.name)
        fv = self.own.max_version - 1 if since is None else since
        self._queue_record(self.name, fv if cur is None else min(cur[0], fv))
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
        budget = self.config.max_datagram - SEAL_OVERHEAD - MSGPACK_SLACK - 64
        deltas: list[NodeDelta] = []
        announces: list[Announce] = []
        for name, item in sorted(self._bc_records.items(), key=lambda kv: -kv[1][1]):
            rec = self.state.records.get(name)
            if rec is None:
                self._bc_records.pop(name, None)
                continue
            delta = rec.delta_since(item[0])
            size = len(packb(delta_wire(delta)))
            if size <= budget:
                deltas.append(delta)
                budget -= size
            else:
                ann = Announce(rec.digest(), rec.addr)
                size = len(packb(announce_wire(ann)))
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
        if not self._bc_rumors:
            return ()
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
            size = len(packb(rumor_wire(r)))
            if size > budget:
                break
            out.append(r)
            budget -= size
            if left <= copies:
                del self._bc_rumors[name]
            else:
                self._bc_rumors[name] = left - copies
        return tuple(out)
