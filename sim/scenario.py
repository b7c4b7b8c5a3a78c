"""Scenarios: the cluster, its network, and a timeline of updates and faults.

From CLI flags, or from a TOML file such as::

    nodes = 20
    seed = 7
    duration = 60
    loss = 0.05

    [[event]]
    at = 10
    action = "partition"
    groups = [["node0", "node1", "node2"], ["node3", "node4"]]   # or: sizes = [10, 10]

    [[event]]
    at = 20
    action = "kill"
    node = "node7"

    [[event]]
    at = 40
    action = "heal"

A `[gossip]` table sets protocol knobs (any gossip.config.GossipConfig
field), exactly as in a node's config file.

Actions: update (node?), kill (node), restart (node), pause (node, duration),
partition (groups | sizes; one-way with oneway = true), heal, loss (value),
latency (ms), skew (node, offset, drift). A missing `node` means a random
live one, drawn from the seed.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from gossip.config import GossipConfig

ACTIONS = {
    "update": {"node"},
    "kill": {"node"},
    "restart": {"node"},
    "pause": {"node", "duration"},
    "partition": {"groups", "sizes", "oneway"},
    "heal": set(),
    "loss": {"value"},
    "latency": {"ms"},
    "skew": {"node", "offset", "drift"},
}


class ScenarioError(ValueError):
    """An invalid scenario or flag; the message names the field."""


@dataclass(frozen=True)
class Event:
    at: float
    action: str
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class Scenario:
    nodes: int = 10
    seed: int = 1
    interval: float = 0.2
    fanout: int = 3
    loss: float = 0.0
    latency_ms: float = 1.0
    jitter_ms: float = 0.5
    duplicate: float = 0.0
    duration: float = 60.0
    bandwidth: float | None = None  # bytes/s per node
    #: Host CPU model (0 = off): every node shares `cores` cores, each delivered
    #: message costs `cpu_us` microseconds, each message sent `send_us` and each
    #: local write `call_us` after its sends, each node keeps `background` of a
    #: core busy besides, and a core that fell idle takes `wake_us` to start
    #: again, as when many daemons run on one machine (sim.network.HostModel).
    cores: int = 0
    cpu_us: float = 0.0
    send_us: float = 0.0
    call_us: float = 0.0
    background: float = 0.0
    wake_us: float = 0.0
    #: Start with every node knowing every other (steady state); false replays joins.
    warm_start: bool = True
    #: A random live node writes a key every this many seconds (0 for none).
    updates_every: float = 5.0
    encrypt: bool = True
    #: Gossip protocol knobs over GossipConfig's defaults (the same table as the
    #: node's [gossip]); `interval` and `fanout` above are the common two.
    gossip: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    events: tuple[Event, ...] = ()

    def __post_init__(self) -> None:
        _check(type(self.nodes) is int and 1 <= self.nodes <= 100_000, "nodes", "1..100000")
        _check(type(self.seed) is int, "seed", "an integer")
        _check(_num(self.interval) and self.interval > 0, "interval", "a positive number")
        _check(type(self.fanout) is int and self.fanout >= 1, "fanout", "an integer >= 1")
        _check(_num(self.loss) and 0 <= self.loss < 1, "loss", "within [0, 1)")
        _check(_num(self.duplicate) and 0 <= self.duplicate < 1, "duplicate", "within [0, 1)")
        _check(_num(self.latency_ms) and self.latency_ms >= 0, "latency_ms", ">= 0")
        _check(_num(self.jitter_ms) and self.jitter_ms >= 0, "jitter_ms", ">= 0")
        _check(_num(self.duration) and self.duration > 0, "duration", "a positive number")
        _check(_num(self.updates_every) and self.updates_every >= 0, "updates_every", ">= 0")
        _check(
            self.bandwidth is None or (_num(self.bandwidth) and self.bandwidth > 0),
            "bandwidth",
            "a positive number of bytes/s",
        )
        _check(type(self.cores) is int and self.cores >= 0, "cores", "an integer >= 0 (0: off)")
        _check(_num(self.cpu_us) and self.cpu_us >= 0, "cpu_us", ">= 0")
        _check(_num(self.send_us) and self.send_us >= 0, "send_us", ">= 0")
        _check(_num(self.call_us) and self.call_us >= 0, "call_us", ">= 0")
        _check(_num(self.wake_us) and self.wake_us >= 0, "wake_us", ">= 0")
        _check(_num(self.background) and 0 <= self.background < 1, "background", "in [0, 1)")
        _check(isinstance(self.gossip, dict), "gossip", "a table of protocol settings")
        try:
            self.gossip_config()
        except ValueError as e:  # node.config's errors name the field
            raise ScenarioError(str(e)) from None
        names = {f"node{i}" for i in range(self.nodes)}
        for i, ev in enumerate(self.events):
            where = f"event[{i}]"
            _check(ev.action in ACTIONS, f"{where}.action", f"one of {', '.join(ACTIONS)}")
            _check(
                _num(ev.at) and 0 <= ev.at <= self.duration,
                f"{where}.at",
                f"a time within [0, duration={self.duration:g}]",
            )
            for key in ev.params:
                _check(
                    key in ACTIONS[ev.action], f"{where}.{key}", f"not a parameter of {ev.action!r}"
                )
            node = ev.params.get("node")
            if node is not None:
                _check(node in names, f"{where}.node", f"a node name node0..node{self.nodes - 1}")
            if ev.action in ("kill", "restart", "pause", "skew"):
                _check(node is not None or ev.action == "kill", f"{where}.node", "required")
            if ev.action == "pause":
                d = ev.params.get("duration")
                _check(_num(d) and d > 0, f"{where}.duration", "a positive number")
            if ev.action == "partition":
                groups, sizes = ev.params.get("groups"), ev.params.get("sizes")
                _check(
                    (groups is None) != (sizes is None),
                    f"{where}",
                    "partition needs exactly one of groups or sizes",
                )
                if groups is not None:
                    _check(
                        isinstance(groups, list)
                        and len(groups) >= 2
                        and all(isinstance(g, list) and set(g) <= names for g in groups),
                        f"{where}.groups",
                        "at least two lists of node names",
                    )
                else:
                    _check(
                        isinstance(sizes, list)
                        and len(sizes) >= 2
                        and all(type(x) is int and x > 0 for x in sizes)
                        and sum(sizes) <= self.nodes,
                        f"{where}.sizes",
                        f"at least two positive sizes summing to <= {self.nodes}",
                    )
            if ev.action == "loss":
                v = ev.params.get("value")
                _check(_num(v) and 0 <= v < 1, f"{where}.value", "within [0, 1)")
            if ev.action == "latency":
                v = ev.params.get("ms")
                _check(_num(v) and v >= 0, f"{where}.ms", ">= 0")
            if ev.action == "skew":
                _check(_num(ev.params.get("offset", 0.0)), f"{where}.offset", "a number")
                _check(_num(ev.params.get("drift", 0.0)), f"{where}.drift", "a number")

    def gossip_config(self) -> GossipConfig:
        from node.config import gossip_config

        return gossip_config(self.gossip, GossipConfig(interval=self.interval, fanout=self.fanout))

    @property
    def kills(self) -> bool:
        return any(e.action == "kill" for e in self.events)

    def with_overrides(self, **overrides: Any) -> Scenario:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def _num(v: object) -> bool:
    return type(v) in (int, float)


def _check(ok: bool, name: str, expected: str) -> None:
    if not ok:
        raise ScenarioError(f"{name}: must be {expected}")


def load_scenario(path: str | Path) -> Scenario:
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise ScenarioError(f"scenario file {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"scenario file {path}: invalid TOML: {e}") from None
    return scenario_from_dict(data)


def scenario_from_dict(data: dict[str, Any]) -> Scenario:
    known = {f.name for f in fields(Scenario)} - {"events"}
    events_raw = data.pop("event", [])
    for key in data:
        if key not in known:
            raise ScenarioError(f"{key}: unknown setting (known: {', '.join(sorted(known))})")
    if not isinstance(events_raw, list):
        raise ScenarioError("event: use [[event]] tables")
    events = []
    for i, ev in enumerate(events_raw):
        if not isinstance(ev, dict) or "at" not in ev or "action" not in ev:
            raise ScenarioError(f"event[{i}]: needs at = SECONDS and action = NAME")
        params = {k: v for k, v in ev.items() if k not in ("at", "action")}
        events.append(Event(ev["at"], ev["action"], params))
    events.sort(key=lambda e: e.at)
    return Scenario(**data, events=tuple(events))
