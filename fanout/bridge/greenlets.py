"""Run sync code in a greenlet on the event loop thread and let it await coroutines.

This is the technique of SQLAlchemy's asyncio layer (``greenlet_spawn`` /
``await_only``): the asyncio task that drives a greenlet is its parent; when
the sync code needs an awaitable's result it switches to the parent with the
awaitable, the parent awaits it on the loop and switches back with the value
(or throws the exception in). A round trip costs a couple of microseconds,
against ~200 us for handing work to a thread and back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from greenlet import getcurrent, greenlet

T = TypeVar("T")


class MissingBridgeError(RuntimeError):
    """Async code was awaited from sync code that no bridge greenlet is driving."""


class BridgeGreenlet(greenlet):  # type: ignore[misc]
    """A greenlet driven by an asyncio task, sharing that task's contextvars.

    Sharing the very same ``Context`` object (not a copy) is what lets
    ``flask.request`` and ``g``, pushed inside the greenlet, be seen by the
    coroutines the greenlet awaits, and lets tasks they create inherit them.
    """

    def __init__(self, run: Callable[..., Any], driver: greenlet) -> None:
        super().__init__(run, driver)
        self.gr_context = driver.gr_context


def in_bridge_greenlet() -> bool:
    """Tell whether the caller runs inside a bridge greenlet (and may await_only)."""
    return isinstance(getcurrent(), BridgeGreenlet)


def await_only(awaitable: Awaitable[T]) -> T:
    """Wait for an awaitable from sync code running in a bridge greenlet."""
    current = getcurrent()
    if not isinstance(current, BridgeGreenlet):
        if asyncio.iscoroutine(awaitable):
            # Close it so it is not reported as "never awaited" on top of this error.
            awaitable.close()
        raise MissingBridgeError(
            "await_only() called outside a bridge greenlet: sync code that needs "
            "async results must run under run_in_greenlet() (served requests do)"
        )
    result: T = current.parent.switch(awaitable)
    return result


async def _yield_once() -> None:
    await asyncio.sleep(0)


def run_coroutine(awaitable: Awaitable[T]) -> T:
    """Run an awaitable to completion from sync code in a bridge greenlet, stepping it here.

    ``await_only(coro)`` hands the whole coroutine to the driving task, so
    the coroutine's own frames run outside the greenlet. Here they run in
    this greenlet, as a Task would step them, and only the futures they wait
    on are awaited by the task. Sync code the coroutine calls can therefore
    itself wait for async results, e.g. ``request.get_json()`` in an async
    view reading the body from ASGI ``receive``.
    """
    if not in_bridge_greenlet():
        if asyncio.iscoroutine(awaitable):
            awaitable.close()
        raise MissingBridgeError(
            "run_coroutine() called outside a bridge greenlet: sync code that needs "
            "async results must run under run_in_greenlet() (served requests do)"
        )
    steps: Any = awaitable.__await__()
    error: BaseException | None = None
    while True:
        try:
            yielded = steps.send(None) if error is None else steps.throw(error)
        except StopIteration as stop:
            result: T = stop.value
            return result
        error = None
        waiter: Awaitable[Any]
        if yielded is None:
            waiter = _yield_once()  # a bare yield (asyncio.sleep(0)): let the loop run once
        elif getattr(yielded, "_asyncio_future_blocking", None) is not None:
            yielded._asyncio_future_blocking = False
            waiter = yielded
        else:
            error = RuntimeError(f"coroutine yielded {yielded!r}, which asyncio cannot wait for")
            continue
        try:
            await_only(waiter)
        except BaseException as exc:  # noqa: BLE001 - thrown into the coroutine, as a Task would
            error = exc


async def run_in_greenlet(
    func: Callable[..., T],
    *args: Any,
    before_await: Callable[[], None] | None = None,
) -> T:
    """Run ``func(*args)`` in a new bridge greenlet, awaiting whatever it asks for.

    ``before_await`` is called each time the greenlet suspends, before the
    awaitable is awaited (the HTTP layer uses it to start watching for a
    client disconnect once the request body has been read).
    """
    child = BridgeGreenlet(func, getcurrent())
    pending = child.switch(*args)
    while not child.dead:
        if before_await is not None:
            before_await()
        try:
            value = await pending
        except BaseException as exc:  # noqa: BLE001 - forwarded into the greenlet, not swallowed
            # CancelledError included: raising it inside the greenlet runs the
            # sync code's finally blocks (Flask's teardown), and it propagates
            # back out through child.throw unless that code handles it.
            pending = child.throw(exc)
        else:
            pending = child.switch(value)
    result: T = pending
    return result
