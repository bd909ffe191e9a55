"""The coalescer: one call shared by concurrent callers, and cancellation rules."""

from __future__ import annotations

import asyncio

import pytest

from clients.coalesce import Coalescer


async def test_concurrent_callers_share_one_call() -> None:
    calls = 0

    async def call() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return calls

    coalescer: Coalescer[int] = Coalescer()
    results = await asyncio.gather(*(coalescer.run("k", call) for _ in range(50)))
    assert results == [1] * 50 and calls == 1 and len(coalescer) == 0
    assert await coalescer.run("k", call) == 2  # a later call is a new one


async def test_errors_reach_every_waiter() -> None:
    async def call() -> int:
        await asyncio.sleep(0.01)
        raise ValueError("upstream broke")

    coalescer: Coalescer[int] = Coalescer()
    results = await asyncio.gather(
        *(coalescer.run("k", call) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, ValueError) for r in results)


async def test_a_cancelled_waiter_leaves_the_call_to_the_others() -> None:
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return "done"

    coalescer: Coalescer[str] = Coalescer()
    runner = asyncio.create_task(coalescer.run("k", call))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(coalescer.run("k", call))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert await runner == "done" and calls == 1


async def test_when_the_runner_is_cancelled_a_waiter_runs_the_call_itself() -> None:
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return f"call {calls}"

    coalescer: Coalescer[str] = Coalescer()
    runner = asyncio.create_task(coalescer.run("k", call))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(coalescer.run("k", call))
    await asyncio.sleep(0.01)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert await waiter == "call 2"
