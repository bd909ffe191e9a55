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


def _in(seconds: float) -> float:
    return asyncio.get_running_loop().time() + seconds


async def test_a_waiter_gives_up_at_its_own_deadline_and_the_call_goes_on() -> None:
    calls = 0
    release = asyncio.Event()

    async def call() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return "slow answer"

    coalescer: Coalescer[str] = Coalescer()
    # The answer comes after 2 s (a waiter ignoring its deadline would get it).
    asyncio.get_running_loop().call_later(2.0, release.set)
    runner = asyncio.create_task(coalescer.run("k", call, deadline=_in(30.0)))
    await asyncio.sleep(0)
    patient = asyncio.create_task(coalescer.run("k", call, deadline=_in(30.0)))
    with pytest.raises(TimeoutError):
        await coalescer.run("k", call, deadline=_in(0.05))  # joins, then gives up
    assert not runner.done() and not patient.done()  # the call goes on for the others
    assert await runner == await patient == "slow answer"
    assert calls == 1


async def test_a_waiter_without_a_deadline_waits_for_the_call() -> None:
    async def call() -> str:
        await asyncio.sleep(0.05)
        return "done"

    coalescer: Coalescer[str] = Coalescer()
    runner = asyncio.create_task(coalescer.run("k", call, deadline=_in(30.0)))
    await asyncio.sleep(0)
    assert await coalescer.run("k", call) == "done"
    assert await runner == "done"


async def test_a_call_cut_short_by_its_runners_deadline_is_run_again_for_a_later_one() -> None:
    calls = 0

    async def call(deadline: float) -> str:
        nonlocal calls
        calls += 1
        # The upstream answers after 0.2 s; the runner's deadline may come first.
        async with asyncio.timeout_at(deadline):
            await asyncio.sleep(0.2)
        return f"call {calls}"

    coalescer: Coalescer[str] = Coalescer()
    short = _in(0.05)
    runner = asyncio.create_task(coalescer.run("k", lambda: call(short), deadline=short))
    await asyncio.sleep(0)
    long = _in(30.0)
    waiter = asyncio.create_task(coalescer.run("k", lambda: call(long), deadline=long))
    with pytest.raises(TimeoutError):
        await runner
    # Its runner's deadline, not the upstream, failed the call: the waiter,
    # with far more time left, called again rather than share that failure.
    assert await waiter == "call 2"


async def test_a_failure_before_the_runners_deadline_is_shared() -> None:
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.02)
        raise ValueError("refused")

    coalescer: Coalescer[str] = Coalescer()
    results = await asyncio.gather(
        coalescer.run("k", call, deadline=_in(5.0)),
        *(coalescer.run("k", call, deadline=_in(30.0)) for _ in range(20)),
        return_exceptions=True,
    )
    assert all(isinstance(r, ValueError) for r in results) and calls == 1


async def test_waiters_with_little_more_time_share_a_failure_at_the_deadline() -> None:
    # A hundred requests to one endpoint: their deadlines differ by their
    # arrival, a sliver each. Re-running the call for each would storm the upstream.
    calls = 0

    async def call(deadline: float) -> str:
        nonlocal calls
        calls += 1
        async with asyncio.timeout_at(deadline):
            await asyncio.sleep(3600)
        return "never"

    coalescer: Coalescer[str] = Coalescer()
    first = _in(0.2)
    runner = asyncio.create_task(coalescer.run("k", lambda: call(first), deadline=first))
    await asyncio.sleep(0)
    waiters = [
        asyncio.create_task(coalescer.run("k", lambda: call(first), deadline=first + n * 0.001))
        for n in range(1, 100)
    ]
    results = await asyncio.gather(runner, *waiters, return_exceptions=True)
    assert all(isinstance(r, TimeoutError) for r in results)
    assert calls == 1
