"""Plain def views' work in the bridge's thread pool: the view call and its streamed body."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

from fanout.bridge.greenlets import await_only, in_bridge_greenlet
from fanout.bridge.serving import ServingState

T = TypeVar("T")

_END = object()


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


class PoolIterator(Iterator[T]):
    """A plain def view's streamed body, each chunk produced in the pool.

    Iterated (and closed) from the request's greenlet: a generator that
    blocks between chunks stalls only its own thread, never the loop. Every
    step runs in ``context``, the copy of the request's context the view ran
    in, so the generator sees what the view saw (and rebinding a contextvar
    there does not propagate back, as for the view itself).
    """

    def __init__(
        self, source: Iterable[T], context: contextvars.Context, state: ServingState
    ) -> None:
        self._source = source
        self._context = context
        self._state = state
        self._iterator: Iterator[T] | None = None
        self._running: Future[Any] | None = None
        self._done = False

    def __iter__(self) -> PoolIterator[T]:
        return self

    def _step(self) -> Any:
        if self._iterator is None:
            self._iterator = iter(self._source)
        return next(self._iterator, _END)

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        self._running = submit(self._state, lambda: self._context.run(self._step))
        item = await_only(asyncio.wrap_future(self._running, loop=self._state.loop))
        self._running = None
        if item is _END:
            self._done = True
            raise StopIteration
        chunk: T = item
        return chunk

    def close(self) -> None:
        """Close the view's iterable (WSGI), in the pool and in the view's context."""
        self._done = True
        close = getattr(self._source, "close", None)
        if close is None or _close_is_a_no_op(self._source):
            return
        running, self._running = self._running, None
        if running is not None and not running.done():
            # The request was cancelled while a chunk was being produced. The
            # generator cannot be closed while it runs: close it in the pool
            # right after, without making the cancelled request wait. Submitted
            # from the loop thread (submit counts it there), whichever thread
            # the callback runs in: the worker that finished the chunk, or this
            # one if it finished just now.
            loop = self._state.loop
            closing = functools.partial(self._context.run, close)
            running.add_done_callback(
                lambda _: (
                    loop.is_closed() or loop.call_soon_threadsafe(submit, self._state, closing)
                )
            )
            return
        job = submit(self._state, lambda: self._context.run(close))
        if in_bridge_greenlet():
            await_only(asyncio.wrap_future(job, loop=self._state.loop))


def _close_is_a_no_op(source: object) -> bool:
    # A generator never started or already finished has nothing to run on close.
    return inspect.isgenerator(source) and inspect.getgeneratorstate(source) in (
        inspect.GEN_CREATED,
        inspect.GEN_CLOSED,
    )
