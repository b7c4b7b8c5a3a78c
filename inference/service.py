"""The model service: config-driven asynchronous loading, plus a batcher per model.

Each model moves through the states

    loading -> ready | failed(reason)          ready -> unloading -> (gone)

Loading runs on the model's dedicated worker thread, never on the event loop;
`wait_ready` is the ready event. A failed load is recorded with its reason and
never takes the process down.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from .config import ModelConfig
from .errors import ModelNotReady
from .worker import WorkerThread

if TYPE_CHECKING:  # torch is imported on the first load, so a node without models stays light
    import torch

    from .batcher import DynamicBatcher, LoadStats
    from .engine import Engine, ModelDescription
    from .llm.client import LLMClient
    from .llm.params import EngineStats
    from .remote import RemoteEngine


#: How often an LLM engine's load is read (the gossip interval's order).
LLM_POLL_S = 0.2


class ModelState(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    UNLOADING = "unloading"


def _hash_fields(info: Any) -> dict[str, Any]:
    """What a router needs to compute an LLM engine's prefix block hashes (the
    built-in engine's `ModelInfo` and a fronted engine's `RemoteEngineInfo`
    both carry them)."""
    return {
        "kind": "llm",
        "block_size": info.block_size,
        "hash": info.hash_name,
        "hash_salt": info.hash_salt,
    }


@dataclass
class ModelStatus:
    config: ModelConfig
    state: ModelState = ModelState.LOADING
    reason: str = ""
    description: ModelDescription | None = None
    settled: trio.Event = field(default_factory=trio.Event)  # set on ready or failed
    batcher: DynamicBatcher | None = None
    worker: WorkerThread | None = None
    scope: trio.CancelScope | None = None
    #: An LLM (format "llm"): its engine process's client, and its latest load.
    llm: LLMClient | None = None
    llm_stats: EngineStats | None = None
    #: A remote engine (format "remote": vLLM, SGLang, an OpenAI server) this
    #: node fronts; its load and prefix state are read like the built-in's.
    remote: RemoteEngine | None = None
    in_flight: int = 0  # requests passed to the remote engine now

    @property
    def is_llm(self) -> bool:
        return self.config.format in ("llm", "remote")

    def to_json(self) -> dict[str, Any]:
        """The model's entry in the node's gossiped record."""
        out: dict[str, Any] = {"state": str(self.state), "version": "1"}
        if self.reason:
            out["reason"] = self.reason
        if self.description is not None:
            out["max_batch"] = self.description.max_batch_size
            out["memory"] = self.description.memory_bytes
            out["device"] = self.description.device
        if self.llm is not None:
            info = self.llm.info
            out.update(_hash_fields(info))
            out["max_model_len"] = info.max_model_len
            out["max_batch"] = self.config.max_num_seqs
            out.update(self._load_fields())
        elif self.remote is not None:
            engine = self.remote.info
            out.update(_hash_fields(engine))
            out["engine"] = engine.kind
            # How far its KV events can be trusted ("exact", "partial: why"...);
            # `prefix` is the gossiped summary's header (node/prefixes.py).
            out["prefix_state"] = engine.prefix
            if engine.max_model_len:
                out["max_model_len"] = engine.max_model_len
            out.update(self._load_fields())
        elif self.is_llm:
            out["kind"] = "llm"
        return out

    def _load_fields(self) -> dict[str, Any]:
        """An LLM engine's latest load, as its record entry carries it."""
        st = self.llm_stats
        if st is None:
            return {}
        return {
            "running": st.running,
            "waiting": st.waiting,
            "kv_used": st.kv_blocks_used,
            "kv_total": st.kv_blocks_total,
            "prefix_queries": st.prefix_cache_queries,
            "prefix_hits": st.prefix_cache_hits,
            # Coarse, so that noise does not rewrite the record every tick.
            "tokens_per_s": round(st.tokens_per_s, -1),
        }


