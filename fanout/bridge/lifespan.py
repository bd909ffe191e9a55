"""The ASGI lifespan protocol for a bridged Flask app."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from flask import Flask

from fanout.bridge.flask_app import BridgeFlask
from fanout.bridge.http import Receive, Send
from fanout.bridge.serving import SERVING_KEY, ServingState, serving_state

logger = logging.getLogger(__name__)

DEFAULT_SYNC_THREADS = 64

#: Set in ``app.extensions`` by lifespan shutdown, cleared by a new startup.
STOPPED_KEY = "bridge.stopped"


def attach_state(app: Flask) -> ServingState | None:
    """Return the app's serving state on the running loop, creating it if needed.

    None once the lifespan has shut the app down: its resources are closed,
    and a new pool made for a late request would never be shut down.
    """
    if app.extensions.get(STOPPED_KEY):
        return None
    state = serving_state(app)
    if state is None:
        threads = int(app.config.get("SYNC_THREADS", DEFAULT_SYNC_THREADS))
        state = ServingState(
            loop=asyncio.get_running_loop(),
            pool=ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sync-view"),
        )
        app.extensions[SERVING_KEY] = state
    return state


async def start_serving(app: Flask) -> None:
    """Open the app's serving state and enter its lifespan hooks in order."""
    # An explicit startup may serve the app again after an earlier shutdown.
    app.extensions.pop(STOPPED_KEY, None)
    state = attach_state(app)
    assert state is not None
    hooks = app.lifespan_hooks if isinstance(app, BridgeFlask) else []
    try:
        for hook in hooks:
            await state.resources.enter_async_context(hook(app))
    except BaseException:
        # Close what did open, in reverse order, before reporting the failure.
        await stop_serving(app)
        raise
    state.ready = True


async def stop_serving(app: Flask) -> None:
    """Leave the lifespan hooks in reverse order and release the serving state."""
    app.extensions[STOPPED_KEY] = True
    state = app.extensions.pop(SERVING_KEY, None)
    if state is None:
        return
    state.ready = False
    try:
        await state.resources.aclose()
    finally:
        # Sync views still running in the pool finish on their own; nothing waits.
        state.pool.shutdown(wait=False, cancel_futures=True)


async def serve_lifespan(get_app: Callable[[], Flask], receive: Receive, send: Send) -> None:
    """Answer the server's lifespan messages until shutdown completes.

    Any failure but cancellation is reported (``lifespan.*.failed`` with its
    reason): an error escaping instead would make Hypercorn serve on without
    lifespan support. Cancellation, KeyboardInterrupt and SystemExit are
    re-raised once reported (cancellation is not reported at all).
    """
    app: Flask | None = None
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                app = get_app()
                await start_serving(app)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                logger.exception("startup failed")
                # Hypercorn raises from this send and the server exits non-zero.
                await send({"type": "lifespan.startup.failed", "message": _reason(exc)})
                if not isinstance(exc, Exception):
                    raise
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            try:
                if app is not None:
                    await stop_serving(app)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                logger.exception("shutdown failed")
                await send({"type": "lifespan.shutdown.failed", "message": _reason(exc)})
                if not isinstance(exc, Exception):
                    raise
                return
            await send({"type": "lifespan.shutdown.complete"})
            return


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
