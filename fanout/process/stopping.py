"""The server's stop, as a request sees it: long streams end at once when it begins.

A worker started by the ``fanout`` supervisor puts its stop event in every
HTTP scope it serves (``STOPPING_SCOPE_KEY``); it is set when the worker's
graceful shutdown begins, before in-flight requests are waited for. A
stream that could last longer than ``graceful_timeout`` (the jobs' event
stream) watches it and ends with a last event, instead of holding the
shutdown until it is cut. Under plain Hypercorn there is no such event.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from flask import request

T = TypeVar("T")

#: The ASGI scope key of the worker's stop event (an asyncio.Event on its loop).
STOPPING_SCOPE_KEY = "fanout.stopping"


def server_stopping() -> asyncio.Event | None:
    """The stop event of the server serving this request, or None if it has none."""
    scope = request.environ.get("asgi.scope") or {}
    event = scope.get(STOPPING_SCOPE_KEY)
    return event if isinstance(event, asyncio.Event) else None


async def until_set(source: AsyncIterator[T], stop: asyncio.Event | None) -> AsyncIterator[T]:
    """The items of ``source`` until it ends or ``stop`` is set (then it is closed)."""
    if stop is None:
        async for item in source:
            yield item
        return
    stopped: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            step: asyncio.Future[Any] = asyncio.ensure_future(anext(source))
            await asyncio.wait((step, stopped), return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                step.cancel()
                # Waited for, not awaited: a CancelledError of ours is not raised here.
                await asyncio.wait((step,))
                return
            try:
                item = step.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        stopped.cancel()
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()