class InferenceService:
    """Owns the engine, one worker thread and one batcher per model.

    Run it inside a nursery: `nursery.start_soon(service.run)`; loads and
    batchers then live under that nursery and end with it.
    """

    def __init__(self, engine: Engine | None = None, remote_probe_interval: float = 0.2) -> None:
        self._engine = engine
        #: How often a remote engine's health and load are read (the daemon
        #: passes its gossip interval: a dead engine is noticed within two).
        self.remote_probe_interval = remote_probe_interval
        self._models: dict[str, ModelStatus] = {}
        self._nursery: trio.Nursery | None = None
        self._started = trio.Event()

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            from .engine import TorchEngine

            self._engine = TorchEngine()
        return self._engine

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._started.set()
                task_status.started()
                await trio.sleep_forever()
        finally:
            for status in self._models.values():
                if status.worker is not None:
                    status.worker.close()

    # -- model lifecycle -------------------------------------------------------

    def load(self, config: ModelConfig) -> ModelStatus:
        """Start loading `config` in the background; returns its status at once."""
        if self._nursery is None:
            raise RuntimeError("InferenceService.run() is not running")
        existing = self._models.get(config.name)
        if existing is not None and existing.state in (ModelState.LOADING, ModelState.READY):
            return existing
        status = ModelStatus(config)
        self._models[config.name] = status
        self._nursery.start_soon(self._load, status)
        return status

    async def _load(self, status: ModelStatus) -> None:
        if status.config.format == "remote":
            await self._load_remote(status)
            return
        if status.is_llm:
            await self._load_llm(status)
            return
        config = status.config
        worker = WorkerThread(config.name)
        status.worker = worker
        try:
            status.description = await worker.run(self.engine.load, config)
        except Exception as e:
            status.state = ModelState.FAILED
            status.reason = f"{type(e).__name__}: {e}"
            worker.close()
            status.worker = None
            status.settled.set()
            return
        from .batcher import DynamicBatcher

        batcher = DynamicBatcher(self.engine, config, worker)
        status.batcher = batcher
        status.state = ModelState.READY
        status.settled.set()
        with trio.CancelScope() as scope:
            status.scope = scope
            await batcher.run()

    async def _load_llm(self, status: ModelStatus) -> None:
        """An LLM runs in its own engine process (inference.llm.host): model
        execution never holds this process's GIL, so gossip ticks stay on time
        however busy the engine is (issue #20). Its load is polled every
        `LLM_POLL_S` for the gossiped record; a dead engine makes the model failed."""
        from .errors import EngineDeadError
        from .llm.host import EngineStartError, open_process_engine

        with trio.CancelScope() as scope:
            status.scope = scope
            try:
                async with open_process_engine(status.config) as llm:
                    status.llm = llm
                    status.llm_stats = await llm.stats()
                    status.state = ModelState.READY
                    status.settled.set()
                    while True:
                        await trio.sleep(LLM_POLL_S)
                        status.llm_stats = await llm.stats()
            except (EngineStartError, EngineDeadError, OSError) as e:
                status.state = ModelState.FAILED
                status.reason = f"{type(e).__name__}: {e}"
                status.llm = None
                status.settled.set()

    async def _load_remote(self, status: ModelStatus) -> None:
        """Front an engine the operator runs (inference.remote): the model is
        ready while the engine's health and /v1/models say so, and flips to
        failed (with the reason) within two probe intervals of it dying or
        hanging; its /metrics are read into the same load as the built-in's."""
        from .errors import EngineDeadError
        from .remote import EngineHealth, open_remote_engine

        def on_change(health: EngineHealth) -> None:
            if status.state == ModelState.UNLOADING:
                return
            status.state = ModelState.READY if health.ready else ModelState.FAILED
            status.reason = "" if health.ready else f"engine not ready: {health.reason}"
            status.settled.set()

        with trio.CancelScope() as scope:
            status.scope = scope
            async with open_remote_engine(
                status.config,
                probe_interval=self.remote_probe_interval,
                inflight=lambda: status.in_flight,
                on_change=on_change,
            ) as engine:
                status.remote = engine
                while True:
                    try:
                        status.llm_stats = await engine.stats()
                    except (EngineDeadError, OSError) as e:
                        status.reason = f"engine load unreadable: {e}"
                    await trio.sleep(self.remote_probe_interval)

    async def wait_ready(self, name: str) -> ModelStatus:
        """The ready event: returns once the model is ready or has failed."""
        status = self._status(name)
        await status.settled.wait()
        return status

    async def unload(self, name: str) -> None:
        status = self._status(name)
        await status.settled.wait()
        status.state = ModelState.UNLOADING
        if (status.llm is not None or status.remote is not None) and status.scope is not None:
            status.scope.cancel()  # stops the engine process, or stops watching a remote one
            status.llm = None
            status.remote = None
        if status.batcher is not None:
            status.batcher.close()
        if status.scope is not None:
            status.scope.cancel()
        if status.worker is not None:
            await status.worker.run(self.engine.unload, name)
            status.worker.close()
        self._models.pop(name, None)

    # -- serving -------------------------------------------------------------

    async def infer(
        self,
        name: str,
        inputs: Mapping[str, torch.Tensor],
        timeout_s: float | None = None,
        as_list: bool = False,
    ) -> dict[str, Any]:
        status = self._models.get(name)
        if status is None or status.state != ModelState.READY or status.batcher is None:
            state = status.state if status is not None else "not loaded"
            raise ModelNotReady(f"model {name!r} is {state}")
        return await status.batcher.infer(inputs, timeout_s=timeout_s, as_list=as_list)

    def status(self, name: str) -> ModelStatus | None:
        return self._models.get(name)

    def _status(self, name: str) -> ModelStatus:
        status = self._models.get(name)
        if status is None:
            raise ModelNotReady(f"model {name!r} is not loaded")
        return status

    def llm(self, name: str) -> LLMClient:
        """A ready LLM's client; ModelNotReady otherwise."""
        status = self._models.get(name)
        if status is None or status.state != ModelState.READY or status.llm is None:
            state = status.state if status is not None else "not loaded"
            raise ModelNotReady(f"model {name!r} is {state}")
        return status.llm

    def models(self) -> dict[str, ModelStatus]:
        return dict(self._models)

    def stats(self, name: str) -> LoadStats | None:
        status = self._models.get(name)
        if status is None or status.batcher is None:
            return None
        return status.batcher.stats()
