"""The dynamic batcher and the model service, on trio with real worker threads."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence

import pytest
import torch
import trio

from inference.batcher import LoadStats
from inference.config import ModelConfig
from inference.engine import Engine, ModelDescription, TorchEngine
from inference.errors import (
    InferenceFailed,
    InvalidInput,
    ModelNotReady,
    Overloaded,
    RequestTimeout,
)
from inference.models import IOSpec
from inference.service import InferenceService, ModelState


class FakeEngine(Engine):
    """Doubles its input; records batch sizes; fails on rows holding -1; can be gated."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.max_batch = 64

    def load(self, config: ModelConfig) -> ModelDescription:
        if config.source == "builtin:broken":
            raise RuntimeError("weights are corrupt")
        self.max_batch = config.max_batch_size
        return ModelDescription(
            config.name,
            "fake",
            "cpu",
            "float32",
            (IOSpec("input", "FP32", (2,)),),
            (IOSpec("output", "FP32", (2,)),),
            config.max_batch_size,
            config.batch_buckets(),
            0,
        )

    def unload(self, name: str) -> None:
        pass

    def describe(self, name: str) -> ModelDescription:
        raise NotImplementedError

    def validate(self, name: str, inputs: Mapping[str, torch.Tensor]) -> int:
        t = inputs.get("input")
        if t is None or t.dim() != 2 or t.shape[1] != 2:
            raise InvalidInput("input must be [-1, 2]")
        return int(t.shape[0])

    def predict(
        self, name: str, requests: Sequence[Mapping[str, torch.Tensor]]
    ) -> list[dict[str, torch.Tensor]]:
        self.gate.wait(10)
        x = torch.cat([r["input"] for r in requests])
        if (x == -1).any():
            raise RuntimeError("poison row")
        self.batches.append(int(x.shape[0]))
        out, off = [], 0
        for r in requests:
            k = r["input"].shape[0]
            out.append({"output": x[off : off + k] * 2})
            off += k
        return out

    def memory(self, name: str) -> tuple[int, int]:
        return (0, 0)


async def start(nursery: trio.Nursery, spec: str, engine: Engine | None = None) -> InferenceService:
    svc = InferenceService(engine or FakeEngine())
    await nursery.start(svc.run)
    svc.load(ModelConfig.from_spec(spec))
    status = await svc.wait_ready(spec.split("=")[0])
    assert status.state == ModelState.READY, status.reason
    return svc


def row(v: float) -> dict[str, torch.Tensor]:
    return {"input": torch.full((1, 2), v)}


async def until(svc: InferenceService, cond: Callable[[LoadStats], bool], what: str) -> None:
    """Wait (ample deadline) until the model's stats satisfy `cond`."""
    with trio.move_on_after(10):
        while True:
            stats = svc.stats("m")
            if stats is not None and cond(stats):
                return
            await trio.sleep(0.002)
    raise AssertionError(f"timed out waiting for {what}: {svc.stats('m')}")


async def test_loading_is_async_and_reports_states() -> None:
    async with trio.open_nursery() as n:
        svc = InferenceService(TorchEngine())
        await n.start(svc.run)
        status = svc.load(ModelConfig.from_spec("mlp=builtin:mlp,device=cpu"))
        assert status.state == ModelState.LOADING  # returned before the load finished
        await svc.wait_ready("mlp")
        assert status.state == ModelState.READY and status.description is not None
        out = await svc.infer("mlp", {"input": torch.zeros(2, 256)})
        assert out["output"].shape == (2, 16)
        await svc.unload("mlp")
        with pytest.raises(ModelNotReady):
            await svc.infer("mlp", {"input": torch.zeros(1, 256)})
        n.cancel_scope.cancel()


