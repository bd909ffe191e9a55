"""The README's demo: an async view fanning out to the bundled demo upstream."""

from __future__ import annotations

import asyncio
import asyncio.base_events
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler

from app import create_app
from fanout.bridge import ASGIBridge
from fanout.demo.upstream import build_demo_app
from tests.gateway_serving import gateway_serving
from tests.serving import hypercorn_serving

ROOT = Path(__file__).resolve().parent.parent


class InFlight:
    """How many requests the demo upstream holds at once, and the most it held."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count the request while the handler runs."""
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            return await handler(request)
        finally:
            self.now -= 1


async def _start_demo(
    latency_seconds: float, in_flight: InFlight | None = None
) -> tuple[web.AppRunner, int]:
    demo = build_demo_app(latency_seconds)
    if in_flight is not None:
        demo.middlewares.append(in_flight.middleware)
    runner = web.AppRunner(demo, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server  # aiohttp has no public accessor for the bound port
    assert isinstance(server, asyncio.base_events.Server)
    port: int = server.sockets[0].getsockname()[1]
    return runner, port


def _shipped_gateway_file(directory: Path, port: int) -> str:
    """The shipped gateway.toml, its demo upstream pointed at ``port``; return its path."""
    example = (ROOT / "gateway.toml").read_text()
    assert "http://127.0.0.1:8081" in example
    path = directory / "gateway.toml"
    path.write_text(example.replace("http://127.0.0.1:8081", f"http://127.0.0.1:{port}"))
    return str(path)


async def test_dashboard_fans_out_concurrently_and_merges(tmp_path: Path) -> None:
    in_flight = InFlight()
    runner, port = await _start_demo(latency_seconds=0.3, in_flight=in_flight)
    try:
        # The view calls the configured "demo" upstream (clients.upstream).
        app = create_app({"CONFIG": _shipped_gateway_file(tmp_path, port)})
        async with hypercorn_serving(ASGIBridge(app)) as url, aiohttp.ClientSession() as client:
            async with client.get(f"{url}/demo/dashboard/7") as response:
                assert response.status == 200
                body = await response.json()
            dashboard_peak = in_flight.peak
            async with client.get(f"{url}/demo/dashboard/5000") as response:
                # The demo upstream has no user 5000.
                assert response.status == 404
                assert response.content_type == "application/problem+json"
                assert (await response.json())["detail"] == "There is no user 5000."
        # The upstream gone: 502 problem details naming it.
        await runner.cleanup()
        async with (
            hypercorn_serving(ASGIBridge(app)) as url,
            aiohttp.ClientSession() as client,
            client.get(f"{url}/demo/dashboard/7") as response,
        ):
            problem = await response.json()
            # Refused connections, retried: three calls' failures may open the
            # demo's circuit (5 failures) before the user call's retry (503).
            assert (response.status, problem["title"]) in {
                (502, "Bad Gateway"),
                (503, "Upstream Circuit Open"),
            }, problem
            assert problem["upstream"] == "demo"
    finally:
        await runner.cleanup()
    assert body["user"]["id"] == 7 and body["user"]["name"] == "Alan Turing"
    assert body["orders"]["user"] == 7 and len(body["orders"]["orders"]) == 4
    assert len(body["recommendations"]["products"]) == 3
    # The three 300 ms calls were held by the upstream at once, not one after another.
    assert dashboard_peak == 3


async def test_the_example_gateway_toml_works_against_the_demo_upstream(tmp_path: Path) -> None:
    runner, port = await _start_demo(latency_seconds=0.05)
    # The shipped file, pointed at this test's demo upstream instead of :8081.
    example = (ROOT / "gateway.toml").read_text()
    assert "http://127.0.0.1:8081" in example
    text = example.replace("http://127.0.0.1:8081", f"http://127.0.0.1:{port}")
    try:
        async with gateway_serving(text, tmp_path) as gateway:
            async with gateway.client.get("/profiles/7") as response:
                assert response.status == 200
                assert response.headers["X-Fanout-Completed"] == "true"
                profile = await response.json()
            async with gateway.client.get("/profiles/7?delay=5") as response:
                assert response.status == 200
                assert response.headers["X-Fanout-Completed"] == "false"
                partial = await response.json()
            async with gateway.client.get("/weather/lyon") as response:
                weather = await response.json()
            async with gateway.client.get("/proxy/demo/users/3") as response:
                proxied = await response.json()
    finally:
        await runner.cleanup()
    assert profile["user"] == {"id": 7, "name": "Alan Turing", "plan": "free"}  # allow-listed
    assert "user" not in profile["recommendations"]  # denied
    assert len(profile["orders"]["orders"]) == 4
    assert "recommendations" not in partial
    assert partial["_errors"]["recommendations"]["status"] == 504
    assert partial["user"] == profile["user"] and partial["orders"] == profile["orders"]
    assert weather["city"] == "lyon"
    assert proxied["email"] == "barbara3@example.com"
