"""A fake engine (tests/fakes) served in-process, and a remote engine watching it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from inference.config import ModelConfig
from inference.remote import RemoteEngine, open_remote_engine
from tests.fakes.fake_engine import FakeEngine, FakeSettings
from tests.fakes.fake_kv import FakeKVPublisher

INTERVAL = 0.1


@asynccontextmanager
async def fake_and_engine(
    settings: FakeSettings | None = None,
    spec: str = "",
    kv: FakeKVPublisher | None = None,
    interval: float = INTERVAL,
    wait: bool = True,
    **engine_kw: Any,
) -> AsyncIterator[tuple[FakeEngine, RemoteEngine]]:
    fake = FakeEngine(settings or FakeSettings(served_names=("served",)), kv)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(fake.serve)
        source = f"m=vllm+http://127.0.0.1:{port},served_name=served"
        if kv is not None:
            source += f",kv_events={kv.endpoint}"
            if kv.replay_endpoint:
                source += f",kv_events_replay={kv.replay_endpoint}"
        config = ModelConfig.from_spec(source + (f",{spec}" if spec else ""))
        async with open_remote_engine(config, probe_interval=interval, **engine_kw) as engine:
            if wait:
                with trio.fail_after(10):
                    await engine.wait_ready()
            yield fake, engine
        fake.die()
