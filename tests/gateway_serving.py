"""Serve the real gateway, configured by a TOML text, under Hypercorn on port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from app import create_app
from fanout.bridge import ASGIBridge, BridgeFlask
from tests.serving import hypercorn_serving


@dataclass
class Gateway:
    """A served gateway and a client for it."""

    url: str
    app: BridgeFlask
    client: aiohttp.ClientSession


@asynccontextmanager
async def gateway_serving(
    config_text: str, directory: Path, settings: Mapping[str, Any] | None = None
) -> AsyncIterator[Gateway]:
    """Write ``config_text`` as the gateway file, serve the app, yield a client."""
    path = directory / "gateway.toml"
    path.write_text(config_text)
    app = create_app({"CONFIG": str(path), "JOB_POLL_SECONDS": 0.1, **(settings or {})})
    async with hypercorn_serving(ASGIBridge(app)) as url:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(url, connector=connector) as client:
            yield Gateway(url, app, client)
