"""What a node keeps on disk with `--data-dir`: its last generation, the
operator's cluster data (catalog and replica targets, CRDTs), its tags, and a
snapshot of the members it knew (Serf's `-snapshot`), so that a restart rejoins
them even when its seeds are gone. Every file is written atomically (write,
fsync, rename); an unreadable file is logged and ignored, never fatal.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import msgpack

from crdt import CRDT, DecodeError, LWWMap, ORMap, decode, encode

log = logging.getLogger("rumor.node")

#: Members remembered at most (most recently heard first).
SNAPSHOT_MEMBERS = 128
#: Members are snapshotted to the data dir at most this often (when changed).
SNAPSHOT_EVERY = 10.0
#: How soon a snapshot that names a member the saved one lacks is written.
SNAPSHOT_SOON = 1.0


def atomic_write(path: Path, data: bytes) -> None:
    """Write, fsync, rename: a crash leaves the old file or the new one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class NodeStore:
    """The data dir, or nothing (every read finds nothing, every write is a no-op)."""

    def __init__(self, data_dir: str | None) -> None:
        self.dir = Path(data_dir) if data_dir else None
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)

    def _read(self, name: str) -> bytes | None:
        if self.dir is None:
            return None
        try:
            return (self.dir / name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            log.error("ignoring unreadable %s: %s", self.dir / name, e)
            return None

    def _write(self, name: str, data: bytes) -> None:
        if self.dir is not None:
            atomic_write(self.dir / name, data)

    # -- generation ----------------------------------------------------------------

    def generation(self) -> int | None:
        raw = self._read("generation")
        try:
            return int(raw) if raw is not None else None
        except ValueError:
            log.error("ignoring unreadable generation file: %r", raw[:40] if raw else raw)
            return None

    def save_generation(self, generation: int) -> None:
        self._write("generation", str(generation).encode())

    # -- the operator's cluster data -------------------------------------------------

    def cluster_state(self) -> tuple[ORMap, LWWMap] | None:
        raw = self._read("cluster-state.msgpack")
        if raw is None:
            return None
        try:
            blobs = msgpack.unpackb(raw, raw=False)
            catalog, replicas = decode(blobs[0]), decode(blobs[1])
        except (ValueError, DecodeError, IndexError, TypeError, KeyError) as e:
            log.error("ignoring unreadable cluster-state.msgpack: %s", e)
            return None
        if not isinstance(catalog, ORMap) or not isinstance(replicas, LWWMap):
            log.error("ignoring cluster-state.msgpack: unexpected types")
            return None
        return catalog, replicas

    def save_cluster_state(self, catalog: CRDT, replicas: CRDT) -> None:
        blob = msgpack.packb([encode(catalog), encode(replicas)], use_bin_type=True)
        self._write("cluster-state.msgpack", blob)

    # -- tags --------------------------------------------------------------------------

    def tags(self) -> dict[str, str] | None:
        raw = self._read("tags.json")
        try:
            tags = json.loads(raw) if raw is not None else None
        except ValueError:
            return None
        if isinstance(tags, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
        ):
            return tags
        return None

    def save_tags(self, tags: dict[str, str]) -> None:
        self._write("tags.json", json.dumps(tags).encode())

    # -- the members snapshot ----------------------------------------------------------

    def members(self) -> list[tuple[str, str]]:
        """(name, gossip HOST:PORT) of the members known at the last snapshot."""
        raw = self._read("members.json")
        try:
            items = json.loads(raw) if raw is not None else []
        except ValueError:
            return []
        if not isinstance(items, list):
            return []
        return [
            (str(i[0]), str(i[1]))
            for i in items[:SNAPSHOT_MEMBERS]
            if isinstance(i, list) and len(i) == 2 and all(isinstance(x, str) for x in i)
        ]

    def save_members(self, members: list[tuple[str, str]]) -> None:
        self._write("members.json", json.dumps([list(m) for m in members]).encode())

    def __repr__(self) -> str:
        return f"NodeStore({str(self.dir) if self.dir else None!r})"


def snapshot_of(members: list[tuple[str, str, float]]) -> list[tuple[str, str]]:
    """The members worth remembering: most recently heard first, bounded."""
    ranked = sorted(members, key=lambda m: -m[2])
    return [(name, addr) for name, addr, _ in ranked[:SNAPSHOT_MEMBERS]]


class MemberSnapshots:
    """When the daemon writes its members snapshot: as soon as it names a member
    the saved one lacks (checked every `soon` seconds), otherwise at most every
    `every` seconds and only when it changed. A node restarted a few seconds
    after it joined so still rejoins the members it had found, and a large
    fleet's churn costs one small write per `every`. Pure (time is given), so
    the simulator runs the daemon's own rule (sim/datadir.py)."""

    def __init__(
        self, store: NodeStore, every: float = SNAPSHOT_EVERY, soon: float = SNAPSHOT_SOON
    ) -> None:
        self.store, self.every, self.soon = store, every, soon
        self.saved: list[tuple[str, str]] = []
        self.checked_at = -soon
        self.written_at = -every

    def due(self, now: float) -> bool:
        """Whether `tick` would look at the members now (so the caller lists
        them only then: that list is O(members))."""
        return now - self.checked_at >= self.soon and self.store.dir is not None

    def tick(self, now: float, members: list[tuple[str, str, float]]) -> bool:
        """`members`: (name, HOST:PORT, last heard). True if a snapshot was written."""
        if not self.due(now):
            return False
        self.checked_at = now
        snap = snapshot_of(members)
        if not snap or sorted(snap) == sorted(self.saved):
            return False
        # Growing towards the bound is news; a full snapshot's rotation is not.
        saved_names = {name for name, _ in self.saved}
        news = len(self.saved) < SNAPSHOT_MEMBERS and any(
            name not in saved_names for name, _ in snap
        )
        if not news and now - self.written_at < self.every:
            return False
        self.saved, self.written_at = snap, now
        self.store.save_members(snap)
        return True
        self.checked_at = now
        snap = snapshot_of(members)
        if snap and sorted(snap) != sorted(self.saved):
            self.saved = snap
            self.store.save_members(snap)
            return True
        return False
