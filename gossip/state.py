"""Replicated state: per-origin versioned node records (scuttlebutt) and
cluster-wide CRDTs.

Each node owns one record: a map of keys to (version, value), versioned by a
per-node counter that only its owner advances. "Node n is at version v"
therefore summarises its whole record, a digest entry is (name, generation,
max_version), and the delta for a peer at version v is every entry above v,
in version order (van Renesse et al., "Efficient reconciliation and flow
control for anti-entropy protocols", 2008; Quickwit chitchat).

A record is applied only as a complete range: a delta "everything above f"
is applied by a receiver at version >= f, so a receiver never skips a version
and its max_version keeps meaning "I have everything up to here".

Deleted keys stay as tombstones for `key_gc_grace`, then are dropped and the
record's `gc_floor` rises; a peer whose version is below the floor may have
missed a deletion, so it gets the whole record with `reset`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from crdt import CRDT, decode, encode

from .wire import Addr, DigestEntry, KeyUpdate, NodeDelta, packb

#: (name, generation, max_version) -> 64-bit digest, for the state hash. A
#: pure function, memoised for the process: a simulator's thousand nodes each
#: hash the same thousand records (bounded: cleared when full).
_record_digests: dict[tuple[str, int, int], int] = {}


def _h64(*parts: object) -> int:
    data = packb(list(parts))
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _record_digest(name: str, generation: int, max_version: int) -> int:
    key = (name, generation, max_version)
    h = _record_digests.get(key)
    if h is None:
        if len(_record_digests) >= 1 << 16:
            _record_digests.clear()
        h = _record_digests[key] = _h64("n", name, generation, max_version)
    return h


# __init__ written out so that mypyc compiles it (see gossip/wire.py).


@dataclass(init=False)
class _Entry:
    version: int
    value: Any
    deleted: bool
    deleted_at: float
    size: int

    def __init__(
        self,
        version: int,
        value: Any,
        deleted: bool = False,
        deleted_at: float = 0.0,
        size: int = 0,
    ) -> None:
        self.version = version
        self.value = value
        self.deleted = deleted
        self.deleted_at = deleted_at
        self.size = size


@dataclass(init=False)
class NodeRecord:
    name: str
    generation: int
    addr: Addr
    max_version: int
    gc_floor: int
    entries: dict[str, _Entry]
    size: int  # encoded bytes of live values, for the state-size limit
    updated_at: float  # local time of the latest applied change
    #: The digest this record adds to its `ClusterState.hash` (0 while it adds
    #: none): kept on the record, not in a dict beside it, so rehashing a
    #: record costs no dict look-ups (and N entries less per node).
    hashed: int = field(default=0, compare=False, repr=False)

    def __init__(
        self,
        name: str,
        generation: int,
        addr: Addr,
        max_version: int = 0,
        gc_floor: int = 0,
        entries: dict[str, _Entry] | None = None,
        size: int = 0,
        updated_at: float = 0.0,
    ) -> None:
        self.name = name
        self.generation = generation
        self.addr = addr
        self.max_version = max_version
        self.gc_floor = gc_floor
        self.entries = {} if entries is None else entries
        self.size = size
        self.updated_at = updated_at
        self.hashed = 0

    def digest(self) -> DigestEntry:
        return DigestEntry(self.name, self.generation, self.max_version)

    def get(self, key: str) -> Any:
        e = self.entries.get(key)
        return None if e is None or e.deleted else e.value

    def items(self) -> dict[str, Any]:
        return {k: e.value for k, e in self.entries.items() if not e.deleted}

    def delta_since(self, version: int, reset: bool = False) -> NodeDelta:
        """All entries above `version` in version order, or the whole record."""
        # Below the GC floor a peer may have missed deletions we no longer hold:
        # only the whole record is a correct answer.
        reset = reset or version < self.gc_floor
        since = 0 if reset else version
        ups = sorted(
            (
                KeyUpdate(k, e.version, e.value, e.deleted)
                for k, e in self.entries.items()
                if e.version > since
            ),
            key=lambda u: u.version,
        )
        return NodeDelta(
            self.name, self.generation, self.addr, since, tuple(ups), reset, self.gc_floor
        )

    def holds(self, delta: NodeDelta) -> bool:
        """True if applying this same-generation, non-reset delta would change
        nothing: we have every version it carries, its GC floor, its address."""
        if delta.gc_floor > self.gc_floor or delta.addr != self.addr:
            return False
        top = self.max_version
        return all(u.version <= top for u in delta.updates)

    def needs_reset(self, peer_version: int) -> bool:
        return peer_version < self.gc_floor

    def apply(self, delta: NodeDelta, now: float) -> list[str]:
        """Apply a same-generation delta; returns the keys that changed.

        The caller has checked that the delta is applicable (`from_version` at
        or below our version, or a reset).
        """
        changed: list[str] = []
        if delta.reset:
            keep = {u.key for u in delta.updates}
            for k in [k for k in self.entries if k not in keep]:
                if not self.entries[k].deleted:
                    changed.append(k)
                del self.entries[k]
            self.max_version = 0
            self.gc_floor = delta.gc_floor
        for u in delta.updates:
            if u.version <= self.max_version and not delta.reset:
                continue
            old = self.entries.get(u.key)
            if old is not None and old.version >= u.version:
                continue
            size = 0 if u.deleted else len(packb(u.value))
            self.entries[u.key] = _Entry(
                u.version, u.value, u.deleted, now if u.deleted else 0.0, size
            )
            changed.append(u.key)
        # Loops, not max() and sum() over generators: mypyc builds a generator
        # object for those, and this runs for every delta received.
        top = 0
        for u in delta.updates:
            if u.version > top:
                top = u.version
        self.max_version = max(self.max_version, top, delta.gc_floor if delta.reset else 0)
        self.gc_floor = max(self.gc_floor, delta.gc_floor)
        size = 0
        for e in self.entries.values():
            size += e.size
        self.size = size
        if changed:
            self.updated_at = now
        return changed

    def set_local(self, key: str, value: Any, now: float, size: int = -1) -> None:
        """`size`: the value's packed length, if the caller measured it already."""
        self.max_version += 1
        if size < 0:
            size = len(packb(value))
        old = self.entries.get(key)
        self.size += size - (old.size if old is not None else 0)
        self.entries[key] = _Entry(self.max_version, value, False, 0.0, size)
        self.updated_at = now

    def delete_local(self, key: str, now: float) -> bool:
        old = self.entries.get(key)
        if old is None or old.deleted:
            return False
        self.max_version += 1
        self.size -= old.size
        self.entries[key] = _Entry(self.max_version, None, True, now, 0)
        self.updated_at = now
        return True

    def collect_tombstones(self, now: float, grace: float) -> int:
        """Drop tombstones older than `grace`; returns how many were dropped."""
        dead = [k for k, e in self.entries.items() if e.deleted and now - e.deleted_at >= grace]
        for k in dead:
            self.gc_floor = max(self.gc_floor, self.entries[k].version)
            del self.entries[k]
        return len(dead)


