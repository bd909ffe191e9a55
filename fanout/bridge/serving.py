"""Per-app serving state of the bridge: the loop, the sync-view pool, the lifespan."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flask import Flask

from fanout.bridge.greenlets import MissingBridgeError

T = TypeVar("T")

SERVING_KEY = "bridge.serving"

#: The server loop, as seen from a sync view running in the thread pool, so
#: that async code called there is run on that loop (each worker call sets it
#: in its own copy of the request context).
SERVING_LOOP: contextvars.ContextVar[asyncio.AbstractEventLoop] = contextvars.ContextVar(
    "bridge.serving_loop"
)


@dataclass
class ServingState:
    """What the bridge owns while it serves one Flask app on one event loop."""

    loop: asyncio.AbstractEventLoop
    pool: ThreadPoolExecutor
    resources: AsyncExitStack = field(default_factory=AsyncExitStack)
    #: True once lifespan startup completed, False again from shutdown on.
    ready: bool = False
    #: Plain def views' requests in the pool now, running or waiting for a
    #: thread (counted on the loop thread).
    sync_running: int = 0
    #: HTTP requests being served now, from arrival to the end of the
    #: exchange, whether they run or wait for a thread (loop thread).
    exchanges: int = 0


def serving_state(app: Flask) -> ServingState | None:
    """Return the app's serving state, or None when the app is not being served."""
    state: ServingState | None = app.extensions.get(SERVING_KEY)
    return state


def is_ready(app: Flask) -> bool:
    """Tell whether the app is served and its lifespan startup has completed."""
    state = serving_state(app)
    return state is not None and state.ready


def wait_on_loop(coroutine: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop) -> T:
    """Run ``coroutine`` on the server ``loop`` from another thread, and wait for it."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result()
    # On a loop thread, waiting here for that loop would deadlock it.
    coroutine.close()
    raise MissingBridgeError(
        "async code can be waited for from sync code only in a request's greenlet or "
        "in another thread (a def view's worker, a thread holding the request)"
    )


def run_from_worker(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on the server loop from a sync view's worker thread; wait for it."""
    loop = SERVING_LOOP.get(None)
    if loop is None:
        coroutine.close()
        raise MissingBridgeError(
            "async code can be waited for from sync code only in a request's "
            "greenlet or in a plain def view's worker thread while served"
        )
    return wait_on_loop(coroutine, loop)
