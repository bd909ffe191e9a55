"""Coalescing of identical in-flight upstream calls: one call, many waiters."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class _Shared(Generic[T]):
    """A call in flight: its outcome to come, and its runner's time frame (loop time)."""

    outcome: asyncio.Future[T]
    started: float
    deadline: float | None

    def cut_short_for(self, deadline: float | None, now: float) -> bool:
        """Whether a failure now came from the runner's deadline, which ``deadline`` outlasts.

        True when the runner's deadline has passed and the waiter has more time
        left than the call was given: it may well get an answer by calling itself.
        """
        if self.deadline is None or now < self.deadline:
            return False
        return deadline is None or deadline - now > self.deadline - self.started


class Coalescer(Generic[T]):
    """Share one in-flight call among every caller asking for the same key.

    The first caller runs the call itself (no extra task: most calls are
    never shared) and publishes its outcome; callers arriving meanwhile wait
    for it. A waiter that is cancelled leaves the call alone; if the caller
    running it is cancelled (its client went away), a waiter runs it anew.
    The call runs under its runner's deadline; waiters get its outcome,
    error included, except that each waiter stops waiting at its own
    deadline (TimeoutError) while the call goes on for the others, and a
    waiter with much more time left than a call that failed at its runner's
    deadline runs the call anew rather than share that failure.
    """

    def __init__(self) -> None:
        self._in_flight: dict[Hashable, _Shared[T]] = {}

    def __len__(self) -> int:
        return len(self._in_flight)

    async def run(
        self, key: Hashable, call: Callable[[], Awaitable[T]], *, deadline: float | None = None
    ) -> T:
        """Return the outcome of ``call()``, shared with callers of the same key.

        ``deadline`` (loop time) bounds this caller's wait for another's call,
        and tells waiters when the call this caller runs is cut short.
        """
        loop = asyncio.get_running_loop()
        while (shared := self._in_flight.get(key)) is not None:
            try:
                async with asyncio.timeout_at(deadline):
                    return await asyncio.shield(shared.outcome)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not shared.outcome.cancelled() or (task is not None and task.cancelling()):
                    raise  # this waiter itself was cancelled
                # The runner was cancelled: run the call here instead.
            except Exception:
                # Our own deadline (the call is still running), or the call's
                # own failure: shared, unless its runner's deadline caused it.
                if not shared.outcome.done() or not shared.cut_short_for(deadline, loop.time()):
                    raise
        outcome: asyncio.Future[T] = loop.create_future()
        mine = _Shared(outcome, loop.time(), deadline)
        self._in_flight[key] = mine
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
            if self._in_flight.get(key) is mine:
                del self._in_flight[key]
