"""PEER, not Fanout: the "seed approach" the project started from.

A plain Flask app (WSGI) whose ``async def`` view opens an
``aiohttp.ClientSession`` per request and gathers the five calls; Flask runs
each async view in a fresh event loop (asgiref), so no session or connection
can outlive the request. Served by ``hypercorn bench.peers.seed_app:app``
(Hypercorn's WSGI mode: each request on its default thread pool). Same
routes, upstream calls and deadlines as the Quart peer.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp
from flask import Flask

UPSTREAM = os.environ.get("BENCH_UPSTREAM_URL", "http://127.0.0.1:8081")
BACKENDS = 5

app = Flask(__name__)


async def _one(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        response.raise_for_status()
        return await response.json()


async def _fan_out(key: str, query: str, deadline: float) -> tuple[dict[str, Any], int]:
    urls = [f"{UPSTREAM}/item/{key}?b={n}{query}" for n in range(BACKENDS)]
    try:
        async with asyncio.timeout(deadline), aiohttp.ClientSession() as session:
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
