"""The demo upstream: users, orders, recommendations and weather, with latency."""

from __future__ import annotations

import asyncio

from aiohttp import web

LATENCY_KEY = web.AppKey("latency_seconds", float)

_NAMES = ["Ada Lovelace", "Grace Hopper", "Alan Turing", "Barbara Liskov", "Edsger Dijkstra"]
_PRODUCTS = ["keyboard", "monitor", "desk lamp", "headphones", "notebook", "coffee beans"]


async def _pause(request: web.Request) -> None:
    # ?delay=SECONDS overrides the server's latency, to show slow upstreams.
    delay = float(request.query.get("delay", request.app[LATENCY_KEY]))
    await asyncio.sleep(min(delay, 30.0))


def _user_id(request: web.Request, source: str) -> int:
    try:
        return int(source)
    except ValueError:
        raise web.HTTPBadRequest(text='{"error": "user id must be a number"}') from None


async def user(request: web.Request) -> web.Response:
    """GET /users/{id}: a user profile."""
    user_id = _user_id(request, request.match_info["id"])
    await _pause(request)
    if not 1 <= user_id <= 1000:
        return web.json_response({"error": "no such user"}, status=404)
    name = _NAMES[user_id % len(_NAMES)]
    return web.json_response(
        {
            "id": user_id,
            "name": name,
            "email": f"{name.split()[0].lower()}{user_id}@example.com",
            "plan": "pro" if user_id % 3 == 0 else "free",
        }
    )


async def orders(request: web.Request) -> web.Response:
    """GET /orders?user=ID: a user's recent orders."""
    user_id = _user_id(request, request.query.get("user", ""))
    await _pause(request)
    items = [
        {
            "id": f"o-{user_id}-{n}",
            "product": _PRODUCTS[(user_id + n) % len(_PRODUCTS)],
            "total": round(9.5 + ((user_id * 7 + n * 13) % 90), 2),
            "status": "shipped" if n else "processing",
        }
        for n in range(user_id % 4 + 1)
    ]
    return web.json_response({"user": user_id, "orders": items})


async def recommendations(request: web.Request) -> web.Response:
    """GET /recommendations/{id}: products for a user."""
    user_id = _user_id(request, request.match_info["id"])
    await _pause(request)
    picks = [_PRODUCTS[(user_id * 5 + n) % len(_PRODUCTS)] for n in range(3)]
    return web.json_response({"user": user_id, "products": picks})


async def weather(request: web.Request) -> web.Response:
    """GET /weather/{city}: a made-up forecast."""
    city = request.match_info["city"]
    await _pause(request)
    seed = sum(city.encode())
    return web.json_response(
        {"city": city, "temperature_c": seed % 35 - 5, "sky": ["clear", "cloudy", "rain"][seed % 3]}
    )


def build_demo_app(latency_seconds: float = 0.05) -> web.Application:
    """Build the demo upstream application."""
    app = web.Application()
    app[LATENCY_KEY] = latency_seconds
    app.router.add_get("/users/{id}", user)
    app.router.add_get("/orders", orders)
    app.router.add_get("/recommendations/{id}", recommendations)
    app.router.add_get("/weather/{city}", weather)
    return app
