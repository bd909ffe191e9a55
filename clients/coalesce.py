"""Coalescing of identical in-flight upstream calls: one call, many waiters."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class Coalescer(Generic[T]):
    """Share one in-flight call among every caller asking for the same key.

    The first caller runs the call itself (no extra task: most calls are
    never shared) and publishes its outcome; callers arriving meanwhile wait
    for it. A waiter that is cancelled leaves the call alone; if the caller
    running it is cancelled (its client went away), a waiter runs it anew.
    The call runs under its runner's deadline; waiters get its outcome,
    error included.
    """

    def __init__(self) -> None:
        self._in_flight: dict[Hashable, asyncio.Future[T]] = {}

    def __len__(self) -> int:
        return len(self._in_flight)

    async def run(self, key: Hashable, call: Callable[[], Awaitable[T]]) -> T:
        """Return the outcome of ``call()``, shared with callers of the same key."""
        while (shared := self._in_flight.get(key)) is not None:
            try:
                return await asyncio.shield(shared)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not shared.cancelled() or (task is not None and task.cancelling()):
                    raise  # this waiter itself was cancelled
                # The runner was cancelled: run the call here instead.
        outcome: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = outcome
        try:
            result = await call()
        except asyncio.CancelledError:
            outcome.cancel()
            raise
        except BaseException as exc:
            outcome.set_exception(exc)
            outcome.exception()  # retrieved: there may be no waiter to look
            raise
        else:
            outcome.set_result(result)
            return result
        finally:
            if self._in_flight.get(key) is outcome:
                del self._in_flight[key]
