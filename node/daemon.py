"""The rumor daemon: gossip, inference, routing and placement under one trio
nursery. HTTP is started beside it by whoever runs it (node.commands), with
the app of node.api, so the daemon imports no HTTP code.

    daemon = Daemon(config)
    bound = await nursery.start(daemon.run, serve_http)   # once every socket is bound

What it is made of: a `NodeStore` (the data dir), the gossip runtime and core,
the inference service, `LocalModels` (what is held here, placement steps,
admission), a `Router` (the cluster layer's policy over the gossip view),
`OperatorData` (catalog and replica targets), the node's `Record` and an
`EventHub`. Once per gossip interval a loop places models, republishes the
record, saves what changed and snapshots the members.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from gossip.core import EventType, GossipEvent, GossipNode
from gossip.crypto import Keyring
from gossip.status import next_generation
from gossip.transport import GossipRuntime, fmt_addr, parse_hostport
from inference.service import InferenceService, ModelState

from .catalog import OperatorData
from .cluster.placement import placement
from .cluster.view import GossipView
from .config import NodeConfig
from .events import EventHub, Subscription, event_items
from .models import LocalModels
from .prefixes import PrefixPublishers
from .record import Record, coarse
from .router import Router
from .store import SNAPSHOT_EVERY, MemberSnapshots, NodeStore

log = logging.getLogger("rumor.node")

#: Publish-loop runs with nothing changed before the loop slows to QUIET_PUBLISH.
QUIET_AFTER = 5
#: Seconds between publish-loop runs while the node is quiet (woken by `poke`).
#: The run waits for the first gossip tick after that, so it shares a wake-up
#: with the core; its own timer, QUIET_SLACK later, only fires when no tick came.
QUIET_PUBLISH = 1.0
QUIET_SLACK = 3.0

HTTPStarter = Callable[..., Awaitable[None]]


class Daemon:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.name = config.name
        self.store = NodeStore(config.data_dir)
        self.generation = next_generation(self.store.generation(), time.time())
        self.store.save_generation(self.generation)
        self.inference = InferenceService(remote_probe_interval=config.interval)
        self.gossip: GossipRuntime | None = None
        self.http_addr: tuple[str, int] | None = None
        self.device = device_info()
        self.admin_token = admin_token(config)
        self.draining = False
        self.in_flight = 0
        self.stopped = trio.Event()
        #: One cancel scope per request being served; cancelled when the drain
        #: timeout runs out, so each such request fails with a clear 503.
        self.request_scopes: set[trio.CancelScope] = set()
        self._nursery: trio.Nursery | None = None
        self.events = EventHub(config.max_event_subscribers)
        self.models = LocalModels(
            self.inference,
            config.busy_queue,
            config.placement_hold,
            config.placement_unload_hold,
            self._spawn,
        )
        self.router = Router(self.name, config.router, config.local_margin, self.models)
        #: Summaries of what this node's LLM engines cache (gossiped; node/prefixes.py).
        self.prefixes = PrefixPublishers()
        self.record = Record(lambda: self.node, self._kick, self.store)
        self.operator = OperatorData(lambda: self.node, self._kick, self.store)
        self.snapshots = MemberSnapshots(self.store, SNAPSHOT_EVERY)
        self._poked = trio.Event()  # set by `poke`: run the publish loop now
        self._by_tick = False  # the publish loop was woken by a gossip tick, not news
        self._quiet_due = math.inf  # a gossip tick from then on runs the quiet publish
        self.publish_runs = 0  # runs of the publish loop so far
        self.publish_runs_on_tick = 0  # of which started by a gossip tick (quiet)

    @property
    def node(self) -> GossipNode:
        assert self.gossip is not None and self.gossip.node is not None
        return self.gossip.node

    def _kick(self) -> None:
        if self.gossip is not None:
            self.gossip.kick()
        self.poke()  # a local write (tags, catalog): placement may follow

    def _spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)

    # -- lifecycle -------------------------------------------------------------

    async def run(
        self,
        serve_http: HTTPStarter | None = None,
        *,
        task_status: trio.TaskStatus[dict[str, str]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        cfg = self.config
        keyring = Keyring.load(cfg.keyring) if cfg.keyring else None
        self.gossip = GossipRuntime(
            self.name,
            parse_hostport(cfg.gossip),
            seeds=[parse_hostport(j) for j in cfg.join],
            remembered=[parse_hostport(a) for _, a in self.store.members()],
            config=cfg.gossip_config(),
            keyring=keyring,
            insecure=cfg.insecure,
            generation=self.generation,
            on_events=self._on_gossip_events,
            on_tick=self._on_gossip_tick,
            setup=self.operator.register,
            clock_skew=cfg.clock_skew,
        )
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.inference.run)
            await nursery.start(self.gossip.run)
            self.record.restore_tags(trio.current_time())
            for mc in cfg.model_configs():
                self.inference.load(mc)
            if serve_http is not None:
                self.http_addr = await nursery.start(serve_http, self)
            nursery.start_soon(self._publish_loop)
            task_status.started(
                {
                    "name": self.name,
                    "gossip": fmt_addr(self.gossip.addr or ("?", 0)),
                    "http": fmt_addr(self.http_addr) if self.http_addr else "",
                }
            )

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

    async def _publish_loop(self) -> None:
        """Once per gossip interval: placement, the record, persistence. While
        the node is quiet (nothing changed, nothing to serve, no placement
        pending) once per QUIET_PUBLISH seconds instead, woken at once by
        `poke`: an idle daemon's CPU is mostly its wake-ups (issue #18)."""
        unchanged = 0
        while True:
            self.publish_runs += 1
            now = trio.current_time()
            if not self.draining:
                self.place(now)
            await self.prefixes.poll(self.inference, self.config.interval / 2, now)
            changed = self.record.publish(self.record_values(), now)
            if self.operator.dirty:
                self.operator.save()
            self._save_snapshot(now)
            unchanged = 0 if changed or not self._quiet() else unchanged + 1
            self._poked = trio.Event()
            self._by_tick = False
            if unchanged < QUIET_AFTER:
                wait = self.config.interval
            else:
                # Quiet: run again on the first gossip tick QUIET_PUBLISH from now.
                self._quiet_due = now + QUIET_PUBLISH
                wait = QUIET_PUBLISH + QUIET_SLACK
            with trio.move_on_after(wait):
                await self._poked.wait()
            self._quiet_due = math.inf
            if self._by_tick:
                self.publish_runs_on_tick += 1
            elif self._poked.is_set():
                unchanged = 0  # news: back to every interval until quiet again

    def _on_gossip_tick(self, now: float) -> None:
        # Not when news already woke the loop: that run must count as news.
        if now >= self._quiet_due and not self._poked.is_set():
            self._by_tick = True
            self._poked.set()

    def poke(self) -> None:
        """Something may change what this node publishes or places (a request,
        a gossip event, an admin write): run the publish loop now."""
        self._poked.set()

    def _quiet(self) -> bool:
        """Nothing here can change on its own: no request in flight, no model
        loading, unloading or fronted (an engine the operator runs takes
        requests the daemon never sees), no LLM engine, no placement hold."""
        if self.in_flight or self.draining or self.models.placer.pending:
            return False
        for name, status in self.inference.models().items():
            if status.state != ModelState.READY or status.is_llm or status.in_flight:
                return False
            stats = self.inference.stats(name)
            if stats is not None and (stats.queue or stats.in_flight):
                return False
        return True

    def _save_snapshot(self, now: float) -> None:
        """The members we know, for a restart to rejoin (bounded; not on every change)."""
        if self.snapshots.due(now):
            self.snapshots.tick(now, [(n, fmt_addr(a), t) for n, a, t in self.node.snapshot()])

    # -- placement ---------------------------------------------------------------

    def placement(self) -> dict[str, list[str]]:
        """model -> nodes that should hold it, computed from this node's own view."""
        catalog = self.operator.catalog()
        if not catalog:
            return {}  # nothing to place: skip reading every member's device
        draining = {self.name} if self.draining else set()
        view = GossipView(self.node)
        return placement(catalog, self.operator.targets(), view.devices(), draining)

    def place(self, now: float) -> None:
        mine = {m for m, nodes in self.placement().items() if self.name in nodes}
        self.models.place(now, mine, self.operator.catalog())

    def placement_view(self) -> dict[str, Any]:
        """Target against actual replicas, per catalog model (for `rumor status`)."""
        targets = self.operator.targets()
        view = GossipView(self.node)
        out = {}
        for m, nodes in sorted(self.placement().items()):
            out[m] = {
                "target": targets.get(m, 1),
                "assigned": nodes,
                "ready": view.ready_replicas(m),
            }
        return out

    # -- the gossiped record ------------------------------------------------

    def record_values(self) -> dict[str, Any]:
        models: dict[str, Any] = {}
        load: dict[str, Any] = {
            "queue": 0,
            "in_flight": 0,
            "ewma_latency": 0.0,
            "throughput": 0.0,
            "memory": {"used": 0, "free": 0},
        }
        for name, status in sorted(self.inference.models().items()):
            models[name] = status.to_json()
            # The prefix summary of a built-in or fronted engine ({} if none).
            models[name].update(self.prefixes.entry_fields(name))
            st = status.llm_stats
            if st is not None:
                load["queue"] += st.waiting
                load["in_flight"] += st.running
                # KV-cache use over this node's LLMs (the cluster page shows any
                # X_used/X_total pair as a use bar).
                load["kv_used"] = load.get("kv_used", 0) + st.kv_blocks_used
                load["kv_total"] = load.get("kv_total", 0) + st.kv_blocks_total
            stats = self.inference.stats(name)
            if stats is not None:
                load["queue"] += stats.queue
                load["in_flight"] += stats.in_flight
                load["ewma_latency"] = max(load["ewma_latency"], round(stats.ewma_latency_s, 3))
                load["throughput"] += round(stats.throughput, 1)
                load["memory"] = {
                    "used": coarse(stats.memory_used),
                    "free": coarse(stats.memory_free),
                }
        load["in_flight"] += self.in_flight
        return {
            "http": fmt_addr(self.http_addr) if self.http_addr else "",
            "models": models,
            "load": load,
            "device": self.device,
            # This router's per-destination in-flight requests: its own entries
            # of the cluster's per-origin counter map (nobody else writes them).
            "inflight": dict(sorted(self.router.state.inflight.items())),
            # The prefix summaries' slot keys (px:<model tag>:<slot>).
            **self.prefixes.record_keys(),
        }

    # -- events --------------------------------------------------------------

    def _on_gossip_events(self, events: list[GossipEvent]) -> None:
        assert self.gossip is not None
        if events:
            self.poke()  # membership, records or the catalog moved: place, publish
        for ev in events:
            if ev.type == EventType.GENERATION:
                # Peers held our name at a higher generation (our disk or clock
                # went back): we moved above it. Remember, so a restart does too.
                self.generation = self.node.generation
                self.store.save_generation(self.generation)
                log.warning(
                    "moved to generation %d: peers knew this name at %s",
                    self.generation,
                    ev.keys[0] if ev.keys else "?",
                    extra={"event": "generation-move", "member": self.name},
                )
                continue
            if ev.type == EventType.CRDT:
                self.operator.dirty = True  # remote operator data: persist it too
            for item in event_items(ev, self.gossip.unix_time):
                self.events.emit(item)

    def subscribe(self) -> Subscription:
        return self.events.subscribe()

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
                    "gossip": fmt_addr(m.addr),
                    "http": values.get("http", ""),
                    "models": values.get("models", {}),
                    "load": values.get("load", {}),
                    "device": values.get("device", {}),
                    "tags": self.record.tags(name),
                    "age_s": round(max(0.0, now - rec.updated_at), 3) if rec else None,
                    "evidence": node.evidence(name, now),
                }
            )
        return {
            "self": self.name,
            "generation": node.generation,
            "clock": node.clock_report(now),
            "members": members,
            "placement": self.placement_view(),
        }

    def prefix_view(self, model: str) -> dict[str, Any]:
        """Each member's gossiped prefix summary of `model` as this node's
        router decodes it (GET /v1/cluster/prefix/{model}; for tests and
        operators: which blocks the routers here believe each replica holds)."""
        view = GossipView(self.node, self.router.summaries)
        members = {}
        for name in sorted(self.node.members):
            found = view.prefix_summary(name, model)
            if found is None:
                continue
            (block_size, hash_name, salt), summary = found
            members[name] = {
                "block_size": block_size,
                "hash": hash_name,
                "hash_salt": salt,
                "level": summary.level,
                "blocks": summary.blocks,
                "exact": summary.exact,
                "fingerprints": sorted(summary.fps),
            }
        return {"self": self.name, "model": model, "members": members}

    def ready_replicas(self, model: str) -> list[str]:
        """Alive members where `model` is ready, as gossip says."""
        return GossipView(self.node).ready_replicas(model)

    def known_model(self, model: str) -> bool:
        """Held anywhere (loaded, loading or failed) or in the catalog."""
        return GossipView(self.node).knows_model(model) or model in self.operator.catalog()

    def http_of(self, name: str) -> str | None:
        rec = self.node.record(name)
        value = rec.get("http") if rec is not None else None
        return value if isinstance(value, str) and value else None


def admin_token(config: NodeConfig) -> str | None:
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


def device_info() -> dict[str, Any]:
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


def print_bound(bound: dict[str, str]) -> None:
    print(json.dumps(bound), flush=True)
