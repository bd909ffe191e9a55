"""The simulated upstream: a JSON API whose answers take a set time.

    python -m bench.upstream --port P --control-port Q [--latency-ms 50] [--body-bytes 256]

- ``GET /item/<key>?b=N[&delay=MS]`` answers a JSON object of about
  ``--body-bytes`` after ``delay`` (default ``--latency-ms``) milliseconds,
  with ``Cache-Control: max-age=60`` (so a gateway may cache it).
- Accepted TCP connections and answered requests are counted; the counts
  are read on a separate control port (``GET /stats``), so reading them
  neither opens a counted connection nor counts as a request.

aiohttp.web on uvloop when it is installed, one process, 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

HOST = "127.0.0.1"
# Longest delay a request may ask for: keeps a stray query from parking a handler.
MAX_DELAY_MS = 30_000


@dataclass
class Counters:
    """What the harness reads to compute connections per upstream request."""

    connections: int = 0
    requests: int = 0


def build_app(counters: Counters, latency_ms: float, body_bytes: int) -> web.Application:
    """The upstream's data app: ``/item/<key>``."""
    padding = "x" * max(0, body_bytes - 48)

    async def item(request: web.Request) -> web.Response:
        try:
            delay_ms = min(float(request.query.get("delay", latency_ms)), MAX_DELAY_MS)
        except ValueError:
            raise web.HTTPBadRequest(text="delay must be a number of milliseconds") from None
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)
        counters.requests += 1
        body = {"key": request.match_info["key"], "b": request.query.get("b"), "pad": padding}
        return web.Response(
            text=json.dumps(body),
            content_type="application/json",
            headers={"Cache-Control": "max-age=60"},
        )

    app = web.Application()
    app.router.add_get("/item/{key}", item)
    return app


def build_control_app(counters: Counters) -> web.Application:
    """The control app: ``/stats`` (the counters as JSON)."""

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response(
            {"connections": counters.connections, "requests": counters.requests}
        )

    app = web.Application()
    app.router.add_get("/stats", stats)
    return app


def _counting(
    counters: Counters, factory: Callable[[], asyncio.BaseProtocol]
) -> Callable[[], asyncio.BaseProtocol]:
    # The server calls the protocol factory once per accepted TCP connection.
    def make() -> asyncio.BaseProtocol:
        counters.connections += 1
        return factory()

    return make


async def serve(port: int, control_port: int, latency_ms: float, body_bytes: int) -> None:
    """Serve both apps on 127.0.0.1 until SIGTERM or SIGINT."""
    counters = Counters()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    data = web.AppRunner(build_app(counters, latency_ms, body_bytes), access_log=None)
    control = web.AppRunner(build_control_app(counters), access_log=None)
    await data.setup()
    await control.setup()
    servers: list[asyncio.Server] = []
    try:
        assert data.server is not None
        # Not a web.TCPSite: its protocol factory is wrapped to count connections.
        servers.append(
            await loop.create_server(
                _counting(counters, data.server), HOST, port, backlog=4096, reuse_address=True
            )
        )
        await web.TCPSite(control, HOST, control_port).start()
        await stop.wait()
    finally:
        for server in servers:
            server.close()
        await data.cleanup()
        await control.cleanup()


def main() -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control-port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--body-bytes", type=int, default=256)
    args = parser.parse_args()
    coroutine = serve(args.port, args.control_port, args.latency_ms, args.body_bytes)
    try:
        import uvloop
    except ImportError:
        asyncio.run(coroutine)
        return
    uvloop.run(coroutine)


if __name__ == "__main__":
    main()
