"""A fault-injecting upstream: a real aiohttp server on 127.0.0.1, port 0.

Routes (all GET unless said):
  /json?ms=N&status=S     JSON {"path", "n"} after N ms, with status S (default 200)
  /users/{id}             a user object (for aggregate endpoints); ?ms= delay
  /orders?user=ID         an object with a list of orders; ?ms= delay
  /never                  accepts the request and never answers
  /reset                  sends headers and part of the body, then resets the connection
  /trickle                a JSON body at 1 byte per second
  /invalid-json           Content-Type JSON, body not JSON
  /html-error             500 with an HTML error page
  /html-ok                200 with an HTML page (a login wall, a captive portal)
  /huge?mb=N              N MiB of JSON-ish bytes (default 20)
  /bomb                   a small gzip body that inflates to 200 MiB
  /loop                   302 to itself, forever
  /redirect?to=URL        302 to URL
  /storm                  always 503
  /flaky?key=K&fail=N     503 for the first N requests with key K, then 200
  /cache?max_age=N&cc=V   JSON with Cache-Control (V verbatim, or max-age=N)
  ANY /echo/{tail}        the request as JSON: method, path, query, headers, body length
  PUT/POST /upload        reads the body as it comes; notes when its first bytes arrived
  /stream?chunks=N&ms=M   N chunks, M ms apart
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

BOMB_INFLATED_BYTES = 200 * 1024 * 1024


def make_bomb() -> bytes:
    """A gzip body of about 200 KiB that inflates to 200 MiB (takes about a second)."""
    return gzip.compress(b"0" * BOMB_INFLATED_BYTES, compresslevel=6)


@dataclass
class FaultUpstream:
    """What the fault upstream saw; its base URL once started."""

    url: str = ""
    accepted: int = 0
    hits: Counter[str] = field(default_factory=Counter)
    request_ids: list[str] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0
    bomb: bytes = b""
    cancelled: int = 0
    #: Set when an /upload body's first bytes arrive (time.monotonic() in first_chunk_at).
    upload_started: asyncio.Event = field(default_factory=asyncio.Event)
    first_chunk_at: float | None = None


STATE = web.AppKey("fault_upstream", FaultUpstream)


def _state(request: web.Request) -> FaultUpstream:
    return request.app[STATE]


async def _delay(request: web.Request) -> None:
    milliseconds = int(request.query.get("ms", "0"))
    if milliseconds:
        await asyncio.sleep(milliseconds / 1000)


async def json_route(request: web.Request) -> web.Response:
    """GET /json."""
    await _delay(request)
    status = int(request.query.get("status", "200"))
    return web.json_response(
        {"path": request.path, "n": _state(request).hits["/json"]}, status=status
    )


async def user(request: web.Request) -> web.Response:
    """GET /users/{id}."""
    await _delay(request)
    user_id = request.match_info["id"]
    return web.json_response(
        {
            "id": user_id,
            "name": f"user {user_id}",
            "email": f"u{user_id}@example.com",
            "address": {"city": "Lyon", "street": "1 rue X"},
        }
    )


async def orders(request: web.Request) -> web.Response:
    """GET /orders?user=ID."""
    await _delay(request)
    user_id = request.query.get("user", "")
    return web.json_response(
        {
            "user": user_id,
            "items": [{"id": 1, "total": 10, "secret": "x"}, {"id": 2, "total": 20, "secret": "y"}],
        }
    )


async def never(request: web.Request) -> web.Response:
    """GET /never: hold the request until the client gives up."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        _state(request).cancelled += 1
        raise
    raise AssertionError("unreachable")


