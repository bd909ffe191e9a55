"""An upstream for composed endpoints: a real aiohttp server on 127.0.0.1, port 0.

Routes (GET unless said; ``ms`` delays the answer everywhere):
  /users/{id}                 a user with company_id = 100 + id, and data.user nested
  /companies/{id}             a company
  /orders?user=ID             {"orders": [...], "total": 30}
  /order/{id}?n=N             an order with N items {"sku": "sku-<i>"}
  /products/{sku}?fail=SKU    a product; 500 for the sku named by fail
  /list                       a JSON array of objects
  /slow                       waits ``ms``; notes when its client went away first
  /fail                       500 after ``ms``
  /after?key=K&status=S&seconds=N   S with Retry-After: N the first time for K, then 200
  /down                       503 (a host that is down for every call)
  ANY /echo                   the method, the body's length, the query and X-Tenant
Every request is noted with its start and end times (time.monotonic()); with
``down`` set, every request is answered 503.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Call:
    """One request the upstream served: its route, query and when it ran."""

    route: str
    path: str
    started: float
    ended: float = 0.0


@dataclass
class CompositionUpstream:
    """What the upstream saw; its base URL once started."""

    url: str = ""
    calls: list[Call] = field(default_factory=list)
    in_flight: Counter[str] = field(default_factory=Counter)
    peak: Counter[str] = field(default_factory=Counter)
    hits: Counter[str] = field(default_factory=Counter)
    #: Set when a /slow client went away before its answer.
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    methods: list[tuple[str, int]] = field(default_factory=list)
    #: Every request is answered 503 (a host that is down) while set.
    down: bool = False

    def first(self, route: str) -> Call:
        """The first finished call of a route."""
        return next(call for call in self.calls if call.route == route)


STATE = web.AppKey("composition_upstream", CompositionUpstream)


async def _delay(request: web.Request) -> None:
    milliseconds = int(request.query.get("ms", "0"))
    if milliseconds:
        await asyncio.sleep(milliseconds / 1000)


async def _user(request: web.Request) -> web.Response:
    number = int(request.match_info["id"])
    user = {"id": number, "name": f"user {number}"}
    return web.json_response(
        {**user, "company_id": 100 + number, "address": {"city": "Lyon"}, "data": {"user": user}}
    )


async def _company(request: web.Request) -> web.Response:
    number = request.match_info["id"]
    return web.json_response({"id": int(number), "name": f"company {number}"})


async def _orders(request: web.Request) -> web.Response:
    orders = [{"id": 1, "total": 10}, {"id": 2, "total": 20}]
    return web.json_response({"user": request.query.get("user"), "orders": orders, "total": 30})


async def _order(request: web.Request) -> web.Response:
    count = int(request.query.get("n", "3"))
    items = [{"sku": f"sku-{n}", "quantity": n} for n in range(count)]
    return web.json_response({"id": request.match_info["id"], "items": items})


async def _product(request: web.Request) -> web.Response:
    sku = request.match_info["sku"]
    if sku == request.query.get("fail"):
        return web.json_response({"error": "broken"}, status=500)
    return web.json_response({"sku": sku, "price": int(sku.rpartition("-")[2]) * 10})


async def _list(request: web.Request) -> web.Response:
    items = [{"id": n, "name": f"item {n}", "secret": "s3cr3t"} for n in range(3)]
    return web.json_response(items)


async def _slow(request: web.Request) -> web.Response:
    try:
        await asyncio.sleep(int(request.query.get("ms", "5000")) / 1000)
    except asyncio.CancelledError:
        # aiohttp cancels the handler (handler_cancellation) when the client goes away.
        request.app[STATE].disconnected.set()
        raise
    return web.json_response({"slow": True})


async def _fail(request: web.Request) -> web.Response:
    return web.json_response({"error": "failed"}, status=500)


async def _after(request: web.Request) -> web.Response:
    state = request.app[STATE]
    key = f"after:{request.query.get('key', '')}"
    if state.hits[key] == 1:
        status = int(request.query.get("status", "429"))
        return web.json_response(
            {"error": "later"}, status=status, headers={"Retry-After": request.query["seconds"]}
        )
    return web.json_response({"after": True})


async def _down(request: web.Request) -> web.Response:
    return web.json_response({"error": "down"}, status=503)


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    request.app[STATE].methods.append((request.method, len(body)))
    return web.json_response(
        {
            "method": request.method,
            "body_length": len(body),
            "query": dict(request.query),
            "tenant": request.headers.get("X-Tenant"),
        }
    )


@web.middleware
async def _note(request: web.Request, handler: Any) -> web.StreamResponse:
    state = request.app[STATE]
    route = request.path.split("/")[1]
    call = Call(route, request.path_qs, time.monotonic())
    if route == "after":
        state.hits[f"after:{request.query.get('key', '')}"] += 1
    state.hits[route] += 1
    state.in_flight[route] += 1
    state.peak[route] = max(state.peak[route], state.in_flight[route])
    try:
        if state.down:
            return web.json_response({"error": "down"}, status=503)
        if route != "slow":
            await _delay(request)
        response: web.StreamResponse = await handler(request)
        return response
    finally:
        state.in_flight[route] -= 1
        call.ended = time.monotonic()
        state.calls.append(call)


@asynccontextmanager
async def composition_upstream() -> AsyncIterator[CompositionUpstream]:
    """Run the upstream for the duration of the block."""
    state = CompositionUpstream()
    app = web.Application(middlewares=[_note])
    app[STATE] = state
    for path, handler in (
        ("/users/{id}", _user),
        ("/companies/{id}", _company),
        ("/orders", _orders),
        ("/order/{id}", _order),
        ("/products/{sku}", _product),
        ("/list", _list),
        ("/slow", _slow),
        ("/fail", _fail),
        ("/after", _after),
        ("/down", _down),
    ):
        app.router.add_get(path, handler)
    app.router.add_route("*", "/echo", _echo)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    state.url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    await web.SockSite(runner, listener).start()
    try:
        yield state
    finally:
        await runner.cleanup()
