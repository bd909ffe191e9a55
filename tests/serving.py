"""Serve an ASGI app with the real Hypercorn on 127.0.0.1, port 0, in the test's loop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config

from app import create_app
from fanout.bridge import ASGIBridge, BridgeFlask
from tests.probe_views import mount_probes

BACKLOG = 4096


@asynccontextmanager
async def hypercorn_serving(asgi_app: Any, **settings: Any) -> AsyncIterator[str]:
    """Serve ``asgi_app`` until the block ends; yield its base URL."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = Config()
    # Hypercorn adopts the descriptor; detach() so only Hypercorn closes it.
    config.bind = [f"fd://{listener.detach()}"]
    config.backlog = BACKLOG
    config.graceful_timeout = 5.0
    config.accesslog = None
    config.errorlog = None
    for key, value in settings.items():
        setattr(config, key, value)
    shutdown = asyncio.Event()
    server = asyncio.create_task(serve(asgi_app, config, shutdown_trigger=shutdown.wait))
    try:
        await _wait_until_listening(port, server)
        yield f"http://127.0.0.1:{port}"
    finally:
        shutdown.set()
        await server


async def _wait_until_listening(port: int, server: asyncio.Task[None]) -> None:
    # The socket listens from the start, but Hypercorn serves only after the
    # lifespan startup: wait for an HTTP answer (or for the server to fail).
    while not server.done():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.01)
            continue
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        answered = await reader.read(1)
        writer.close()
        await writer.wait_closed()
        if answered:
            return
        await asyncio.sleep(0.01)
    server.result()  # raise the server's startup error


@asynccontextmanager
async def serve_probes(
    upstream_url: str, config: dict[str, Any] | None = None
) -> AsyncIterator[tuple[str, BridgeFlask]]:
    """Serve a Fanout app built with ``config`` and the probe views; yield (URL, app)."""
    app = mount_probes(create_app(config), upstream_url)
    async with hypercorn_serving(ASGIBridge(app)) as url:
        yield url, app
