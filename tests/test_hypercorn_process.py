"""The README's way of serving: `hypercorn -c hypercorn.toml app:app`, a real process."""

from __future__ import annotations

import asyncio
import os
import signal

import aiohttp

from tests.processes import start_gateway
from tests.upstream import FakeUpstream


async def test_hypercorn_serves_the_gateway_with_hypercorn_toml_and_stops_cleanly(
    upstream: FakeUpstream,
) -> None:
    env = {**os.environ, "FANOUT_DEMO_UPSTREAM_URL": upstream.url, "PYTHONWARNINGS": "error"}
    server, url = await start_gateway(env, capture_stderr=True)
    try:
        async with aiohttp.ClientSession() as client, client.get(f"{url}/healthz") as response:
            assert await response.json() == {"status": "ok"}
    finally:
        server.send_signal(signal.SIGTERM)
        _, raw_stderr = await asyncio.wait_for(server.communicate(), timeout=30)
    stderr = raw_stderr.decode()
    assert server.returncode == 0, stderr
    # The shared session was closed at shutdown: no leak warning.
    assert "Unclosed" not in stderr, stderr
    assert "Traceback" not in stderr, stderr
