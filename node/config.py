"""Node configuration: a TOML file, overridden by flags, overridden by RUMOR_*
environment variables. Every validation error names its field."""

from __future__ import annotations

import os
import resource
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from gossip.config import GossipConfig
from gossip.transport import parse_hostport
from inference.config import ModelConfig, coerce
from inference.errors import ConfigError

LOG_LEVELS = ("debug", "info", "warning", "error")
ROUTERS = ("rumor", "rumor_prefix", "cache_aware", "p2c", "least_loaded", "random", "round_robin")


#: Descriptors kept free for everything that is not an HTTP connection (gossip
#: sockets, the forwarder's pool, model files, logs).
_FD_RESERVE = 48


@dataclass(frozen=True)
class HTTPLimits:
    #: Close a connection idle this long between requests. Above common
    #: proxies' 60 s, so that a client or balancer always gives up on an idle
    #: connection before we do (hypercorn's default of 5 s equals httpx's
    #: pool expiry, and a request sent as both expire is lost).
    keep_alive_s: float = 75.0
    #: A request's body must arrive within this after its headers (408 after).
    body_timeout_s: float = 10.0
    #: Concurrent connections, in all and per client address. The overall cap
    #: is further bounded by the process's descriptor limit.
    max_connections: int = 1024
    max_connections_per_ip: int = 256

    def __post_init__(self) -> None:
        if self.keep_alive_s <= 0 or self.body_timeout_s <= 0:
            raise ValueError("keep_alive_s and body_timeout_s must be positive")
        if self.max_connections < 1 or self.max_connections_per_ip < 1:
            raise ValueError("connection caps must be at least 1")

    def connection_cap(self) -> int:
        """max_connections, lowered to what the descriptor limit leaves room for."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return self.max_connections
        return max(1, min(self.max_connections, soft - _FD_RESERVE))


@dataclass(frozen=True)
class NodeConfig:
    name: str
    gossip: str = "127.0.0.1:0"
    http: str = "127.0.0.1:0"
    join: tuple[str, ...] = ()
    models: tuple[str, ...] = ()  # CLI specs, NAME=SOURCE[,k=v]
    model_tables: tuple[dict[str, Any], ...] = field(default=(), compare=False)
    #: Protocol knobs over GossipConfig's defaults ([gossip] table,
    #: --gossip-opt KEY=VALUE, RUMOR_GOSSIP_KEY); `interval` and `fanout` above
    #: are the common two, kept as plain settings.
    gossip_table: dict[str, Any] = field(default_factory=dict, compare=False)
    data_dir: str | None = None
    keyring: str | None = None
    insecure: bool = False
    admin_token_file: str | None = None
    log_json: bool = False
    log_level: str = "info"
    interval: float = 0.2
    fanout: int = 3
    drain_timeout: float = 10.0
    max_body_bytes: int = 16 * 1024 * 1024
    request_timeout: float = 30.0
    forward_retries: int = 2
    #: Router: keep the local replica unless worse than the best sampled by this
    #: many requests (saves a network hop). Negative: the model's max batch
    #: size, since requests that fit in one batch add no queueing delay.
    local_margin: float = -1.0
    #: Routing policy (node.cluster.routing): "rumor" (for LLM requests
    #: "rumor_prefix": prefix-cache affinity against load), or one policy for
    #: every model: "rumor_prefix", or a baseline for comparisons: "cache_aware"
    #: (SGLang's rules), "p2c", "least_loaded", "random", "round_robin".
    router: str = "rumor"
    #: Admission control: a model's queue this deep answers "busy" (0: twice its
    #: max batch size); the router then tries another replica.
    busy_queue: int = 0
    #: Placement hysteresis: load a model assigned here after this long, unload
    #: one no longer assigned here after `placement_unload_hold`.
    placement_hold: float = 2.0
    placement_unload_hold: float = 30.0
    #: Open /v1/events streams at most (each holds a buffer of 1,000 events).
    max_event_subscribers: int = 64
    #: Shift the wall clock this node uses for gossip and timestamps by this
    #: many seconds: for rehearsing clock faults, never for production.
    clock_skew: float = 0.0
    #: HTTP server limits (HTTPLimits says why each default).
    #: Idle keep-alive: above common proxies' 60 s, so clients close first.
    http_keep_alive: float = 75.0
    #: A request body must arrive within this after its headers (else 408).
    http_body_timeout: float = 10.0
    #: Concurrent HTTP connections, in all (also bounded by the descriptor
    #: limit) and per client address; at the cap the longest-waiting idle or
    #: stalled connection is closed to make room.
    http_max_connections: int = 1024
    http_max_connections_per_ip: int = 256

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or len(self.name) > 128:
            raise ConfigError("name", "is required (1..128 characters)")
        for key in ("gossip", "http"):
            try:
                parse_hostport(getattr(self, key))
            except ValueError as e:
                raise ConfigError(key, str(e)) from None
        for j in self.join:
            try:
                parse_hostport(j)
            except ValueError as e:
                raise ConfigError("join", str(e)) from None
        if self.log_level not in LOG_LEVELS:
            raise ConfigError("log_level", f"must be one of {', '.join(LOG_LEVELS)}")
        if self.interval <= 0:
            raise ConfigError("interval", "must be positive")
        if self.fanout < 1:
            raise ConfigError("fanout", "must be at least 1")
        if self.max_body_bytes < 1024:
            raise ConfigError("max_body_bytes", "must be at least 1024")
        if self.drain_timeout < 0 or self.request_timeout <= 0:
            raise ConfigError("drain_timeout", "must be >= 0 (request_timeout > 0)")
        if self.forward_retries < 0 or self.busy_queue < 0:
            raise ConfigError("forward_retries", "forward_retries and busy_queue must be >= 0")
        if self.router not in ROUTERS:
            raise ConfigError("router", f"must be one of {', '.join(ROUTERS)}")
        if self.placement_hold < 0 or self.placement_unload_hold < 0:
            raise ConfigError("placement_hold", "placement holds must be >= 0")
        try:
            self.http_limits()
        except ValueError as e:
            raise ConfigError("http_keep_alive", str(e)) from None
        self.gossip_config()  # validates the [gossip] table
        self.model_configs()  # validates every model

    def http_limits(self) -> HTTPLimits:
        return HTTPLimits(
            keep_alive_s=self.http_keep_alive,
            body_timeout_s=self.http_body_timeout,
            max_connections=self.http_max_connections,
            max_connections_per_ip=self.http_max_connections_per_ip,
        )

    def gossip_config(self) -> GossipConfig:
        base = GossipConfig(interval=self.interval, fanout=self.fanout)
        return gossip_config(self.gossip_table, base)

    def model_configs(self) -> list[ModelConfig]:
        out = [ModelConfig.from_spec(s) for s in self.models]
        out += [ModelConfig.from_dict(dict(t)) for t in self.model_tables]
        names = [c.name for c in out]
        if len(set(names)) != len(names):
            raise ConfigError("model", "two models share a name")
        return out


_TYPES = {f.name: f.type for f in fields(NodeConfig)}


def _coerce(key: str, value: Any) -> Any:
    return coerce(key, str(_TYPES[key]), value)


_GOSSIP_TYPES = {f.name: str(f.type) for f in fields(GossipConfig)}


def gossip_config(table: Mapping[str, Any], base: GossipConfig | None = None) -> GossipConfig:
    """A `[gossip]` table (TOML, `--gossip-opt KEY=VALUE`, `RUMOR_GOSSIP_KEY`,
    or a scenario's) over `base`: every protocol knob, one set of defaults."""
    values = {}
    for key, raw in table.items():
        if key not in _GOSSIP_TYPES:
            raise ConfigError(f"gossip.{key}", f"unknown setting; have {', '.join(_GOSSIP_TYPES)}")
        values[key] = coerce(f"gossip.{key}", _GOSSIP_TYPES[key], raw)
    try:
        return replace(base or GossipConfig(), **values)
    except ValueError as e:
        raise ConfigError("gossip", str(e)) from None


def parse_pairs(items: Sequence[str], what: str) -> dict[str, str]:
    """KEY=VALUE strings (repeatable flags) as a dict."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(what, f"{item!r} is not KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def load_node_config(
    file: str | None, flags: dict[str, Any], env: dict[str, str] | None = None
) -> NodeConfig:
    """TOML file < flags < RUMOR_* environment."""
    values: dict[str, Any] = {}
    if file:
        try:
            data = tomllib.loads(Path(file).read_text())
        except OSError as e:
            raise ConfigError("config", f"{file}: {e.strerror or e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError("config", f"{file}: invalid TOML: {e}") from None
        tables = data.pop("model", [])
        gossip_table = data.pop("gossip", {})
        if not isinstance(gossip_table, dict):
            raise ConfigError("gossip", "must be a table")
        values["gossip_table"] = dict(gossip_table)
        node = data.pop("node", data)
        for key, value in node.items():
            if key not in _TYPES or key in ("model_tables", "gossip_table"):
                raise ConfigError(key, "unknown setting")
            values[key] = _coerce(key, value)
        values["model_tables"] = tuple(tables)
    gossip_opts = flags.pop("gossip_opts", None) or []
    for key, value in flags.items():
        if value is not None and value != () and value != []:
            values[key] = _coerce(key, value)
    env = dict(os.environ) if env is None else env
    for key in _TYPES:
        raw = env.get(f"RUMOR_{key.upper()}")
        if raw is not None and key not in ("model_tables", "gossip_table"):
            values[key] = _coerce(key, raw)
    gossip_table = dict(values.get("gossip_table", {}))
    gossip_table.update(parse_pairs(gossip_opts, "gossip_opt"))
    for key in _GOSSIP_TYPES:  # RUMOR_GOSSIP_PROBE_TIMEOUT=... and so on
        raw = env.get(f"RUMOR_GOSSIP_{key.upper()}")
        if raw is not None:
            gossip_table[key] = raw
    values["gossip_table"] = gossip_table
    if "name" not in values:
        raise ConfigError("name", "is required (--name, [node].name or RUMOR_NAME)")
    return NodeConfig(**values)