async def test_failed_load_is_recorded_and_harmless() -> None:
    async with trio.open_nursery() as n:
        svc = await start(n, "ok=builtin:x")
        svc.load(ModelConfig.from_spec("bad=builtin:broken"))
        status = await svc.wait_ready("bad")
        assert status.state == ModelState.FAILED and "corrupt" in status.reason
        with pytest.raises(ModelNotReady, match="failed"):
            await svc.infer("bad", row(1))
        assert (await svc.infer("ok", row(1)))["output"].tolist() == [[2.0, 2.0]]
        n.cancel_scope.cancel()


async def test_concurrent_requests_are_batched_and_answered_correctly() -> None:
    engine = FakeEngine()
    async with trio.open_nursery() as n:
        svc = await start(n, "m=builtin:x,max_batch_size=8", engine)
        engine.gate.clear()  # hold the first batch so the rest pile up
        results: dict[int, list[list[float]]] = {}

        async def client(i: int) -> None:
            results[i] = (await svc.infer("m", row(i), as_list=True))["output"]

        async with trio.open_nursery() as clients:
            for i in range(20):
                clients.start_soon(client, i)
            await until(svc, lambda st: st.queue + st.in_flight == 20, "20 requests queued")
            engine.gate.set()
        assert results == {i: [[2.0 * i, 2.0 * i]] for i in range(20)}
        assert max(engine.batches) == 8 and sum(engine.batches) == 20
        n.cancel_scope.cancel()


async def test_max_queue_delay_waits_to_fill_a_batch() -> None:
    engine = FakeEngine()
    async with trio.open_nursery() as n:
        # A delay far beyond the arrivals' spread (10 ms apart: 30 ms in all), so
        # a busy machine cannot split the batch; a full batch goes at once.
        svc = await start(n, "m=builtin:x,max_batch_size=4,max_queue_delay_ms=5000", engine)
        with trio.fail_after(4):  # less than the delay: the fourth arrival sent it
            async with trio.open_nursery() as clients:
                for i in range(4):
                    clients.start_soon(svc.infer, "m", row(i))
                    await trio.sleep(0.01)  # the arrivals' spacing, not a wait
        assert engine.batches == [4]
        n.cancel_scope.cancel()


async def test_preferred_batch_size_dispatches_without_waiting() -> None:
    engine = FakeEngine()
    async with trio.open_nursery() as n:
        svc = await start(
            n,
            "m=builtin:x,max_batch_size=8,max_queue_delay_ms=5000,preferred_batch_sizes=2",
            engine,
        )
        with trio.fail_after(2):  # far less than the 5 s delay
            async with trio.open_nursery() as clients:
                clients.start_soon(svc.infer, "m", row(1))
                clients.start_soon(svc.infer, "m", row(2))
        assert engine.batches == [2]
        n.cancel_scope.cancel()


async def test_overload_is_rejected_at_once() -> None:
    engine = FakeEngine()
    async with trio.open_nursery() as n:
        svc = await start(n, "m=builtin:x,max_batch_size=1,max_queue_size=2", engine)
        engine.gate.clear()
        n.start_soon(svc.infer, "m", row(0))  # taken into the held batch
        await until(svc, lambda st: st.in_flight == 1, "the first request in the held batch")
        n.start_soon(svc.infer, "m", row(1))
        n.start_soon(svc.infer, "m", row(2))
        await until(svc, lambda st: st.queue == 2, "two requests waiting")
        with trio.fail_after(0.5), pytest.raises(Overloaded):
            await svc.infer("m", row(3))
        stats = svc.stats("m")
        assert stats is not None and stats.queue == 2 and stats.in_flight == 1
        assert stats.rejected == 1
        engine.gate.set()
        n.cancel_scope.cancel()


