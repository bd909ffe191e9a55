"""Hand-off costs of the bridge, against a thread pool and asgiref, in one run.

    python -m bench.handoff [--requests N]

Measures (CPU on this machine, no network):
- one greenlet round trip (``await_only`` of a ready coroutine);
- one thread-pool round trip (``loop.run_in_executor``);
- one whole Flask request (async view answering JSON) through the
  ``ASGIBridge``, against the same app through asgiref's ``WsgiToAsgi``
  (which runs Flask on one thread and each async view in its own loop);
- the same with a plain ``def`` view (the bridge runs its request's Flask
  work in its thread pool; WsgiToAsgi runs every request in a thread).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.wsgi import WsgiToAsgi
from flask import Flask, jsonify
from flask.typing import ResponseReturnValue

from fanout.bridge import ASGIBridge, BridgeFlask, await_only
from fanout.bridge.greenlets import run_in_greenlet

Message = dict[str, Any]


async def _ready() -> None:
    return None


async def greenlet_round_trip_us(rounds: int) -> float:
    """Microseconds per await_only round trip."""

    def work() -> None:
        for _ in range(rounds):
            await_only(_ready())

    started = time.perf_counter()
    await run_in_greenlet(work)
    return (time.perf_counter() - started) / rounds * 1e6


async def thread_round_trip_us(rounds: int) -> float:
    """Microseconds per run_in_executor round trip."""
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=4) as pool:
        started = time.perf_counter()
        for _ in range(rounds):
            await loop.run_in_executor(pool, int)
        return (time.perf_counter() - started) / rounds * 1e6


def _add_views(app: Flask) -> Flask:
    @app.get("/hello/<name>")
    async def hello(name: str) -> ResponseReturnValue:
        await asyncio.sleep(0)
        return jsonify(hello=name)

    @app.get("/plain/<name>")
    def plain(name: str) -> ResponseReturnValue:
        return jsonify(hello=name)

    return app


async def _drive(
    asgi: Callable[[Message, Any, Any], Awaitable[None]], requests: int, path: str
) -> float:
    scope: Message = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench")],
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
    }
    statuses: list[int] = []
    never = asyncio.Event()

    def make_receive() -> Callable[[], Awaitable[Message]]:
        # As a server does: the (empty) body once, then nothing until disconnect.
        delivered = False

        async def receive() -> Message:
            nonlocal delivered
            if delivered:
                await never.wait()
            delivered = True
            return {"type": "http.request", "body": b"", "more_body": False}

        return receive

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    started = time.perf_counter()
    for _ in range(requests):
        await asgi(scope, make_receive(), send)
    elapsed = time.perf_counter() - started
    assert statuses == [200] * requests, statuses[:3]
    return elapsed / requests * 1e6


async def bridge_request_us(requests: int, path: str = "/hello/world") -> float:
    """Microseconds per request through the greenlet bridge."""
    bridged = ASGIBridge(_add_views(BridgeFlask(__name__)))
    return await _drive(bridged, requests, path)


async def wsgi_to_asgi_request_us(requests: int, path: str = "/hello/world") -> float:
    """Microseconds per request through asgiref's WsgiToAsgi and plain Flask."""
    # asgiref ships WsgiToAsgi without type annotations.
    peer = WsgiToAsgi(_add_views(Flask(__name__)))  # type: ignore[no-untyped-call]
    return await _drive(peer, requests, path)


async def main(requests: int, repeats: int) -> None:
    """Run each measurement ``repeats`` times, interleaved, and report medians."""
    results: dict[str, list[float]] = {}
    for _ in range(repeats):
        for name, measure in (
            ("greenlet round trip", greenlet_round_trip_us(requests * 10)),
            ("thread-pool round trip", thread_round_trip_us(requests)),
            ("request via ASGIBridge", bridge_request_us(requests)),
            ("request via WsgiToAsgi", wsgi_to_asgi_request_us(requests)),
            ("def view via ASGIBridge", bridge_request_us(requests, "/plain/world")),
            ("def view via WsgiToAsgi", wsgi_to_asgi_request_us(requests, "/plain/world")),
        ):
            results.setdefault(name, []).append(await measure)
    medians = {name: statistics.median(values) for name, values in results.items()}
    lines = ["| measurement | µs (median of runs) |", "|---|---|"]
    lines += [f"| {name} | {value:.1f} |" for name, value in medians.items()]
    handoff = medians["thread-pool round trip"] / medians["greenlet round trip"]
    request = medians["request via WsgiToAsgi"] / medians["request via ASGIBridge"]
    lines.append("")
    lines.append(f"thread hand-off / greenlet hand-off: {handoff:.1f}x")
    plain = medians["def view via WsgiToAsgi"] / medians["def view via ASGIBridge"]
    lines.append(f"WsgiToAsgi request / ASGIBridge request: {request:.1f}x")
    lines.append(f"def view, WsgiToAsgi / ASGIBridge: {plain:.2f}x")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.requests, arguments.repeats))
