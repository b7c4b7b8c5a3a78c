"""The rumor daemon: gossip, inference, routing and HTTP under one trio nursery.

    daemon = Daemon(config)
    await nursery.start(daemon.run)   # returns once every socket is bound

The node's gossiped record holds `http`, `models`, `load`, `device`, `inflight`
(this router's per-destination in-flight counts) and one `tag:NAME` key per
tag; it is rewritten whenever a value changes, at most once per gossip
interval, by the same loop that runs placement.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from pathlib import Path
from typing import Any

import trio

from crdt import DecodeError, LWWMap, LWWRegister, ORMap, decode, encode
from gossip.config import GossipConfig
from gossip.core import EventType, GossipEvent, GossipNode
from gossip.crypto import Keyring
from gossip.status import next_generation, replica_id
from gossip.transport import GossipRuntime, parse_hostport
from gossip.wire import Status
from inference.config import ModelConfig
from inference.errors import ConfigError
from inference.service import InferenceService, ModelState

from .config import NodeConfig
from .errors import ClockUnhealthy, TooManySubscribers
from .placement import Placer, assign, capacity_of
from .router import Candidate, drain, pick

log = logging.getLogger("rumor.node")

TAG_PREFIX = "tag:"


def _fmt(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Daemon:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.name = config.name
        self.inference = InferenceService()
        self.gossip: GossipRuntime | None = None
        self.http_addr: tuple[str, int] | None = None
        self.generation = self._next_generation()
        self.draining = False
        self.in_flight = 0
        self._subscribers: list[Subscription] = []
        self._published: dict[str, Any] = {}
        self._rng = random.Random()
        self._nursery: trio.Nursery | None = None
        self.stopped = trio.Event()
        self.device = _device_info()
        self.admin_token = _admin_token(config)
        self._state_dirty = False
        #: One cancel scope per request being served; cancelled when the drain
        #: timeout runs out, so each such request fails with a clear 503.
        self.request_scopes: set[trio.CancelScope] = set()
        # Router state (node.router): our in-flight requests and sends since each
        # destination's last report.
        self.own_inflight: dict[str, int] = {}
        self.sent_since: dict[str, int] = {}
        self._report_seen: dict[str, float] = {}
        self._rr = 0
        # Placement (node.placement): models loaded because the catalog assigns them here.
        self.placer = Placer(config.placement_hold, config.placement_unload_hold)
        self.placed: set[str] = set()

    # -- lifecycle -------------------------------------------------------------

    def _next_generation(self) -> int:
        """Above the one saved with --data-dir, and at least the wall clock in ms
        (gossip.status.next_generation): it rises whatever happened to the disk."""
        saved = None
        if self.config.data_dir is not None:
            d = Path(self.config.data_dir)
            d.mkdir(parents=True, exist_ok=True)
            try:
                saved = int((d / "generation").read_text())
            except (OSError, ValueError):
                saved = None
        gen = next_generation(saved, time.time())
        self._save_generation(gen)
        return gen

    def _save_generation(self, gen: int) -> None:
        if self.config.data_dir is not None:
            _atomic_write(Path(self.config.data_dir) / "generation", str(gen).encode())

    @property
    def replica_id(self) -> str:
        """This process's id in the CRDTs: unique per process lifetime, so a
        restart never reuses a dot or a timestamp's tie-breaker."""
        return replica_id(self.name, self.node.generation)

    @property
    def node(self) -> GossipNode:
        assert self.gossip is not None and self.gossip.node is not None
        return self.gossip.node

    async def run(
        self, *, task_status: trio.TaskStatus[dict[str, str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        from .http import serve_http

        cfg = self.config
        keyring = Keyring.load(cfg.keyring) if cfg.keyring else None
        gossip_cfg = GossipConfig(interval=cfg.interval, fanout=cfg.fanout)
        self.gossip = GossipRuntime(
            self.name,
            parse_hostport(cfg.gossip),
            seeds=[parse_hostport(j) for j in cfg.join],
            config=gossip_cfg,
            keyring=keyring,
            insecure=cfg.insecure,
            generation=self.generation,
            on_events=self._on_gossip_events,
            setup=self._setup_gossip,
            clock_skew=cfg.clock_skew,
        )
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.inference.run)
            await nursery.start(self.gossip.run)
            self._restore_tags()
            for mc in cfg.model_configs():
                self.inference.load(mc)
            self.http_addr = await nursery.start(serve_http, self)
            nursery.start_soon(self._publish_loop)
            bound = {
                "name": self.name,
                "gossip": _fmt(self.gossip.addr or ("?", 0)),
                "http": _fmt(self.http_addr),
            }
            task_status.started(bound)

    def _setup_gossip(self, node: GossipNode) -> None:
        catalog, replicas = ORMap(LWWRegister), LWWMap()
        saved = self._load_state()
        if saved is not None:
            catalog.merge(saved[0])
            replicas.merge(saved[1])
        node.register_crdt("catalog", catalog)
        node.register_crdt("replicas", replicas)

    # -- operator data: the catalog and replica targets (CRDTs), persisted ----

    def _state_path(self) -> Path | None:
        return (
            Path(self.config.data_dir) / "cluster-state.msgpack" if self.config.data_dir else None
        )

    def _load_state(self) -> tuple[ORMap, LWWMap] | None:
        path = self._state_path()
        if path is None or not path.exists():
            return None
        import msgpack

        try:
            blobs = msgpack.unpackb(path.read_bytes(), raw=False)
            catalog, replicas = decode(blobs[0]), decode(blobs[1])
        except (OSError, ValueError, DecodeError, IndexError, TypeError) as e:
            log.error("ignoring unreadable %s: %s", path, e)
            return None
        if not isinstance(catalog, ORMap) or not isinstance(replicas, LWWMap):
            return None
        return catalog, replicas

    def save_state(self) -> None:
        """Atomically persist the catalog and replica targets (write, fsync, rename)."""
        path = self._state_path()
        self._state_dirty = False
        if path is None or self.gossip is None or self.gossip.node is None:
            return
        import msgpack

        blob = msgpack.packb(
            [encode(self.node.crdt("catalog")), encode(self.node.crdt("replicas"))],
            use_bin_type=True,
        )
        _atomic_write(path, blob)

    def _ts(self) -> int:
        return self.node.timestamp(trio.current_time())

    def catalog(self) -> dict[str, Any]:
        value: dict[str, Any] = self.node.crdt("catalog").value
        return value

    def replica_targets(self) -> dict[str, Any]:
        value: dict[str, Any] = self.node.crdt("replicas").value
        return value

    def check_clock(self) -> None:
        """Refuse a last-writer-wins write while this node's clock is too far
        from its peers': its timestamps would win (or lose) wrongly."""
        now = trio.current_time()
        if not self.node.clock_healthy(now):
            rep = self.node.clock_report(now)
            raise ClockUnhealthy(
                f"this node's clock is {rep['offset_s']:+.3f} s from its peers' "
                f"(limit {rep['max_offset_s']:g} s): fix its time (NTP) and retry, "
                "or write through another node"
            )

    def _local_crdt_change(self, name: str, delta: Any) -> None:
        """The mutation is already in the CRDT: persist it, then send it, so a
        crash cannot lose a dot that peers already hold."""
        assert self.gossip is not None
        self.save_state()
        self.node.update_crdt(name, delta, trio.current_time())
        self.gossip.kick()

    def catalog_put(self, model: str, spec: dict[str, Any]) -> Any:
        """Write a catalog entry; returns the spec that holds after it."""
        self.check_clock()
        ts, rid = self._ts(), self.replica_id
        catalog: ORMap = self.node.crdt("catalog")  # type: ignore[assignment]
        delta = catalog.update(rid, model, lambda reg: reg.set(rid, spec, ts))
        self._local_crdt_change("catalog", delta)
        return self.catalog().get(model)

    def catalog_delete(self, model: str) -> None:
        catalog: ORMap = self.node.crdt("catalog")  # type: ignore[assignment]
        self._local_crdt_change("catalog", catalog.remove(self.replica_id, model))

    def set_replica_target(self, model: str, replicas: int) -> Any:
        """Write a replica target; returns the target that holds after it."""
        self.check_clock()
        targets: LWWMap = self.node.crdt("replicas")  # type: ignore[assignment]
        delta = targets.set(self.replica_id, model, replicas, self._ts())
        self._local_crdt_change("replicas", delta)
        return self.replica_targets().get(model)

    def set_tags(self, tags: dict[str, str]) -> None:
        """Replace this node's user tags, gossiped in its record.

        Each tag is its own record key (`tag:NAME`), so changing one tag sends
        only that tag, however much else the node carries. Bounded by the
        node-state limit.
        """
        assert self.gossip is not None
        from gossip.errors import StateTooLarge

        now = trio.current_time()
        old = self.tags()
        try:
            for k, v in sorted(tags.items()):
                if old.get(k) != v:
                    self.node.set_key(TAG_PREFIX + k, v, now)
        except StateTooLarge as e:
            for k in sorted(tags):  # all or nothing: put the old tags back
                if k in old:
                    self.node.set_key(TAG_PREFIX + k, old[k], now)
                else:
                    self.node.delete_key(TAG_PREFIX + k, now)
            raise ValueError(str(e)) from None
        for k in sorted(set(old) - set(tags)):
            self.node.delete_key(TAG_PREFIX + k, now)
        changed = sorted(k for k in set(tags) | set(old) if tags.get(k) != old.get(k))
        log.info(
            "tags set",
            extra={
                "event": "local-update",
                "member": self.name,
                "keys": [TAG_PREFIX + k for k in changed],
            },
        )
        self.gossip.kick()
        if self.config.data_dir:  # operator data: survives a restart
            _atomic_write(Path(self.config.data_dir) / "tags.json", json.dumps(tags).encode())

    def tags(self, name: str | None = None) -> dict[str, str]:
        rec = self.node.record(name or self.name)
        if rec is None:
            return {}
        return {k[len(TAG_PREFIX) :]: v for k, v in rec.items().items() if k.startswith(TAG_PREFIX)}

    def _restore_tags(self) -> None:
        if not self.config.data_dir:
            return
        path = Path(self.config.data_dir) / "tags.json"
        try:
            tags = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        if isinstance(tags, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
        ):
            self.set_tags(tags)

    async def shutdown(self) -> None:
        """Announce leave, stop taking requests, drain, then stop everything."""
        self.draining = True
        if self.gossip is not None and self.gossip.node is not None:
            self.node.leave(trio.current_time())
            self.gossip.kick()
        with trio.move_on_after(self.config.drain_timeout):
            while self.in_flight:
                await trio.sleep(0.02)
        for scope in list(self.request_scopes):
            scope.cancel()
        with trio.move_on_after(1.0):
            while self.in_flight:
                await trio.sleep(0.01)
        await trio.sleep(0.05)  # let the leave datagrams and last answers go out
        self.stopped.set()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # -- placement ---------------------------------------------------------------

    def placement(self) -> dict[str, list[str]]:
        """model -> nodes that should hold it, computed from this node's own view."""
        targets = self.replica_targets()
        wanted = {m: _int(targets.get(m, 1)) for m in self.catalog()}
        capacity = {}
        for name, m in self.node.members.items():
            if m.status != Status.ALIVE or (name == self.name and self.draining):
                continue
            rec = self.node.record(name)
            capacity[name] = capacity_of(rec.get("device") if rec is not None else None)
        return assign(wanted, capacity)

    def place(self, now: float) -> None:
        """One placement step: load what is assigned here, unload what is not (with hysteresis)."""
        catalog = self.catalog()
        mine = {m for m, nodes in self.placement().items() if self.name in nodes}
        held = set()
        for m in self.placed:
            st = self.inference.status(m)
            if st is not None and st.state in (ModelState.LOADING, ModelState.READY):
                held.add(m)
        to_load, to_unload = self.placer.step(now, mine, held)
        for m in sorted(to_load):
            existing = self.inference.status(m)
            if existing is not None and m not in self.placed:
                continue  # loaded by --model/--config: not placement's to manage
            try:
                mc = ModelConfig.from_dict({**catalog[m], "name": m})
            except (ConfigError, TypeError, ValueError) as e:
                log.error("placement: catalog spec of %r is invalid: %s", m, e)
                continue
            log.info("placement: loading %s", m, extra={"event": "place-load", "model": m})
            self.placed.add(m)
            self.inference.load(mc)
        for m in sorted(to_unload):
            log.info("placement: unloading %s", m, extra={"event": "place-unload", "model": m})
            self.placed.discard(m)
            if self._nursery is not None:
                self._nursery.start_soon(self.inference.unload, m)

    def placement_view(self) -> dict[str, Any]:
        """Target against actual replicas, per catalog model (for `rumor status`)."""
        targets = self.replica_targets()
        out = {}
        for m, nodes in sorted(self.placement().items()):
            out[m] = {
                "target": _int(targets.get(m, 1)),
                "assigned": nodes,
                "ready": self.ready_replicas(m),
            }
        return out

    # -- the gossiped record ------------------------------------------------

    def record_values(self) -> dict[str, Any]:
        models: dict[str, Any] = {}
        load = {
            "queue": 0,
            "in_flight": 0,
            "ewma_latency": 0.0,
            "throughput": 0.0,
            "memory": {"used": 0, "free": 0},
        }
        for name, status in sorted(self.inference.models().items()):
            models[name] = status.to_json()
            stats = self.inference.stats(name)
            if stats is not None:
                load["queue"] += stats.queue
                load["in_flight"] += stats.in_flight
                load["ewma_latency"] = max(load["ewma_latency"], round(stats.ewma_latency_s, 3))
                load["throughput"] += round(stats.throughput, 1)
                # Coarse (256 MiB) so that free-memory noise does not rewrite the
                # record, and so re-gossip it, on every tick.
                load["memory"] = {
                    "used": _coarse(stats.memory_used),
                    "free": _coarse(stats.memory_free),
                }
        load["in_flight"] += self.in_flight
        return {
            "http": _fmt(self.http_addr) if self.http_addr else "",
            "models": models,
            "load": load,
            "device": self.device,
            # This router's per-destination in-flight requests: its own entries
            # of the cluster's per-origin counter map (nobody else writes them).
            "inflight": dict(sorted(self.own_inflight.items())),
        }

    def publish(self) -> None:
        """Write changed record keys (the caller rate-limits to once per interval)."""
        if self.gossip is None or self.gossip.node is None:
            return
        now = trio.current_time()
        changed = False
        for key, value in self.record_values().items():
            if self._published.get(key) != value:
                self.node.set_key(key, value, now)
                self._published[key] = value
                changed = True
        if changed:
            self.gossip.kick()

    async def _publish_loop(self) -> None:
        """Once per gossip interval: placement, the record, persistence."""
        while True:
            if not self.draining:
                self.place(trio.current_time())
            self.publish()
            if self._state_dirty:
                self.save_state()
            await trio.sleep(self.config.interval)

    # -- events --------------------------------------------------------------

    def _on_gossip_events(self, events: list[GossipEvent]) -> None:
        assert self.gossip is not None
        mapping = {
            "member-join": "member-join",
            "member-update": "member-update",
            "member-suspect": "member-suspect",
            "member-alive": "member-update",
            "member-dead": "member-dead",
            "member-leave": "member-leave",
            "crdt-update": "catalog-update",
        }
        for ev in events:
            if ev.type == EventType.GENERATION:
                # Peers held our name at a higher generation (our disk or clock
                # went back): we moved above it. Remember, so a restart does too.
                self.generation = self.node.generation
                self._save_generation(self.generation)
                log.warning(
                    "moved to generation %d: peers knew this name at %s",
                    self.generation,
                    ev.keys[0] if ev.keys else "?",
                    extra={"event": "generation-move", "member": self.name},
                )
                continue
            kind = mapping.get(ev.type.value)
            if kind is None:
                continue
            item: dict[str, Any] = {
                "type": kind,
                "member": ev.member,
                "time": self.gossip.unix_time(ev.time),
            }
            if kind == "catalog-update":
                self._state_dirty = True  # remote operator data: persist it too
            # The log is the daemon's own timestamped event record (like Serf's
            # handlers); record updates are frequent under load, so only at debug.
            level = logging.DEBUG if kind in ("member-update", "catalog-update") else logging.INFO
            if log.isEnabledFor(level):
                extra = {"event": kind, "member": ev.member, "keys": list(ev.keys or ())}
                log.log(level, "%s %s", kind, ev.member, extra=extra)
            if ev.keys:  # every `tag:NAME` key is reported as "tags"
                item["keys"] = sorted({"tags" if k.startswith(TAG_PREFIX) else k for k in ev.keys})
                if "models" in ev.keys:
                    self._emit({**item, "type": "model-state"})
            self._emit(item)

    def _emit(self, item: dict[str, Any]) -> None:
        for sub in list(self._subscribers):
            try:
                sub.send.send_nowait(item)
            except trio.WouldBlock:
                # A subscriber this far behind is dropped, and told so when it
                # has read what it holds (an events-lost event; see http.events).
                sub.lost = True
                sub.send.close()
                self._subscribers.remove(sub)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove(sub)

    def subscribe(self) -> Subscription:
        if len(self._subscribers) >= self.config.max_event_subscribers:
            raise TooManySubscribers(
                f"{len(self._subscribers)} event streams are open "
                f"(max_event_subscribers); retry later"
            )
        send, recv = trio.open_memory_channel[dict[str, Any]](EVENT_BUFFER)
        sub = Subscription(send, recv)
        self._subscribers.append(sub)
        return sub

    # -- the cluster view ------------------------------------------------------

    def cluster_view(self) -> dict[str, Any]:
        node = self.node
        now = trio.current_time()
        members = []
        for name in sorted(node.members):
            m = node.members[name]
            rec = node.record(name)
            values = rec.items() if rec is not None else {}
            members.append(
                {
                    "name": name,
                    "status": m.status.name.lower(),
                    "generation": m.generation,
                    "incarnation": m.incarnation,
                    "gossip": _fmt(m.addr),
                    "http": values.get("http", ""),
                    "models": values.get("models", {}),
                    "load": values.get("load", {}),
                    "device": values.get("device", {}),
                    "tags": self.tags(name),
                    "age_s": round(max(0.0, now - rec.updated_at), 3) if rec else None,
                    "evidence": node.evidence(name, now),
                }
            )
        return {
            "self": self.name,
            "generation": self.node.generation,
            "clock": self.node.clock_report(now),
            "members": members,
            "placement": self.placement_view(),
        }

    def ready_replicas(self, model: str) -> list[str]:
        """Members (alive, not suspect or dead) where `model` is ready."""
        out = []
        for name, m in sorted(self.node.members.items()):
            if m.status != Status.ALIVE:
                continue
            info = model_info(self.node.record(name), model)
            if info is not None and info.get("state") == "ready":
                out.append(name)
        return out

    def known_model(self, model: str) -> bool:
        for name in self.node.members:
            if model_info(self.node.record(name), model) is not None:
                return True
        catalog = self.node.crdt("catalog")
        return model in catalog.value

    def local_ready(self, model: str) -> bool:
        status = self.inference.status(model)
        return status is not None and status.state == ModelState.READY

    def choose(self, model: str, exclude: set[str]) -> str | None:
        """node.router.pick over the ready replicas (alive members only)."""
        if self.config.router != "rumor":  # baselines, for side-by-side measurements
            names = sorted(c.name for c in self.candidates(model, exclude))
            if not names:
                return None
            if self.config.router == "random":
                return self._rng.choice(names)
            self._rr += 1
            return names[self._rr % len(names)]
        margin = self.config.local_margin
        if margin < 0:
            status = self.inference.status(model)
            margin = float(status.config.max_batch_size) if status is not None else 1.0
        chosen = pick(self.candidates(model, exclude), self._rng, local_margin=margin)
        return chosen.name if chosen is not None else None

    def candidates(self, model: str, exclude: set[str]) -> list[Candidate]:
        now = trio.current_time()
        out = []
        if self.name not in exclude and self.local_ready(model):
            stats = self.inference.stats(model)
            queue = stats.queue + stats.in_flight if stats is not None else 0
            out.append(Candidate(self.name, queue=queue, local=True))  # exact, fresh
        reports = {}  # name -> (record, its load, its service time per request)
        for name in self.ready_replicas(model):
            rec = self.node.record(name)
            if name in exclude or name == self.name or rec is None:
                continue
            ld = rec.get("load")
            ld = ld if isinstance(ld, dict) else {}
            throughput = _num(ld.get("throughput"))
            reports[name] = (rec, ld, 1.0 / throughput if throughput > 0 else 0.0)
        others = self._others_inflight(
            {name: service for name, (_, _, service) in reports.items()}, now
        )
        for name, (rec, ld, service) in reports.items():
            if self._report_seen.get(name) != rec.updated_at:
                self._report_seen[name] = rec.updated_at  # a new report: it saw our sends
                self.sent_since.pop(name, None)
            out.append(
                Candidate(
                    name,
                    queue=_num(ld.get("queue")) + _num(ld.get("in_flight")),
                    age_s=max(0.0, now - rec.updated_at),
                    service_s=service,
                    others_inflight=others.get(name, 0.0),
                    own_inflight=self.own_inflight.get(name, 0),
                    own_sent_since=self.sent_since.get(name, 0),
                )
            )
        return out

    def _others_inflight(self, service: dict[str, float], now: float) -> dict[str, float]:
        """What every other router has in flight at each destination in `service`
        (its service time per request), from their records, each count drained
        for its age like a load report. One pass over the members."""
        total = dict.fromkeys(service, 0.0)
        for name in self.node.members:
            rec = self.node.record(name) if name != self.name else None
            counts = rec.get("inflight") if rec is not None else None
            if rec is None or not isinstance(counts, dict):
                continue
            age = now - rec.updated_at
            for dest, raw in counts.items():
                per_request = service.get(dest)
                n = _num(raw)
                if per_request is not None and n:
                    total[dest] += drain(n, age, per_request)
        return total

    def note_sent(self, dest: str) -> None:
        self.own_inflight[dest] = self.own_inflight.get(dest, 0) + 1
        self.sent_since[dest] = self.sent_since.get(dest, 0) + 1

    def note_done(self, dest: str) -> None:
        left = self.own_inflight.get(dest, 0) - 1
        if left > 0:
            self.own_inflight[dest] = left
        else:
            self.own_inflight.pop(dest, None)

    def busy(self, model: str) -> bool:
        """Above the queue bound: answer "busy" so the router tries elsewhere."""
        stats = self.inference.stats(model)
        status = self.inference.status(model)
        if stats is None or status is None:
            return False
        bound = self.config.busy_queue or 2 * status.config.max_batch_size
        return stats.queue >= bound

    def http_of(self, name: str) -> str | None:
        rec = self.node.record(name)
        value = rec.get("http") if rec is not None else None
        return value if isinstance(value, str) and value else None


#: Events a subscriber may fall behind by before it is dropped.
EVENT_BUFFER = 1000


class Subscription:
    """One /v1/events stream: its channel, and whether we dropped it."""

    __slots__ = ("lost", "receive", "send")

    def __init__(
        self,
        send: trio.MemorySendChannel[dict[str, Any]],
        receive: trio.MemoryReceiveChannel[dict[str, Any]],
    ) -> None:
        self.send, self.receive, self.lost = send, receive, False


def model_info(rec: Any, model: str) -> dict[str, Any] | None:
    """`model`'s entry in a member's gossiped record, or None. A peer's record is
    data, not trusted: anything but a dict where a dict belongs reads as absent."""
    models = rec.get("models") if rec is not None else None
    info = models.get(model) if isinstance(models, dict) else None
    return info if isinstance(info, dict) else None


def _int(v: object) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 1


def _num(v: object) -> float:
    """A gossiped number, or 0 for anything else (a peer's record is data, not trusted)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return 0.0
    return float(v) if v == v and abs(v) < 1e12 else 0.0


def _coarse(n: int, step: int = 256 << 20) -> int:
    return (n // step) * step


def _admin_token(config: NodeConfig) -> str | None:
    import os

    if config.admin_token_file:
        try:
            token = Path(config.admin_token_file).read_text().strip()
        except OSError as e:
            raise ValueError(f"admin_token_file: {e.strerror or e}") from None
        if not token:
            raise ValueError("admin_token_file: the file is empty")
        return token
    return os.environ.get("RUMOR_ADMIN_TOKEN") or None


def new_trace_id() -> str:
    return uuid.uuid4().hex


def _device_info() -> dict[str, Any]:
    import glob

    if not glob.glob("/dev/nvidia[0-9]*"):  # no NVIDIA device: skip importing torch (~150 MB)
        return {"type": "cpu", "name": "cpu"}
    try:
        import torch

        if torch.cuda.is_available():
            _free, total = torch.cuda.mem_get_info()
            return {"type": "cuda", "name": torch.cuda.get_device_name(0), "memory_total": total}
    except Exception:  # device probing must never take the node down
        pass
    return {"type": "cpu", "name": "cpu"}


def _atomic_write(path: Path, data: bytes) -> None:
    """Write, fsync, rename: a crash leaves the old file or the new one."""
    import os

    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def print_bound(bound: dict[str, str]) -> None:
    print(json.dumps(bound), flush=True)
