"""The greenlet bridge primitives, driven from plain asyncio tests."""

from __future__ import annotations

import asyncio
import contextvars
import inspect

import pytest

from fanout.bridge.greenlets import (
    MissingBridgeError,
    await_only,
    in_bridge_greenlet,
    run_coroutine,
    run_in_greenlet,
)

marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker")


async def test_sync_code_awaits_results_and_exceptions() -> None:
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    async def fail() -> None:
        await asyncio.sleep(0)
        raise KeyError("missing")

    def work() -> tuple[int, str]:
        assert in_bridge_greenlet()
        value = await_only(answer())
        try:
            await_only(fail())
        except KeyError as exc:
            return value, str(exc)
        raise AssertionError("unreachable")

    assert await run_in_greenlet(work) == (42, "'missing'")
    assert not in_bridge_greenlet()


async def test_contextvars_are_shared_between_the_greenlet_and_its_task() -> None:
    async def read_in_a_new_task() -> str:
        return await asyncio.create_task(_read_marker())

    def work(value: str) -> str:
        marker.set(value)
        return await_only(read_in_a_new_task())

    results = await asyncio.gather(*(run_in_greenlet(work, f"v{n}") for n in range(50)))
    assert results == [f"v{n}" for n in range(50)]


async def _read_marker() -> str:
    await asyncio.sleep(0)
    return marker.get()


async def test_run_coroutine_steps_the_coroutine_inside_the_greenlet() -> None:
    async def nested() -> str:
        # Sync code called from this coroutine may itself wait: it runs in the greenlet.
        await asyncio.sleep(0)  # a bare yield
        await asyncio.sleep(0.001)  # a future
        return sync_helper()

    def sync_helper() -> str:
        assert in_bridge_greenlet()
        return await_only(_echo("from sync"))

    assert await run_in_greenlet(run_coroutine, nested()) == "from sync"


async def _echo(value: str) -> str:
    await asyncio.sleep(0)
    return value


async def test_run_coroutine_delivers_exceptions_into_the_coroutine() -> None:
    async def failing_wait() -> str:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(future.set_exception, ValueError("upstream"))
        try:
            await future
        except ValueError as exc:
            return f"caught {exc}"
        return "not raised"

    assert await run_in_greenlet(run_coroutine, failing_wait()) == "caught upstream"


async def test_cancelling_the_driving_task_cancels_the_coroutine_and_runs_its_cleanup() -> None:
    events: list[str] = []

    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            events.append("coroutine cancelled")
            raise

    def work() -> None:
        try:
            run_coroutine(slow())
        finally:
            events.append("sync finally ran")

    task = asyncio.create_task(run_in_greenlet(work))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert events == ["coroutine cancelled", "sync finally ran"]


async def test_asyncio_timeout_works_inside_a_stepped_coroutine() -> None:
    async def bounded() -> str:
        try:
            async with asyncio.timeout(0.01):
                await asyncio.sleep(30)
        except TimeoutError:
            return "timed out"
        return "finished"

    assert await run_in_greenlet(run_coroutine, bounded()) == "timed out"


async def test_await_only_outside_a_greenlet_fails_clearly_and_closes_the_coroutine() -> None:
    coroutine = _echo("x")
    with pytest.raises(MissingBridgeError, match="outside a bridge greenlet"):
        await_only(coroutine)
    assert inspect.getcoroutinestate(coroutine) == "CORO_CLOSED"  # no "never awaited"
    with pytest.raises(MissingBridgeError):
        run_coroutine(_echo("y"))


async def test_a_task_started_from_the_greenlet_cannot_await_only() -> None:
    async def in_a_task() -> None:
        await_only(_echo("z"))

    def work() -> None:
        await_only(asyncio.create_task(in_a_task()))

    with pytest.raises(MissingBridgeError):
        await run_in_greenlet(work)
