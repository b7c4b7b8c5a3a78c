"""The async clients: the engine process (generate, cancel -> abort, death) and the
in-process driver."""

from __future__ import annotations

import os
import signal

import pytest
import trio

from inference.errors import EngineDeadError, InvalidInput
from inference.llm.client import LLMClient, open_in_process
from inference.llm.host import EngineStartError, open_process_engine
from inference.llm.params import RequestOutput, SamplingParams

from .conftest import llm_config

LONG = SamplingParams(max_tokens=400, temperature=0, ignore_eos=True)


async def collect(client: LLMClient, ids: list[int], params: SamplingParams) -> list[RequestOutput]:
    return [o async for o in client.generate(ids, params)]


async def cancel_after(client: LLMClient, ids: list[int], n: int) -> int:
    """Consume n outputs of a long request, then drop it (a client disconnect)."""
    got = 0
    with trio.CancelScope() as scope:
        async for _ in client.generate(ids, LONG):
            got += 1
            if got == n:
                scope.cancel()
    return got


async def wait_idle(client: LLMClient) -> None:
    with trio.fail_after(10):
        while (s := await client.stats()).running or s.kv_blocks_used:
            await trio.sleep(0.01)


async def check_client(client: LLMClient) -> None:
    ids = client.tokenizer.encode("A rumor spreads the way news spreads in a small town. " * 3)
    assert len(ids) > 32
    greedy = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    outs = await collect(client, ids, greedy)
    assert len(outs) == 8 and outs[-1].finished and outs[-1].finish_reason == "length"
    # Concurrent requests stream independently and agree with the lone one.
    results: dict[int, list[int]] = {}

    async def one(i: int) -> None:
        results[i] = [t for o in await collect(client, ids, greedy) for t in o.token_ids]

    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(one, i)
    assert all(r == [t for o in outs for t in o.token_ids] for r in results.values())
    # Cancelling the iterator aborts the request and frees its blocks.
    assert await cancel_after(client, ids, 3) == 3
    await wait_idle(client)
    with pytest.raises(InvalidInput, match="empty"):
        await collect(client, [], greedy)
    with pytest.raises(InvalidInput, match="context"):
        await collect(client, ids * 30, greedy)
    stats = await client.stats()
    assert stats.generation_tokens >= 5 * 8 + 3 and stats.prefix_cache_hits > 0
    assert set(await client.cached_block_hashes()) >= set(
        (await client.kv_events_since(0)).stored
    ) - set((await client.kv_events_since(0)).removed)


async def test_process_engine_serves_cancels_and_reports() -> None:
    async with open_process_engine(llm_config()) as client:
        assert client.info.block_size == 16 and client.pid != os.getpid()
        await check_client(client)


async def test_in_process_driver_serves_cancels_and_reports() -> None:
    async with open_in_process(llm_config()) as client:
        await check_client(client)


async def test_a_killed_engine_fails_pending_requests_clearly() -> None:
    async with open_process_engine(llm_config()) as client:
        ids = client.tokenizer.encode("hello")
        got = 0
        with pytest.raises(EngineDeadError, match="gone"):
            with trio.fail_after(20):
                async for _ in client.generate(ids, LONG):
                    got += 1
                    if got == 2:
                        os.kill(client.pid, signal.SIGKILL)
        assert got >= 2
        with pytest.raises(EngineDeadError):
            await collect(client, ids, LONG)
        with pytest.raises(EngineDeadError):
            await client.stats()


async def test_a_model_that_cannot_load_is_a_start_error(tmp_path: object) -> None:
    with pytest.raises(EngineStartError, match="does not exist"):
        async with open_process_engine(llm_config(source=f"hf:{tmp_path}/none", size="")):
            pass
