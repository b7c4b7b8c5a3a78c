"""Members and their status: the one place a member's status changes.

Everything that affects a member's status lives in this module, as h11 keeps
its state machine in `_state.py`: the legal moves are the tables below, and
`MemberTable.set_status` is the only code that writes `Member.status`.

For one generation of a member (one process lifetime), its rank
(incarnation, status) only ever rises (SWIM). At one incarnation a verdict
only hardens: alive, then suspect, then dead, then left. Only the member
itself issues a higher incarnation, to refute a verdict (back to alive) or to
leave; a left member's generation is over. A new process is a new generation,
a new member.

`members.Membership` applies what others say about members (rumors) and
what their messages show (a sender is alive), through that one function.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import LocalProtocolError
from .live import LiveIndex
from .wire import Addr, Rumor, Status

ALIVE, SUSPECT, DEAD, LEFT = Status.ALIVE, Status.SUSPECT, Status.DEAD, Status.LEFT

#: Moves at one incarnation: a third party's verdict may only harden.
SAME_INCARNATION: dict[Status, frozenset[Status]] = {
    ALIVE: frozenset({SUSPECT, DEAD, LEFT}),
    SUSPECT: frozenset({DEAD, LEFT}),
    DEAD: frozenset({LEFT}),
    LEFT: frozenset(),
}
#: Moves with a higher incarnation, which only the member itself issues: it
#: refutes (alive), leaves, or is judged again at its new incarnation.
HIGHER_INCARNATION: dict[Status, frozenset[Status]] = {
    ALIVE: frozenset({ALIVE, SUSPECT, DEAD, LEFT}),
    SUSPECT: frozenset({ALIVE, SUSPECT, DEAD, LEFT}),
    DEAD: frozenset({ALIVE, SUSPECT, DEAD, LEFT}),
    LEFT: frozenset(),  # its generation is over
}


def next_generation(saved: int | None, wall_s: float) -> int:
    """A new process's generation: above the last one saved on disk, and at
    least the wall clock in ms, so a lost or wiped disk still moves it up. A
    clock set back can still land below an earlier generation; the node then
    hears of its old self from its peers and moves above it (`members`)."""
    return max((saved or 0) + 1, int(wall_s * 1000))


def replica_id(name: str, generation: int) -> str:
    """A process's replica id in the cluster CRDTs: unique per process lifetime,
    so a restart, with its saved state or without, never reissues a dot (the
    same dot for different keys breaks merge) nor reuses a tie-breaker."""
    return f"{name}@{generation}"


def legal(old: Status, new: Status, higher_incarnation: bool) -> bool:
    table = HIGHER_INCARNATION if higher_incarnation else SAME_INCARNATION
    return new in table[old]


@dataclass(init=False)
class Member:
    name: str
    generation: int
    addr: Addr
    incarnation: int
    status: Status
    status_since: float
    last_heard: float
    #: Who accused it (Lifeguard's confirmations). Rebound, never mutated: a
    #: member not suspected (nearly all) shares one empty set, which saves
    #: 216 bytes per member held, a quarter of a simulated node's view.
    suspectors: frozenset[str]
    suspicion_start: float
    suspicion_deadline: float

    def __init__(  # written out so that mypyc compiles it (gossip/wire.py)
        self,
        name: str,
        generation: int,
        addr: Addr,
        incarnation: int = 0,
        status: Status = Status.ALIVE,
        status_since: float = 0.0,
        last_heard: float = 0.0,
        suspectors: frozenset[str] = frozenset(),
        suspicion_start: float = 0.0,
        suspicion_deadline: float = 0.0,
    ) -> None:
        self.name = name
        self.generation = generation
        self.addr = addr
        self.incarnation = incarnation
        self.status = status
        self.status_since = status_since
        self.last_heard = last_heard
        self.suspectors = suspectors
        self.suspicion_start = suspicion_start
        self.suspicion_deadline = suspicion_deadline

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


class MemberTable:
    """Every member we know, the live index (sampling, the ring) and the
    departed (dead or left, awaiting removal), kept in step."""

    __slots__ = ("by_name", "departed", "live")

    def __init__(self) -> None:
        self.by_name: dict[str, Member] = {}
        self.live = LiveIndex()
        self.departed: set[str] = set()

    def set_status(
        self, m: Member, status: Status, now: float, incarnation: int | None = None
    ) -> None:
        """The only writer of `Member.status`; raises on a move the tables forbid."""
        inc = m.incarnation if incarnation is None else incarnation
        if inc < m.incarnation or not legal(m.status, status, inc > m.incarnation):
            raise LocalProtocolError(
                f"{m.name}: {m.status.name}@{m.incarnation} -> {status.name}@{inc} is not legal"
            )
        m.incarnation, m.status, m.status_since = inc, status, now
        self.sync(m.name)

    def sync(self, name: str) -> None:
        m = self.by_name.get(name)
        if m is not None and m.live:
            self.live.add(name)
        else:
            self.live.discard(name)
        if m is not None and m.status in (Status.DEAD, Status.LEFT):
            self.departed.add(name)
        else:
            self.departed.discard(name)

    def remove(self, name: str) -> None:
        del self.by_name[name]
        self.live.discard(name)
        self.departed.discard(name)

    def live_departed(self) -> set[str]:
        """Dead or left members still held (awaiting garbage collection)."""
        return {n for n in self.departed if n in self.by_name}
