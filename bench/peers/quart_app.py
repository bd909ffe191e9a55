"""PEER, not Fanout: the benchmark's fan-out written with Quart (the async Flask).

Served by Hypercorn as an ASGI app (``bench.peers.quart_app:app``). One
``aiohttp.ClientSession`` per process, opened in ``before_serving``, as a
Quart user would write it. Same routes, upstream calls, connection cap and
deadlines as the Fanout endpoints the harness generates, so the two answer
the same work:

- ``GET /fan/<key>``: five concurrent GETs ``/item/<key>?b=N``, merged under
  ``b0``..``b4``; 10 s deadline.
- ``GET /slow/<key>``: the same with ``&delay=1000`` (1 s answers); 3 s
  deadline, then 504 (as Fanout's default endpoint timeout sheds).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp
from quart import Quart

UPSTREAM = os.environ.get("BENCH_UPSTREAM_URL", "http://127.0.0.1:8081")
# The same cap as Fanout's upstream max_connections in the generated config.
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "256"))
BACKENDS = 5

app = Quart(__name__)
SESSION_KEY = "bench.session"


@app.before_serving
async def open_session() -> None:
    """Open the one shared session of this worker."""
    connector = aiohttp.TCPConnector(limit=CONNECTIONS, limit_per_host=CONNECTIONS)
    app.config[SESSION_KEY] = aiohttp.ClientSession(connector=connector)


@app.after_serving
async def close_session() -> None:
    """Close the shared session."""
    await app.config[SESSION_KEY].close()


async def _one(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        response.raise_for_status()
        return await response.json()


async def _fan_out(key: str, query: str, deadline: float) -> tuple[dict[str, Any], int]:
    session: aiohttp.ClientSession = app.config[SESSION_KEY]
    urls = [f"{UPSTREAM}/item/{key}?b={n}{query}" for n in range(BACKENDS)]
    try:
        async with asyncio.timeout(deadline):
            parts = await asyncio.gather(*(_one(session, url) for url in urls))
    except TimeoutError:
        return {"error": "deadline"}, 504
    except aiohttp.ClientError as exc:
        return {"error": type(exc).__name__}, 502
    return {f"b{n}": part for n, part in enumerate(parts)}, 200


@app.get("/fan/<key>")
async def fan(key: str) -> tuple[dict[str, Any], int]:
    """Five 50 ms upstream calls at once, merged."""
    return await _fan_out(key, "", 10.0)


@app.get("/slow/<key>")
async def slow(key: str) -> tuple[dict[str, Any], int]:
    """Five 1 s upstream calls at once, merged, within 3 s."""
    return await _fan_out(key, "&delay=1000", 3.0)
