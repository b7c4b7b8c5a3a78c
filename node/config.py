"""Node configuration: a TOML file, overridden by flags, overridden by RUMOR_*
environment variables. Every validation error names its field."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from gossip.transport import parse_hostport
from inference.config import ModelConfig
from inference.errors import ConfigError

from .httpserver import HTTPLimits

LOG_LEVELS = ("debug", "info", "warning", "error")
ROUTERS = ("rumor", "random", "round_robin")


@dataclass(frozen=True)
class NodeConfig:
    name: str
    gossip: str = "127.0.0.1:0"
    http: str = "127.0.0.1:0"
    join: tuple[str, ...] = ()
    models: tuple[str, ...] = ()  # CLI specs, NAME=SOURCE[,k=v]
    model_tables: tuple[dict[str, Any], ...] = field(default=(), compare=False)
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
    #: "rumor" (node.router), or a baseline for comparisons: "random", "round_robin".
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
    #: HTTP server limits (node.httpserver.HTTPLimits says why each default).
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
        self.model_configs()  # validates every model

    def http_limits(self) -> HTTPLimits:
        return HTTPLimits(
            keep_alive_s=self.http_keep_alive,
            body_timeout_s=self.http_body_timeout,
            max_connections=self.http_max_connections,
            max_connections_per_ip=self.http_max_connections_per_ip,
        )

    def model_configs(self) -> list[ModelConfig]:
        out = [ModelConfig.from_spec(s) for s in self.models]
        out += [ModelConfig.from_dict(dict(t)) for t in self.model_tables]
        names = [c.name for c in out]
        if len(set(names)) != len(names):
            raise ConfigError("model", "two models share a name")
        return out


_TYPES = {f.name: f.type for f in fields(NodeConfig)}


def _coerce(key: str, value: Any) -> Any:
    t = str(_TYPES[key])
    try:
        if "tuple" in t:
            if isinstance(value, str):
                return tuple(v for v in value.split(",") if v)
            return tuple(value)
        if t == "bool":
            if isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes")
            return bool(value)
        if t == "int":
            return int(value)
        if t == "float":
            return float(value)
    except (TypeError, ValueError):
        raise ConfigError(key, f"{value!r} is not a valid {t}") from None
    return value if value is None else str(value)


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
        node = data.pop("node", data)
        for key, value in node.items():
            if key not in _TYPES or key == "model_tables":
                raise ConfigError(key, "unknown setting")
            values[key] = _coerce(key, value)
        values["model_tables"] = tuple(tables)
    for key, value in flags.items():
        if value is not None and value != () and value != []:
            values[key] = _coerce(key, value)
    env = dict(os.environ) if env is None else env
    for key in _TYPES:
        raw = env.get(f"RUMOR_{key.upper()}")
        if raw is not None and key != "model_tables":
            values[key] = _coerce(key, raw)
    if "name" not in values:
        raise ConfigError("name", "is required (--name, [node].name or RUMOR_NAME)")
    return NodeConfig(**values)
