"""Per-app serving state of the bridge: the loop, the sync-view pool, the lifespan."""

from __future__ import annotations

import asyncio
import contextvars
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

from flask import Flask

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
    #: Plain def views running in the pool now (counted on the loop thread).
    sync_running: int = 0


def serving_state(app: Flask) -> ServingState | None:
    """Return the app's serving state, or None when the app is not being served."""
    state: ServingState | None = app.extensions.get(SERVING_KEY)
    return state


def is_ready(app: Flask) -> bool:
    """Tell whether the app is served and its lifespan startup has completed."""
    state = serving_state(app)
    return state is not None and state.ready
