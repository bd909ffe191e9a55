"""A real aiohttp upstream on 127.0.0.1, port 0, that counts accepted TCP connections.

Also a listener whose backlog is full, so that a connection to it never completes.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
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


@contextmanager
def full_backlog_listener() -> Iterator[int]:
    """A port on 127.0.0.1 whose connects hang: it listens, never accepts, its queue is full.

    Linux drops a SYN while the accept queue is full (it does not refuse it), so
    the client's connect waits for its own timeout, as for a host that has gone dark.
    """
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port: int = server.getsockname()[1]
        for _ in range(16):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.settimeout(0.2)
            try:
                filler.connect(("127.0.0.1", port))
            except TimeoutError:
                filler.close()
                break  # this one hung: the queue is full
            fillers.append(filler)
        else:
            raise RuntimeError("the listen queue never filled: connects would not hang here")
        yield port
    finally:
        for filler in fillers:
            filler.close()
        server.close()
