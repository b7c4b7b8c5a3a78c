"""A vLLM, SGLang or other OpenAI-compatible server beside the daemon, as its engine.

`open_remote_engine(config, probe_interval=0.2)` starts three loops in its own
nursery and yields a `RemoteEngine`:

- readiness: every interval, GET the health path (vLLM and SGLang: /health)
  with a deadline of one interval (or `probe_timeout_s`), and now and then GET
  /v1/models, which must list the served name. One failed probe marks the
  engine not ready, so an engine that dies is noticed within one interval and
  one that hangs within two (the probe after the last good one times out).
- load: every interval, scrape /metrics into `EngineStats` (metrics.py).
- prefix state: with `kv_events=`, a thread subscribed to the engine's KV
  events (kv_subscriber.py) keeps `RemotePrefixState`.

Requests go through `send()`, which returns the engine's answer as soon as
its head arrives and streams the body (http.py).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import trio

from ..config import ModelConfig, parse_engine_url
from ..errors import ConfigError
from ..llm.client import KVEvents
from ..llm.params import EngineStats
from ..llm.prefix import HASH_NAME
from ..llm.tokenizer import LLMTokenizer, load_hf_tokenizer
from .http import EngineHTTP, EngineResponse, EngineUnavailable
from .kv_subscriber import KVEventSubscriber
from .metrics import NAMES_BY_KIND, LoadTracker
from .prefix_state import RemotePrefixState
from .rewrite import ModelNameRewriter, rewrite_request

log = logging.getLogger(__name__)

#: The OpenAI endpoints `send()` forwards (POST).
PROXY_PATHS = ("/v1/completions", "/v1/chat/completions")
#: Request headers of the caller never passed to the engine.
_NOT_FORWARDED = frozenset({"content-type", "accept-encoding", "content-encoding"})
#: How often /v1/models is asked while the engine is ready (it changes only
#: when the engine restarts, which the health probe notices first).
MODELS_EVERY_S = 5.0


@dataclass(frozen=True)
class EngineHealth:
    ready: bool
    reason: str  # why not ready ("" when ready)
    since: float  # trio.current_time() of the last change


@dataclass(frozen=True)
class RemoteEngineInfo:
    """What the daemon gossips about a remote engine (msgpack-friendly via to_wire)."""

    name: str  # rumor's model name
    kind: str  # vllm, sglang or openai
    base_url: str
    served_name: str
    max_model_len: int  # from /v1/models (vLLM reports it), 0 = unknown
    block_size: int  # prefix hashing: tokens per block (the engine's --block-size)
    hash_name: str  # prefix.HASH_NAME when the prefix state is usable, else ""
    hash_salt: str  # the salt to pass to prefix.block_hashes (the model name)
    prefix: str  # "none" | "exact" | "partial: why" | "mismatch: why"

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)


class RemoteEngine:
    """An engine in another process, reached over HTTP (and ZMQ for KV events)."""

    def __init__(
        self,
        config: ModelConfig,
        probe_interval: float = 0.2,
        inflight: Callable[[], int] | None = None,
        on_change: Callable[[EngineHealth], None] | None = None,
    ) -> None:
        if config.format != "remote":
            raise ConfigError("source", f"{config.source!r} is not a remote engine")
        if not probe_interval > 0:
            raise ValueError("probe_interval must be > 0")
        self.config = config
        self.url = parse_engine_url(config.source)
        self.name = config.name
        self.served_name = config.served_name
        self.probe_interval = probe_interval
        self.probe_timeout = min(config.probe_timeout_s or probe_interval, 30.0)
        self._on_change = on_change
        self._probe_http = EngineHTTP(self.url, max_idle=2)
        self._proxy_http = EngineHTTP(self.url)
        names = NAMES_BY_KIND.get(self.url.kind)
        self._load = LoadTracker(names, self.served_name, inflight or (lambda: 0), self.name)
        self._health = EngineHealth(False, "not probed yet", trio.current_time())
        self._ready_event = trio.Event()
        self._probe_now = trio.Event()
        self._models_checked_at = -math.inf
        self._max_model_len = 0
        self.tokenizer: LLMTokenizer | None = None
        self.prefix_state: RemotePrefixState | None = None
        self.subscriber: KVEventSubscriber | None = None
        if config.kv_events:
            self.prefix_state = RemotePrefixState(config.block_size, salt=config.name)
            self.subscriber = KVEventSubscriber(
                self.prefix_state, config.kv_events, config.kv_events_replay,
                config.kv_events_topic,
            )

    # -- state the daemon reads ----------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._health.ready

    @property
    def health(self) -> EngineHealth:
        return self._health

    @property
    def info(self) -> RemoteEngineInfo:
        state = self.prefix_state
        if state is None:
            prefix, usable = "none", False
        elif state.mismatch:
            prefix, usable = f"mismatch: {state.mismatch}", False
        elif state.exact:
            prefix, usable = "exact", True
        else:
            prefix, usable = f"partial: {state.why_inexact}", True
        return RemoteEngineInfo(
            name=self.name,
            kind=self.url.kind,
            base_url=self.url.base_url,
            served_name=self.served_name,
            max_model_len=self._max_model_len,
            block_size=self.config.block_size,
            hash_name=HASH_NAME if usable else "",
            hash_salt=self.name,
            prefix=prefix,
        )

    async def wait_ready(self) -> None:
        """Return once the engine is ready (at once if it is)."""
        while not self._health.ready:
            await self._ready_event.wait()

    async def stats(self) -> EngineStats:
        """The load from the latest scrape (see metrics.LoadTracker for fallbacks)."""
        return self._load.stats(trio.current_time())

    @property
    def load_problems(self) -> tuple[str, ...]:
        """What the latest scrape lacked (each logged once); () when all was there."""
        return self._load.problems

    async def cached_block_hashes(self) -> list[int]:
        """Rumor block hashes the engine holds ([] without kv_events)."""
        return [] if self.prefix_state is None else self.prefix_state.cached_block_hashes()

    async def kv_events_since(self, cursor: int) -> KVEvents:
        """Prefix-cache changes after `cursor`, as the built-in engine reports them."""
        if self.prefix_state is None:
            return KVEvents(0, (), (), True)
        return self.prefix_state.kv_events_since(cursor)

    # -- requests -------------------------------------------------------------------

    async def send(
        self,
        path: str,
        body: bytes | Mapping[str, Any],
        headers: list[tuple[str, str]] | None = None,
        timeout: float | None = None,
    ) -> EngineResponse:
        """Forward an OpenAI request; return the answer once its head arrived.

        `body` is the client's JSON (bytes, or the parsed object); its `model`
        becomes the served name, and the answer's `model` becomes `name` again.
        `timeout`: the longest silence from the engine (default the config's
        `timeout_s`). Raises InvalidInput (a body that is no JSON object: 400),
        EngineUnavailable (not ready, or nothing came back: try another replica)."""
        if path not in PROXY_PATHS:
            raise ValueError(f"{path!r} is not one of {PROXY_PATHS}")
        data = rewrite_request(body, self.served_name)
        if not self._health.ready:
            raise EngineUnavailable(f"{self.name} is not ready: {self._health.reason}")
        # The body is JSON we wrote; the answer must come uncompressed for the name
        # mapping (and the server in front does its own content coding).
        fields = [("content-type", "application/json")] + [
            (k, v) for k, v in headers or () if k.lower() not in _NOT_FORWARDED
        ]
        transform = flush = None
        if self.served_name != self.name:
            rewriter = ModelNameRewriter(self.served_name, self.name)
            transform, flush = rewriter.feed, rewriter.flush
        try:
            return await self._proxy_http.request(
                "POST", path, data, fields, timeout or self.config.timeout_s, transform, flush
            )
        except EngineUnavailable:
            self._probe_now.set()  # do not wait for the next round to learn it died
            raise

    # -- the loops ------------------------------------------------------------------

    async def _run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._probe_loop)
            if self.config.metrics_path != "none":
                nursery.start_soon(self._scrape_loop)
            if self.subscriber is not None:
                nursery.start_soon(self.subscriber.run)
            if self.config.tokenizer:
                self.tokenizer = await trio.to_thread.run_sync(
                    load_hf_tokenizer, Path(self.config.tokenizer)
                )
            task_status.started()

    async def _probe_loop(self) -> None:
        while True:
            started = trio.current_time()
            self._probe_now = trio.Event()
            ok, why = False, f"no answer within {self.probe_timeout:g} s"
            with trio.move_on_after(self.probe_timeout):
                ok, why = await self._probe()
            self._set_health(ok, why)
            with trio.move_on_at(started + self.probe_interval):
                await self._probe_now.wait()

    async def _probe(self) -> tuple[bool, str]:
        """One round: (ready, why not)."""
        try:
            if self.config.health_path != "none":
                status, _ = await self._probe_http.get(self.config.health_path,
                                                       self.probe_timeout, limit=1 << 16)
                if status != 200:
                    return False, f"GET {self.config.health_path} answered {status}"
            now = trio.current_time()
            due = now - self._models_checked_at >= MODELS_EVERY_S
            if self.config.health_path == "none" or not self._health.ready or due:
                status, body = await self._probe_http.get("/v1/models", self.probe_timeout,
                                                          limit=4 << 20)
                if status != 200:
                    return False, f"GET /v1/models answered {status}"
                listed, max_len = _served_models(body)
                if self.served_name not in listed:
                    return False, (f"the engine serves {sorted(listed)[:8]}, not "
                                   f"{self.served_name!r} (set served_name=)")
                self._max_model_len = max_len.get(self.served_name, 0)
                self._models_checked_at = now
        except EngineUnavailable as e:
            return False, str(e)
        return True, ""

    def _set_health(self, ok: bool, why: str) -> None:
        old = self._health
        if ok == old.ready and (ok or why == old.reason):
            return
        self._health = EngineHealth(ok, why, trio.current_time())
        if ok:
            log.info("engine %s (%s) is ready", self.name, self.url.base_url)
            self._ready_event.set()
            if self.subscriber is not None:
                self.subscriber.engine_up()
        else:
            log.warning("engine %s (%s) is not ready: %s", self.name, self.url.base_url, why)
            if old.ready:  # (a new reason while not ready must keep the waiters' event)
                self._ready_event = trio.Event()
                self._proxy_http.close_idle()
                if self.subscriber is not None:
                    self.subscriber.engine_down(f"the engine is not ready: {why}")
        if self._on_change is not None:
            self._on_change(self._health)

    async def _scrape_loop(self) -> None:
        timeout = max(self.probe_timeout, 1.0)
        while True:
            started = trio.current_time()
            text: str | None = None
            error = ""
            try:
                status, body = await self._probe_http.get(self.config.metrics_path, timeout)
                if status == 200:
                    text = body.decode("utf-8", "replace")
                else:
                    error = f"GET {self.config.metrics_path} answered {status}"
            except EngineUnavailable as e:
                error = str(e)
            self._load.update(text, error, trio.current_time())
            engine_bs = self._load.latest.engine_block_size
            if self.prefix_state is not None and engine_bs is not None:
                self.prefix_state.check_block_size(engine_bs)
            await trio.sleep_until(started + self.probe_interval)

    def _close(self) -> None:
        self._probe_http.close()
        self._proxy_http.close()


def _served_models(body: bytes) -> tuple[set[str], dict[str, int]]:
    """Model ids from an OpenAI /v1/models answer, and vLLM's max_model_len per id."""
    try:
        doc = json.loads(body)
        data = doc["data"] if isinstance(doc, dict) else None
    except (ValueError, KeyError, TypeError):
        return set(), {}
    ids: set[str] = set()
    lens: dict[str, int] = {}
    for item in data if isinstance(data, list) else ():
        if isinstance(item, dict) and isinstance(item.get("id"), str):
            ids.add(item["id"])
            if type(item.get("max_model_len")) is int:
                lens[item["id"]] = item["max_model_len"]
    return ids, lens


@asynccontextmanager
async def open_remote_engine(
    config: ModelConfig,
    *,
    probe_interval: float = 0.2,
    inflight: Callable[[], int] | None = None,
    on_change: Callable[[EngineHealth], None] | None = None,
) -> AsyncIterator[RemoteEngine]:
    """Start watching the engine; yields at once (not waiting for it to be ready:
    `await engine.wait_ready()` for that). Leaving the block stops every loop
    and closes every connection."""
    engine = RemoteEngine(config, probe_interval, inflight, on_change)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(engine._run)
            try:
                yield engine
            finally:
                nursery.cancel_scope.cancel()
    finally:
        engine._close()
