"""The models this node holds: loaded by flag or config, or placed here by the
cluster's catalog (node.cluster.placement, with hysteresis), their readiness,
queues and admission (busy) rule."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from inference.config import ModelConfig
from inference.errors import ConfigError
from inference.service import InferenceService, ModelState

from .cluster.admission import busy_bound
from .cluster.placement import Placer

log = logging.getLogger("rumor.node")


class LocalModels:
    def __init__(
        self,
        inference: InferenceService,
        busy_queue: int,
        hold_load: float,
        hold_unload: float,
        spawn: Callable[..., Any],
    ) -> None:
        self.inference = inference
        self.busy_queue = busy_queue
        self.placer = Placer(hold_load, hold_unload)
        self.placed: set[str] = set()  # loaded because the catalog assigns them here
        self._spawn = spawn  # starts a background task (the daemon's nursery)

    def ready(self, model: str) -> bool:
        status = self.inference.status(model)
        return status is not None and status.state == ModelState.READY

    def load(self, model: str) -> tuple[float, float] | None:
        """(waiting, running) here, exact for a tensor model's batcher, as of
        the last poll (0.2 s) for an LLM engine; None if not held."""
        status = self.inference.status(model)
        if status is None:
            return None
        if status.llm_stats is not None:
            return float(status.llm_stats.waiting), float(status.llm_stats.running)
        stats = self.inference.stats(model)
        return (float(stats.queue), float(stats.in_flight)) if stats is not None else None

    def queue(self, model: str) -> float | None:
        """Requests waiting or running here; None if not held."""
        load = self.load(model)
        return sum(load) if load is not None else None

    def max_batch(self, model: str) -> int:
        """How many requests run at once: a tensor model's max batch, an LLM's
        max_num_seqs (continuous batching)."""
        status = self.inference.status(model)
        if status is None:
            return 1
        return status.config.max_num_seqs if status.is_llm else status.config.max_batch_size

    def busy(self, model: str) -> bool:
        """Waiting past the bound: answer "busy" so the router tries elsewhere."""
        load = self.load(model)
        if load is None:
            return False
        return load[0] >= busy_bound(self.busy_queue, self.max_batch(model))

    def place(self, now: float, mine: set[str], catalog: dict[str, Any]) -> None:
        """One placement step: load what is assigned here (`mine`), unload what
        is no longer, each after its hold."""
        held = set()
        for m in self.placed:
            st = self.inference.status(m)
            if st is not None and st.state in (ModelState.LOADING, ModelState.READY):
                held.add(m)
        to_load, to_unload = self.placer.step(now, mine, held)
        for m in sorted(to_load):
            if self.inference.status(m) is not None and m not in self.placed:
                continue  # loaded by --model/--config: not placement's to manage
            try:
                mc = ModelConfig.from_dict({**catalog[m], "name": m})
            except (ConfigError, TypeError, ValueError, KeyError) as e:
                log.error("placement: catalog spec of %r is invalid: %s", m, e)
                continue
            log.info("placement: loading %s", m, extra={"event": "place-load", "model": m})
            self.placed.add(m)
            self.inference.load(mc)
        for m in sorted(to_unload):
            log.info("placement: unloading %s", m, extra={"event": "place-unload", "model": m})
            self.placed.discard(m)
            self._spawn(self.inference.unload, m)