async def test_timeout_and_cancellation_drop_the_request() -> None:
    engine = FakeEngine()
    async with trio.open_nursery() as n:
        svc = await start(n, "m=builtin:x,max_batch_size=1", engine)
        engine.gate.clear()
        n.start_soon(svc.infer, "m", row(0))
        await until(svc, lambda st: st.in_flight == 1, "the first request in the held batch")
        with pytest.raises(RequestTimeout):
            await svc.infer("m", row(5), timeout_s=0.05)
        with trio.move_on_after(0.05):
            await svc.infer("m", row(6))
        stats = svc.stats("m")
        assert stats is not None and stats.queue == 0
        engine.gate.set()
        await until(svc, lambda st: st.completed == 1 and st.in_flight == 0, "the held batch")
        # Neither the timed-out nor the cancelled request reached the model.
        stats = svc.stats("m")
        assert stats is not None and stats.queue == 0
        assert engine.batches == [1]
        n.cancel_scope.cancel()


async def test_bad_input_fails_only_its_own_request() -> None:
    engine = FakeEngine()
    async with trio.open_nursery() as n:
        svc = await start(n, "m=builtin:x,max_batch_size=8,max_queue_delay_ms=100", engine)
        outcomes: dict[str, object] = {}

        async def send(tag: str, inputs: dict[str, torch.Tensor]) -> None:
            try:
                outcomes[tag] = (await svc.infer("m", inputs))["output"].tolist()
            except Exception as e:
                outcomes[tag] = type(e)

        async with trio.open_nursery() as clients:
            clients.start_soon(send, "good1", row(1))
            clients.start_soon(send, "shape", {"input": torch.zeros(1, 3)})
            clients.start_soon(send, "poison", row(-1))  # valid shape, fails in the model
            clients.start_soon(send, "good2", row(2))
        assert outcomes == {
            "good1": [[2.0, 2.0]],
            "good2": [[4.0, 4.0]],
            "shape": InvalidInput,
            "poison": InferenceFailed,
        }
        n.cancel_scope.cancel()


async def test_unload_fails_queued_requests_clearly() -> None:
    engine = FakeEngine()
    async with trio.open_nursery() as n:
        svc = await start(n, "m=builtin:x,max_batch_size=1", engine)
        engine.gate.clear()
        errors: list[type] = []

        async def send(v: float) -> None:
            try:
                await svc.infer("m", row(v))
            except ModelNotReady as e:
                errors.append(type(e))

        n.start_soon(send, 0)
        await until(svc, lambda st: st.in_flight == 1, "the first request in the held batch")
        n.start_soon(send, 1)
        await until(svc, lambda st: st.queue == 1, "the second request waiting")
        engine.gate.set()
        await svc.unload("m")
        with trio.fail_after(10):
            while not errors:
                await trio.sleep(0.002)
        assert errors == [ModelNotReady]
        n.cancel_scope.cancel()


async def test_stats_track_latency_service_and_throughput() -> None:
    async with trio.open_nursery() as n:
        svc = await start(n, "m=builtin:x,max_batch_size=4")
        for i in range(10):
            await svc.infer("m", row(i))
        stats = svc.stats("m")
        assert stats is not None
        assert stats.completed == 10 and stats.throughput > 0
        assert stats.ewma_latency_s > 0 and 1 in stats.ewma_service_s
        fields = {"queue", "in_flight", "ewma_latency", "throughput", "memory"}
        assert set(stats.to_json()) == fields
        n.cancel_scope.cancel()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
async def test_two_models_load_concurrently_on_cuda_and_serve() -> None:
    # Regression: one model's CUDA-graph capture used to fail the other's load.
    async with trio.open_nursery() as n:
        svc = InferenceService(TorchEngine())
        await n.start(svc.run)
        svc.load(ModelConfig.from_spec("mlp=builtin:mlp,device=cuda,max_batch_size=64"))
        svc.load(ModelConfig.from_spec("tr=builtin:transformer,device=cuda"))
        for name in ("mlp", "tr"):
            status = await svc.wait_ready(name)
            assert status.state == ModelState.READY, status.reason
        out = await svc.infer("mlp", {"input": torch.zeros(3, 256)})
        assert out["output"].shape == (3, 16)
        out = await svc.infer("tr", {"input": torch.zeros(2, 32, dtype=torch.int64)})
        assert out["output"].shape == (2, 8)
        n.cancel_scope.cancel()
