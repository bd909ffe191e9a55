"""Rate limits through the real stack: per caller, before any upstream call, shared on Redis."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from limits import parse
from limits.aio.strategies import MovingWindowRateLimiter
from openapi_spec_validator import OpenAPIV31SpecValidator

from handlers.rate_limits import SweepingMemoryStorage
from tests.gateway_serving import gateway_serving
from tests.identity_upstream import EchoUpstream, echo_upstream
from tests.processes import start_gateway

ALICE_KEY = "alice-key-0123456789abcdef"
BOB_KEY = "bob-key-0123456789abcdef00"


@pytest.fixture
async def echo() -> AsyncIterator[EchoUpstream]:
    """The echo upstream, counting its calls."""
    async with echo_upstream() as state:
        yield state


def _config(url: str, *, storage: str = "memory://", rate: str = "5/second") -> str:
    return f"""
[auth]
api_keys = {{ alice = "{ALICE_KEY}", bob = "{BOB_KEY}" }}

[rate_limits]
storage = "{storage}"

[upstreams.echo]
base_url = "{url}"
internal = true

[[endpoints]]
path = "/limited"
rate_limit = "{rate}"
  [[endpoints.backends]]
  upstream = "echo"
  path = "/echo"
  # Each request its own upstream call: none is coalesced with another.
  pass_query = true

[[endpoints]]
path = "/unlimited"
  [[endpoints.backends]]
  upstream = "echo"
  path = "/echo"
"""


def _each(url: str, count: int) -> list[str]:
    return [f"{url}?i={n}" for n in range(count)]


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _statuses(
    client: aiohttp.ClientSession, urls: list[str], key: str = ALICE_KEY
) -> list[int]:
    async def one(url: str) -> int:
        async with client.get(url, headers=_as(key)) as response:
            await response.read()
            return response.status

    return list(await asyncio.gather(*(one(url) for url in urls)))


async def test_the_sixth_request_in_a_second_gets_429_without_an_upstream_call(
    echo: EchoUpstream, tmp_path: Path
) -> None:
    async with gateway_serving(_config(echo.url), tmp_path) as gateway:
        statuses = await _statuses(gateway.client, _each("/limited", 5))
        assert statuses == [200] * 5
        async with gateway.client.get("/limited", headers=_as(ALICE_KEY)) as refused:
            assert refused.status == 429
            assert refused.content_type == "application/problem+json"
            assert (await refused.json())["status"] == 429
            assert refused.headers["Retry-After"] == "1"
            assert refused.headers["RateLimit-Policy"] == '"limit";q=5;w=1'
            assert refused.headers["RateLimit"] == '"limit";r=0;t=1'
        # Decided before the view: the refused request never reached the upstream.
        assert echo.calls == 5
        # Per caller and per route: another key, and another route, still pass.
        assert await _statuses(gateway.client, ["/limited"], BOB_KEY) == [200]
        assert await _statuses(gateway.client, ["/unlimited"]) == [200]
        async with gateway.client.get("/metrics") as scraped:
            text = await scraped.text()
        assert 'fanout_rate_limited_total{route="GET /limited"} 1.0' in text
        async with gateway.client.get("/openapi.json") as described:
            document = await described.json()
        OpenAPIV31SpecValidator(document).validate()
        assert "429" in document["paths"]["/limited"]["get"]["responses"]
        assert "429" not in document["paths"]["/unlimited"]["get"]["responses"]


async def test_two_gateway_processes_on_one_redis_share_one_budget(
    echo: EchoUpstream, own_redis: tuple[int, asyncio.subprocess.Process], tmp_path: Path
) -> None:
    port, _ = own_redis
    config = tmp_path / "gateway.toml"
    # Per minute: the two processes' requests fall in one window however slow the machine.
    config.write_text(_config(echo.url, storage=f"redis://127.0.0.1:{port}/0", rate="5/minute"))
    env = {**os.environ, "FANOUT_CONFIG": str(config), "FANOUT_JOB_STORE": "memory://"}
    (a, url_a), (b, url_b) = await asyncio.gather(start_gateway(env), start_gateway(env))
    try:
        async with aiohttp.ClientSession() as client:
            first = await _statuses(client, _each(f"{url_a}/limited", 3))
            second = await _statuses(client, _each(f"{url_b}/limited", 3))
    finally:
        for process in (a, b):
            process.send_signal(signal.SIGTERM)
        await asyncio.gather(a.wait(), b.wait())
    assert sorted(first + second) == [200] * 5 + [429]
    assert echo.calls == 5


async def test_a_stopped_redis_lets_requests_through_and_is_counted(
    echo: EchoUpstream, own_redis: tuple[int, asyncio.subprocess.Process], tmp_path: Path
) -> None:
    port, server = own_redis
    config = _config(echo.url, storage=f"redis://127.0.0.1:{port}/0", rate="2/minute")
    async with gateway_serving(config, tmp_path) as gateway:
        assert sorted(await _statuses(gateway.client, _each("/limited", 3))) == [200, 200, 429]
        server.kill()
        await server.wait()
        # Fail open: answered, unchecked, and each one counted.
        assert await _statuses(gateway.client, _each("/limited", 4)) == [200] * 4
        async with gateway.client.get("/metrics") as scraped:
            text = await scraped.text()
    assert "fanout_rate_limit_storage_errors_total 4.0" in text
    assert echo.calls == 6


async def test_the_memory_storage_sweeps_inline_and_keeps_the_window() -> None:
    # limits' own memory storage starts a sweep task after every hit, which
    # hands each key to a thread while holding its lock; ours sweeps inline.
    storage = SweepingMemoryStorage()
    limiter = MovingWindowRateLimiter(storage)
    item = parse("3/second")
    assert [await limiter.hit(item, "key") for _ in range(4)] == [True, True, True, False]
    assert storage.timer is None  # no task, no thread
    # A sweep with every entry expired frees the key; one with none keeps it whole.
    key = item.key_for("key")
    storage._sweep()
    assert len(storage.events[key]) == 3
    for entry in storage.events[key]:
        entry.expiry -= 2.0
    storage._sweep()
    assert key not in storage.events
    assert await limiter.hit(item, "key")