class ClusterState:
    """All node records plus named cluster-wide CRDTs, with an O(1) state hash.

    The hash XORs a 64-bit digest of every (name, generation, max_version) and
    of every CRDT's encoding; equal hashes mean (with overwhelming probability)
    equal state, so idle peers compare 8 bytes instead of digests.
    """

    def __init__(self) -> None:
        self.records: dict[str, NodeRecord] = {}
        #: name -> (generation, incarnation, removed_at): removed members that may
        #: return only as a new generation, or by refuting with a higher incarnation.
        self.tombstones: dict[str, tuple[int, int, float]] = {}
        self.crdts: dict[str, CRDT] = {}
        #: records holding deletion tombstones, so GC visits only those.
        self.with_tombstones: set[str] = set()
        self._crdt_hash: dict[str, int] = {}
        self.hash = 0

    # -- records ---------------------------------------------------------------

    def _rehash(self, name: str) -> None:
        rec = self.records.get(name)
        if rec is not None:
            h = _record_digest(name, rec.generation, rec.max_version)
            self.hash ^= rec.hashed ^ h
            rec.hashed = h

    def _put(self, rec: NodeRecord) -> None:
        """Hold `rec` in place of any record of its name (not yet hashed)."""
        self.drop_record(rec.name)
        self.records[rec.name] = rec

    def drop_record(self, name: str) -> NodeRecord | None:
        """Forget `name`'s record and take it out of the hash."""
        rec = self.records.pop(name, None)
        if rec is not None:
            self.hash ^= rec.hashed
            rec.hashed = 0
        return rec

    def is_tombstoned(self, name: str, generation: int) -> bool:
        t = self.tombstones.get(name)
        return t is not None and generation <= t[0]

    def add_record(self, name: str, generation: int, addr: Addr, now: float) -> NodeRecord:
        rec = NodeRecord(name, generation, addr, updated_at=now)
        self._put(rec)
        self._rehash(name)
        return rec

    def remove_record(self, name: str, incarnation: int, now: float) -> None:
        rec = self.drop_record(name)
        if rec is not None:
            self.tombstones[name] = (rec.generation, incarnation, now)

    def touched(self, name: str) -> None:
        """Call after changing a record's version."""
        self._rehash(name)

    def apply_delta(self, d: NodeDelta, now: float) -> tuple[str, list[str]]:
        """Returns (outcome, changed keys); outcome is one of
        'applied', 'new' (first record or new generation), 'stale', 'gap', 'tombstoned'."""
        if self.is_tombstoned(d.name, d.generation):
            return "tombstoned", []
        rec = self.records.get(d.name)
        outcome = "applied"
        if rec is None or d.generation > rec.generation:
            if d.from_version > 0 and not d.reset:
                # We know nothing of this generation: only a complete record helps.
                return "gap", []
            # Hashed once, below, when it is filled.
            rec = NodeRecord(d.name, d.generation, d.addr, updated_at=now)
            self._put(rec)
            outcome = "new"
        elif d.generation < rec.generation:
            return "stale", []
        if not d.reset:
            if d.from_version > rec.max_version:
                return "gap", []
            if outcome == "applied" and rec.holds(d):
                # Most pushes a node receives are copies of a change it holds
                # already: nothing to apply, and the record stays as it is.
                if any(u.deleted for u in d.updates):
                    self.with_tombstones.add(d.name)
                return "stale", []
        elif outcome != "new":
            top = max((u.version for u in d.updates), default=0)
            if rec.max_version > max(top, d.gc_floor):
                return "stale", []
        rec.addr = d.addr
        changed = rec.apply(d, now)
        if any(u.deleted for u in d.updates):
            self.with_tombstones.add(d.name)
        self._rehash(d.name)
        if not changed and outcome == "applied":
            return "stale", []
        return outcome, changed

    def digest_window(
        self, start_after: str | None, size: int
    ) -> tuple[list[DigestEntry], str | None, str | None]:
        """A window of `size` digest entries after `start_after` in name order.

        Returns (entries, lo, hi): the window covers names in (lo, hi]; None
        means open-ended. Successive windows tile the whole name space.
        """
        names = sorted(self.records)
        if start_after is None:
            i = 0
        else:
            i = next((j for j, n in enumerate(names) if n > start_after), len(names))
        chosen = names[i : i + size]
        lo = start_after
        hi = chosen[-1] if i + size < len(names) else None
        return [self.records[n].digest() for n in chosen], lo, hi

    def names_in(self, lo: str | None, hi: str | None) -> list[str]:
        return [
            n for n in sorted(self.records) if (lo is None or n > lo) and (hi is None or n <= hi)
        ]

    # -- CRDTs -------------------------------------------------------------------

    def register_crdt(self, name: str, value: CRDT) -> None:
        self.crdts[name] = value
        self.crdt_changed(name)

    def crdt_changed(self, name: str) -> None:
        old = self._crdt_hash.pop(name, 0)
        self.hash ^= old
        h = _h64("c", name, encode(self.crdts[name]))
        self._crdt_hash[name] = h
        self.hash ^= h

    def crdt_hash(self, name: str) -> int:
        return self._crdt_hash.get(name, 0)

    def merge_crdt(self, name: str, blob: bytes) -> bool:
        """Join an encoded state or delta into CRDT `name`; True if it changed.
        Raises crdt.DecodeError for bad bytes and TypeError for a type mismatch."""
        mine = self.crdts.get(name)
        if mine is None:
            return False  # not registered here: an application we don't run
        incoming = decode(blob)
        if type(incoming) is not type(mine):
            raise TypeError(f"CRDT {name!r} is a {type(mine).__name__} here")
        before = self._crdt_hash.get(name, 0)
        mine.merge(incoming)
        self.crdt_changed(name)
        return self._crdt_hash[name] != before
