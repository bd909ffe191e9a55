"""Lifespan: resources opened at startup on the server loop, closed at shutdown."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from flask import Flask

from app import create_app
from fanout.bridge import ASGIBridge, serving_state
from handlers.resources import SESSION_KEY, http_session
from tests.asgi_driver import LifespanDriver, lifespan
from tests.processes import run_failing_gateway
from tests.serving import hypercorn_serving

ROOT = Path(__file__).resolve().parent.parent


async def test_startup_opens_the_session_on_the_running_loop_and_shutdown_closes_it() -> None:
    app = create_app()
    async with lifespan(ASGIBridge(app)):
        session = http_session(app)
        assert not session.closed
        assert session._loop is asyncio.get_running_loop()
        state = serving_state(app)
        assert state is not None and state.ready
    assert session.closed
    assert SESSION_KEY not in app.extensions
    assert serving_state(app) is None


async def test_the_shared_session_is_built_from_the_settings() -> None:
    app = create_app(
        {
            "CONNECTOR_LIMIT": 77,
            "CONNECTOR_LIMIT_PER_HOST": 11,
            "DNS_CACHE_SECONDS": 7,
            "KEEPALIVE_SECONDS": 3.5,
        }
    )
    async with lifespan(ASGIBridge(app)):
        session = http_session(app)
        # No proxy or netrc from the environment; no cookies kept between calls.
        assert session.trust_env is False
        assert isinstance(session.cookie_jar, aiohttp.DummyCookieJar)
        connector = session.connector
        assert isinstance(connector, aiohttp.TCPConnector)
        assert (connector.limit, connector.limit_per_host) == (77, 11)
        assert connector.use_dns_cache
        assert connector._cached_hosts._ttl == 7
        assert connector._keepalive_timeout == 3.5
        # Deadlines are per call, not the session's.
        assert session.timeout.total is None


async def test_hooks_start_in_order_and_stop_in_reverse() -> None:
    app = create_app()
    events: list[str] = []

    def hook(name: str) -> object:
        async def run(app: Flask) -> AsyncIterator[None]:
            events.append(f"start {name}")
            yield
            events.append(f"stop {name}")

        return run

    app.while_serving(hook("a"))  # type: ignore[arg-type]
    app.while_serving(hook("b"))  # type: ignore[arg-type]
    async with lifespan(ASGIBridge(app)):
        assert events == ["start a", "start b"]
    assert events == ["start a", "start b", "stop b", "stop a"]


async def test_failed_startup_is_reported_with_its_reason_and_undoes_what_opened() -> None:
    app = create_app()
    events: list[str] = []

    async def store(app: Flask) -> AsyncIterator[None]:
        raise ConnectionRefusedError("job store at 127.0.0.1:1 refused the connection")
        yield  # pragma: no cover - makes this an async generator

    app.while_serving(store)
    driver = LifespanDriver(ASGIBridge(app))
    driver.start()
    answer = await driver.ask("lifespan.startup")
    assert answer["type"] == "lifespan.startup.failed"
    assert "ConnectionRefusedError" in answer["message"]
    assert "127.0.0.1:1 refused" in answer["message"]
    assert driver.task is not None
    await driver.task
    # The session opened before the failing hook was closed again.
    assert SESSION_KEY not in app.extensions and serving_state(app) is None
    assert events == []


class _Abort(BaseException):
    """Not an Exception: what a hook's KeyboardInterrupt or SystemExit looks like."""


async def test_a_base_exception_in_startup_is_reported_then_re_raised() -> None:
    app = create_app()

    async def exits(app: Flask) -> AsyncIterator[None]:
        raise _Abort("store setup aborted")
        yield  # pragma: no cover - makes this an async generator

    app.while_serving(exits)
    driver = LifespanDriver(ASGIBridge(app))
    driver.start()
    answer = await driver.ask("lifespan.startup")
    assert answer == {"type": "lifespan.startup.failed", "message": "_Abort: store setup aborted"}
    assert driver.task is not None
    with pytest.raises(_Abort):
        await driver.task
    assert serving_state(app) is None


async def test_cancelling_startup_is_not_reported_as_a_failure() -> None:
    app = create_app()
    entered = asyncio.Event()

    async def slow(app: Flask) -> AsyncIterator[None]:
        entered.set()
        await asyncio.sleep(30)
        yield  # pragma: no cover

    app.while_serving(slow)
    driver = LifespanDriver(ASGIBridge(app))
    driver.start()
    asking = asyncio.create_task(driver.ask("lifespan.startup"))
    await entered.wait()
    assert driver.task is not None
    driver.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await driver.task
    asking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asking
    assert serving_state(app) is None


async def test_a_factory_error_fails_startup_with_the_reason() -> None:
    def broken_factory() -> Flask:
        return create_app({"SYNC_THREADS": "many"})

    driver = LifespanDriver(ASGIBridge(broken_factory))
    driver.start()
    answer = await driver.ask("lifespan.startup")
    assert answer["type"] == "lifespan.startup.failed"
    assert "SYNC_THREADS" in answer["message"]
    assert driver.task is not None
    await driver.task


async def test_hypercorn_exits_non_zero_and_says_why_when_startup_fails() -> None:
    env = {**os.environ, "FANOUT_NO_SUCH_SETTING": "1"}
    returncode, stderr = await run_failing_gateway(env)
    assert returncode != 0
    assert "FANOUT_NO_SUCH_SETTING" in stderr
    assert "unknown setting" in stderr


async def test_hypercorn_exits_non_zero_naming_the_key_of_a_broken_gateway_file(
    tmp_path: Path,
) -> None:
    broken = tmp_path / "gateway.toml"
    broken.write_text('[upstreams.users]\nbase_url = "https://users.example"\ntimeout = "fast"\n')
    env = {**os.environ, "FANOUT_CONFIG": str(broken)}
    returncode, stderr = await run_failing_gateway(env)
    assert returncode != 0
    assert f"{broken}: upstreams.users.timeout: expected a number" in stderr


async def test_served_shutdown_closes_the_session_after_requests() -> None:
    app = create_app()
    async with hypercorn_serving(ASGIBridge(app)) as url:
        session = http_session(app)
        async with aiohttp.ClientSession() as client, client.get(f"{url}/readyz") as response:
            assert response.status == 200
    assert session.closed
    assert serving_state(app) is None


def test_readyz_is_not_ready_before_startup() -> None:
    # A server that never ran the lifespan: the app serves, but is not ready.
    app = create_app()
    client = app.test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["checks"] == {
        "lifespan": False,
        "http_session": False,
        "job_store": False,
    }


async def test_a_request_after_shutdown_gets_503_and_makes_no_new_pool() -> None:
    app = create_app()
    bridge = ASGIBridge(app)
    async with lifespan(bridge):
        pass
    sent: list[dict[str, Any]] = []
    requests = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if requests:
            return requests.pop()
        await asyncio.sleep(30)  # the client stays until the answer is out
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/healthz",
        "raw_path": b"/healthz",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"t")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    await asyncio.wait_for(bridge(scope, receive, send), timeout=10)
    assert sent[0]["status"] == 503
    assert (b"content-type", b"application/problem+json") in sent[0]["headers"]
    assert (b"retry-after", b"1") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["status"] == 503
    # No serving state, so no thread pool, was made for the late request.
    assert serving_state(app) is None