async def reset(request: web.Request) -> web.StreamResponse:
    """GET /reset: a partial body, then a reset connection."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = 10_000
    await response.prepare(request)
    await response.write(b'{"partial": "')
    transport = request.transport
    assert transport is not None
    transport.abort()
    return response


async def trickle(request: web.Request) -> web.StreamResponse:
    """GET /trickle: one byte a second."""
    body = b'{"slow": "' + b"x" * 60 + b'"}'
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = len(body)
    await response.prepare(request)
    for byte in body:
        await response.write(bytes([byte]))
        await asyncio.sleep(1)
    return response


async def invalid_json(request: web.Request) -> web.Response:
    """GET /invalid-json."""
    return web.Response(text='{"name": "trunc', content_type="application/json")


async def html_error(request: web.Request) -> web.Response:
    """GET /html-error."""
    return web.Response(
        text="<html><body><h1>500 Internal Server Error</h1>stack trace here</body></html>",
        status=500,
        content_type="text/html",
    )


async def html_ok(request: web.Request) -> web.Response:
    """GET /html-ok."""
    return web.Response(
        text="<html><body><h1>Please sign in</h1></body></html>", content_type="text/html"
    )


async def huge(request: web.Request) -> web.StreamResponse:
    """GET /huge?mb=N."""
    megabytes = int(request.query.get("mb", "20"))
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    chunk = b"[" + b"1," * (512 * 1024 - 1)
    for _ in range(megabytes):
        await response.write(chunk)
    return response


async def bomb(request: web.Request) -> web.Response:
    """GET /bomb: gzip that inflates to 200 MiB."""
    return web.Response(
        body=_state(request).bomb,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )


async def loop(request: web.Request) -> web.Response:
    """GET /loop: redirect to itself."""
    raise web.HTTPFound("/loop")


async def redirect(request: web.Request) -> web.Response:
    """GET /redirect?to=URL."""
    raise web.HTTPFound(request.query["to"])


async def storm(request: web.Request) -> web.Response:
    """GET /storm: always 503."""
    return web.json_response({"error": "overloaded"}, status=503)


async def flaky(request: web.Request) -> web.Response:
    """GET /flaky?key=K&fail=N."""
    key = f"/flaky:{request.query.get('key', '')}"
    if _state(request).hits[key] <= int(request.query.get("fail", "1")):
        return web.json_response({"error": "try again"}, status=503)
    return web.json_response({"ok": True, "attempt": _state(request).hits[key]})


async def cache(request: web.Request) -> web.Response:
    """GET /cache: JSON with a Cache-Control header."""
    cache_control = request.query.get("cc") or f"max-age={request.query.get('max_age', '60')}"
    return web.json_response(
        {"n": _state(request).hits["/cache"]}, headers={"Cache-Control": cache_control}
    )


async def echo(request: web.Request) -> web.Response:
    """ANY /echo/{tail}: describe the request."""
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "path": request.path,
            "raw_path": request.raw_path,
            "headers": {k: v for k, v in request.headers.items()},
            "body_length": len(body),
            "body_head": body[:64].decode("latin-1"),
        },
        headers={
            "Connection": "X-Hop",
            "X-Hop": "secret",
            "Keep-Alive": "timeout=5",
            "Set-Cookie": "upstream=1",
        },
    )


async def upload(request: web.Request) -> web.Response:
    """PUT/POST /upload: read the body as it arrives."""
    state = _state(request)
    size = 0
    async for chunk in request.content.iter_any():
        if not size and chunk:
            state.first_chunk_at = time.monotonic()
            state.upload_started.set()
        size += len(chunk)
    return web.json_response({"body_length": size})


async def stream(request: web.Request) -> web.StreamResponse:
    """GET /stream?chunks=N&ms=M."""
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await response.prepare(request)
    for n in range(int(request.query.get("chunks", "3"))):
        if n:
            await asyncio.sleep(int(request.query.get("ms", "100")) / 1000)
        await response.write(f"chunk {n}\n".encode())
    return response


@web.middleware
async def _count(request: web.Request, handler: Any) -> web.StreamResponse:
    state = _state(request)
    key = request.path
    if request.path == "/flaky":
        key = f"/flaky:{request.query.get('key', '')}"
    state.hits[key] += 1
    state.request_ids.append(request.headers.get("X-Request-ID", ""))
    state.in_flight += 1
    state.peak_in_flight = max(state.peak_in_flight, state.in_flight)
    try:
        response: web.StreamResponse = await handler(request)
        return response
    finally:
        state.in_flight -= 1


def _build(state: FaultUpstream) -> web.Application:
    app = web.Application(middlewares=[_count])
    app[STATE] = state
    routes = [
        ("/json", json_route),
        ("/users/{id}", user),
        ("/orders", orders),
        ("/never", never),
        ("/reset", reset),
        ("/trickle", trickle),
        ("/invalid-json", invalid_json),
        ("/html-error", html_error),
        ("/html-ok", html_ok),
        ("/huge", huge),
        ("/bomb", bomb),
        ("/loop", loop),
        ("/redirect", redirect),
        ("/storm", storm),
        ("/flaky", flaky),
        ("/cache", cache),
        ("/stream", stream),
    ]
    for path, handler in routes:
        app.router.add_get(path, handler)
    app.router.add_route("*", "/echo/{tail:.*}", echo)
    app.router.add_put("/upload", upload)
    app.router.add_post("/upload", upload)
    return app


@asynccontextmanager
async def fault_upstream(bomb: bytes = b"") -> AsyncIterator[FaultUpstream]:
    """Run the fault upstream for the duration of the block (``bomb``: see make_bomb)."""
    state = FaultUpstream(bomb=bomb)
    runner = web.AppRunner(_build(state), access_log=None, handler_cancellation=True)
    await runner.setup()
    factory = runner.server
    assert factory is not None

    def counting_factory() -> web.RequestHandler:
        state.accepted += 1
        return factory()

    server = await asyncio.get_running_loop().create_server(
        counting_factory, "127.0.0.1", 0, backlog=4096
    )
    state.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield state
    finally:
        server.close()
        await runner.cleanup()
        await server.wait_closed()
