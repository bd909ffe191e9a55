"""What a Flask app sees is the same under Fanout as under a threaded WSGI server.

Each test serves tests/fidelity_views.py twice over real HTTP: plain Flask
under Werkzeug's threaded server, and BridgeFlask under Hypercorn through
the ASGI bridge; the answers must agree.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import aiohttp
import pytest
from flask import Flask
from werkzeug.serving import make_server

from fanout.bridge import ASGIBridge, BridgeFlask
from tests.fidelity_views import build
from tests.serving import hypercorn_serving

SERVERS = ("plain-flask", "fanout")


@contextmanager
def _werkzeug_serving(app: Flask) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


@asynccontextmanager
async def _serving(kind: str, records: dict[str, Any]) -> AsyncIterator[str]:
    if kind == "plain-flask":
        with _werkzeug_serving(build(Flask, records)) as url:
            yield url
    else:
        async with hypercorn_serving(ASGIBridge(build(BridgeFlask, records))) as url:
            yield url


@pytest.fixture(params=SERVERS)
async def served(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    records: dict[str, Any] = {}
    async with _serving(request.param, records) as url:
        yield url, records


async def test_a_contextvar_set_in_a_def_view_is_seen_by_after_request_and_teardown(
    served: tuple[str, dict[str, Any]],
) -> None:
    url, records = served
    async with aiohttp.ClientSession() as client:
        # Several at once: each request keeps its own value.
        async def one(key: str) -> tuple[str, str]:
            async with client.get(f"{url}/tag", params={"key": key}) as response:
                assert response.status == 200
                return (await response.json())["tag"], response.headers["X-Tag-After"]

        answers = await asyncio.gather(*(one(f"k{n}") for n in range(8)))
    assert answers == [(f"view:k{n}", f"view:k{n}") for n in range(8)]
    assert {key: seen["tag"] for key, seen in records.items()} == {
        f"k{n}": f"view:k{n}" for n in range(8)
    }


async def test_a_def_views_streamed_body_sees_what_the_view_bound(
    served: tuple[str, dict[str, Any]],
) -> None:
    url, _ = served
    async with aiohttp.ClientSession() as client, client.get(f"{url}/tag/stream") as response:
        assert response.status == 200
        assert await response.text() == "view:stream|/tag/stream"


async def test_a_def_view_runs_on_the_thread_of_its_hooks(
    served: tuple[str, dict[str, Any]],
) -> None:
    url, records = served
    async with aiohttp.ClientSession() as client:

        async def one(n: int) -> dict[str, Any]:
            params = {"key": f"local{n}"}
            async with client.get(f"{url}/local", params=params) as response:
                assert response.status == 200
                assert response.headers["X-Local-After"] == "/local"
                answer: dict[str, Any] = await response.json()
                return answer

        answers = await asyncio.gather(*(one(n) for n in range(8)))
    assert answers == [{"local": "/local", "same_thread": True}] * 8
    assert all(
        records[f"local{n}"] == {"tag": "unset", "local": "/local", "same_thread": True}
        for n in range(8)
    )


async def _trickled(body: bytes, pieces: int) -> AsyncIterator[bytes]:
    # Sent in pieces, so the body is still arriving while it is read.
    size = len(body) // pieces + 1
    for start in range(0, len(body), size):
        yield body[start : start + size]
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("route", ["/body/thread", "/body/to-thread"])
async def test_the_body_can_be_read_from_another_thread_holding_the_request(
    served: tuple[str, dict[str, Any]], route: str
) -> None:
    url, _ = served
    body = bytes(range(256)) * 400  # 100 KiB
    async with aiohttp.ClientSession() as client:
        async with client.post(f"{url}{route}", data=body) as response:
            assert response.status == 200
            assert await response.read() == body
        chunked = _trickled(body, pieces=8)  # no Content-Length: chunked
        async with client.post(f"{url}{route}", data=chunked) as response:
            assert response.status == 200
            assert await response.read() == body
