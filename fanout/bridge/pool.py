"""Plain def views' work in the bridge's thread pool, counted while it runs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

from fanout.bridge.greenlets import await_only
from fanout.bridge.serving import ServingState

T = TypeVar("T")


def submit(state: ServingState, func: Callable[[], T]) -> Future[T]:
    """Run ``func`` in the pool, counted in ``state.sync_running`` until its thread is done.

    Call on the loop thread. A job whose request was cancelled keeps its
    thread until it returns (threads cannot be interrupted), so it is counted
    until then, not until the request gave up on it.
    """
    state.sync_running += 1
    try:
        future = state.pool.submit(func)
    except BaseException:
        state.sync_running -= 1
        raise
    loop = state.loop

    def finished(_: Future[T]) -> None:
        # Runs in the worker thread: the count belongs to the loop thread.
        if not loop.is_closed():
            loop.call_soon_threadsafe(_count_finished, state)

    future.add_done_callback(finished)
    return future


def _count_finished(state: ServingState) -> None:
    state.sync_running -= 1


def wait_in_pool(state: ServingState, func: Callable[[], T]) -> T:
    """Run ``func`` in the pool from the request's greenlet; the loop serves others meanwhile."""
    return await_only(asyncio.wrap_future(submit(state, func), loop=state.loop))
