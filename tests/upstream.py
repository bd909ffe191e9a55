"""A real aiohttp upstream on 127.0.0.1, port 0, that counts accepted TCP connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class FakeUpstream:
    """What the fake upstream saw; its base URL once started."""

    url: str = ""
    accepted: int = 0
    requests: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    request_ids: list[str] = field(default_factory=list)


STATE_KEY = web.AppKey("fake_upstream", FakeUpstream)


async def _delay(request: web.Request) -> web.Response:
    # GET /delay?ms=N: answer {"ms": N, "n": <request number>} after N ms.
    state = request.app[STATE_KEY]
    state.requests += 1
    state.in_flight += 1
    state.peak_in_flight = max(state.peak_in_flight, state.in_flight)
    state.request_ids.append(request.headers.get("X-Request-ID", ""))
    try:
        milliseconds = int(request.query.get("ms", "0"))
        await asyncio.sleep(milliseconds / 1000)
        return web.json_response({"ms": milliseconds, "n": state.requests})
    finally:
        state.in_flight -= 1


@asynccontextmanager
async def fake_upstream() -> AsyncIterator[FakeUpstream]:
    """Run the fake upstream for the duration of the block."""
    state = FakeUpstream()
    app = web.Application()
    app[STATE_KEY] = state
    app.router.add_get("/delay", _delay)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    protocol_factory = runner.server
    assert protocol_factory is not None

    def counting_factory() -> web.RequestHandler:
        # Called once per accepted TCP connection.
        state.accepted += 1
        return protocol_factory()

    server = await asyncio.get_running_loop().create_server(
        counting_factory, "127.0.0.1", 0, backlog=4096
    )
    port = server.sockets[0].getsockname()[1]
    state.url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        server.close()
        await runner.cleanup()
        await server.wait_closed()
