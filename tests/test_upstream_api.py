"""clients.upstream(name) from a user's own async view, through the real stack.

The blueprint and job kind (tests/api_views.py) are listed in the gateway
file's ``[app]`` table, as a user lists theirs, and served by Hypercorn;
upstreams are real aiohttp servers.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from app import create_app
from fanout.bridge import ASGIBridge
from tests.serving import hypercorn_serving

API_KEY = "mine-0123456789abcdef"


@dataclass
class Backend:
    """A real aiohttp upstream: one prefix per configured upstream."""

    port: int = 0
    hits: Counter[str] = field(default_factory=Counter)
    request_ids: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        """Its origin."""
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer as the path's first segment says."""
        prefix = request.path.split("/")[1]
        self.hits[prefix] += 1
        self.request_ids.append(request.headers.get("X-Request-ID", ""))
        if prefix == "slow":
            # Far longer than any timeout under test; released at teardown.
            try:
                async with asyncio.timeout(10):
                    await self.release.wait()
            except TimeoutError:
                pass
            return web.json_response({"late": True})
        if prefix == "flaky" and self.hits[prefix] % 2 == 1:
            return web.json_response({"busy": True}, status=503)
        if prefix == "broken":
            return web.json_response({"broken": True}, status=500)
        if request.method == "POST":
            return web.json_response({"echo": await request.json()})
        return web.json_response({"path": request.path, "query": request.query_string})


@asynccontextmanager
async def backend_serving() -> AsyncIterator[Backend]:
    """Serve a Backend on 127.0.0.1, port 0."""
    backend = Backend()
    server = web.Application()
    server.router.add_route("*", "/{tail:.*}", backend.handle)
    runner = web.AppRunner(server, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    backend.port = runner.addresses[0][1]
    try:
        yield backend
    finally:
        backend.release.set()
        await runner.cleanup()


def gateway_text(origin: str, *, keys: bool = False) -> str:
    """The gateway file: one upstream per Backend prefix, all on the loopback (internal)."""
    auth = f'[auth]\napi_keys = {{ tester = "{API_KEY}" }}\n' if keys else ""
    return f"""
[app]
# Registered as a user registers them: through the gateway file.
blueprints = ["tests.api_views:blueprint"]
job_kinds = ["tests.api_views:deadline_kind"]

[jobs]
store = "memory://"
{auth}
[upstreams.slow]
base_url = "{origin}/slow"
timeout = 0.5
internal = true

[upstreams.slow4]
base_url = "{origin}/slow"
timeout = 4.0
internal = true

[upstreams.flaky]
base_url = "{origin}/flaky"
retries = 1
internal = true

[upstreams.broken]
base_url = "{origin}/broken"
circuit_breaker = {{ failures = 2, reset_after = 30.0 }}
internal = true

[upstreams.ok]
base_url = "{origin}/ok"
internal = true
"""


@dataclass
class Served:
    """The gateway serving the user's blueprint, its client and its upstream."""

    url: str
    client: aiohttp.ClientSession
    backend: Backend

    async def get(self, path: str, **kwargs: Any) -> tuple[int, dict[str, Any], Any]:
        """GET ``path``; return status, headers and the JSON body."""
        async with self.client.get(path, **kwargs) as response:
            return response.status, dict(response.headers), await response.json(content_type=None)


@asynccontextmanager
async def serving(tmp_path: Path, *, keys: bool = False) -> AsyncIterator[Served]:
    """The app with the user's blueprint and job kind listed in [app], under Hypercorn."""
    async with backend_serving() as backend:
        config = tmp_path / "gateway.toml"
        config.write_text(gateway_text(backend.url, keys=keys))
        app = create_app({"CONFIG": str(config), "JOB_POLL_SECONDS": 0.1})
        async with (
            hypercorn_serving(ASGIBridge(app)) as url,
            aiohttp.ClientSession(url) as client,
        ):
            yield Served(url, client, backend)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    """The gateway without API keys."""
    async with serving(tmp_path) as running:
        yield running


async def test_the_upstreams_timeout_gives_a_504_problem_at_that_timeout(served: Served) -> None:
    started = time.monotonic()
    status, headers, problem = await served.get("/mine/call/slow")
    elapsed = time.monotonic() - started
    assert status == 504
    assert headers["Content-Type"] == "application/problem+json"
    assert problem["title"] == "Gateway Timeout" and problem["upstream"] == "slow"
    assert "within 0.5s" in problem["detail"]
    # At the upstream's 0.5 s timeout, not after its 10 s answer.
    assert elapsed < 5, elapsed
    assert headers["X-Request-ID"]


async def test_timeout_and_deadline_are_relative_seconds_bounding_the_call(
    served: Served,
) -> None:
    # slow4 allows 4 s a try: the call's own timeout= (0.3 s) ends it first ...
    started = time.monotonic()
    status, _, problem = await served.get("/mine/call/slow4?timeout=0.3")
    assert status == 504 and problem["upstream"] == "slow4"
    assert time.monotonic() - started < 3
    # ... and so does a deadline set around it (clients.deadline(0.3)).
    started = time.monotonic()
    status, _, problem = await served.get("/mine/call/slow4?within=0.3")
    assert status == 504 and problem["upstream"] == "slow4"
    assert time.monotonic() - started < 3


async def test_retries_turn_a_503_then_200_upstream_into_a_200_with_the_request_id(
    served: Served,
) -> None:
    status, headers, body = await served.get(
        "/mine/call/flaky?path=/x%3Fy", headers={"X-Request-ID": "mine-retry-1"}
    )
    assert status == 200 and body["status"] == 200
    assert served.backend.hits["flaky"] == 2  # a 503, then the retry's 200
    assert headers["X-Request-ID"] == "mine-retry-1"
    # Both tries carried the request's id.
    assert served.backend.request_ids == ["mine-retry-1", "mine-retry-1"]


async def test_a_query_string_is_kept_and_a_body_is_sent(served: Served) -> None:
    status, _, body = await served.get("/mine/call/ok?path=/items%3Fa%3D1%26b%3Dtwo")
    assert status == 200
    assert body["body"] == {"path": "/ok/items", "query": "a=1&b=two"}
    async with served.client.post("/mine/echo/ok", json={"n": 1}) as response:
        assert response.status == 200
        assert await response.json() == {"echo": {"n": 1}}


async def test_an_open_circuit_refuses_without_calling(served: Served) -> None:
    for _ in range(2):
        status, _, problem = await served.get("/mine/call/broken")
        # The view did not handle the error status: the same 502 as an aggregate endpoint.
        assert status == 502 and problem["title"] == "Upstream Error Status"
        assert problem["upstream_status"] == 500
    status, headers, problem = await served.get("/mine/call/broken")
    assert status == 503 and problem["title"] == "Upstream Circuit Open"
    assert int(headers["Retry-After"]) >= 1
    assert served.backend.hits["broken"] == 2  # the third call never reached it
    # gather(): each call's reply or error, side by side.
    status, _, results = await served.get("/mine/both")
    assert status == 200
    assert results == {"flaky": 200, "broken": "CircuitOpen"}


async def test_the_raw_session_reaches_configured_origins_only(served: Served) -> None:
    async with backend_serving() as other:
        # Another port of the same loopback host, whose upstreams are internal.
        status, _, body = await served.get("/mine/raw", params={"url": f"{other.url}/ok/x"})
        assert status == 403 and body["refused"] == "not a configured upstream's origin"
        assert sum(other.hits.values()) == 0
    # The gateway's own port, on that internal host.
    status, _, body = await served.get("/mine/raw", params={"url": f"{served.url}/healthz"})
    assert status == 403 and body["refused"] == "not a configured upstream's origin"
    # A configured origin is reachable.
    status, _, body = await served.get("/mine/raw", params={"url": f"{served.backend.url}/ok/"})
    assert status == 200 and body == {"status": 200}


async def test_fanout_upstream_calls_total_counts_the_calls(served: Served) -> None:
    await served.get("/mine/call/flaky")
    await served.get("/mine/call/ok")
    await served.get("/mine/call/slow")
    async with served.client.get("/metrics") as response:
        text = await response.text()
    counts = {
        (sample.labels["upstream"], sample.labels["outcome"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "fanout_upstream_calls_total"
    }
    assert counts[("flaky", "error_status")] == 1
    assert counts[("flaky", "ok")] == 1
    assert counts[("ok", "ok")] == 1
    assert counts[("slow", "timeout")] == 1


async def test_a_jobs_time_limit_bounds_its_calls(served: Served) -> None:
    started = time.monotonic()
    async with served.client.post("/jobs/slow-call") as response:
        assert response.status == 202
        job = await response.json()
    status, _, final = await served.get(f"/jobs/{job['id']}?wait=10")
    assert status == 200
    assert final["status"] == "failed" and final["error"]["status"] == 504
    # Its 0.5 s limit ended the call, not slow4's 4 s timeout nor the 10 s answer.
    assert time.monotonic() - started < 3.5
    # The call inside saw the job's deadline (clients.remaining()).
    assert 0 < float(final["progress"]["message"]) <= 0.5


async def test_the_view_needs_the_api_key_and_is_in_openapi(tmp_path: Path) -> None:
    async with serving(tmp_path, keys=True) as served:
        status, headers, problem = await served.get("/mine/call/ok")
        assert status == 401 and problem["title"] == "Unauthorized"
        assert headers["X-Request-ID"]
        status, _, body = await served.get(
            "/mine/call/ok", headers={"Authorization": f"Bearer {API_KEY}"}
        )
        assert status == 200 and body["status"] == 200
        status, _, document = await served.get("/openapi.json")
    assert status == 200
    assert "/mine/call/{name}" in document["paths"]
