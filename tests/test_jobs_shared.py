"""Two gateway instances on one job store (SQLite file, Redis server).

A job started on one is polled, long-polled, streamed and cancelled through
the other: the store is the only thing they share.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.fault_upstream import FaultUpstream
from tests.gateway_serving import Gateway, gateway_serving


def _config(upstream_url: str) -> str:
    return f"""
[upstreams.fault]
base_url = "{upstream_url}"
internal = true
timeout = 5.0
"""


@pytest.fixture
async def pair(
    fault: FaultUpstream, store_url: str, tmp_path: Path
) -> AsyncIterator[tuple[Gateway, Gateway]]:
    """Two gateway instances sharing ``store_url``."""
    async with AsyncExitStack() as stack:
        served = []
        for name in ("a", "b"):
            directory = tmp_path / name
            directory.mkdir()
            served.append(
                await stack.enter_async_context(
                    gateway_serving(_config(fault.url), directory, {"JOB_STORE": store_url})
                )
            )
        yield served[0], served[1]


async def _json(gateway: Gateway, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with gateway.client.request(method, path, **kwargs) as response:
        text = await response.text()
        return response.status, json.loads(text) if text else None


async def test_a_job_started_on_one_instance_is_followed_through_the_other(
    pair: tuple[Gateway, Gateway],
) -> None:
    a, b = pair
    batch = {
        "upstream": "fault",
        "path": "/json?ms=150&i={item}",
        "items": list(range(6)),
        "concurrency": 1,
    }
    status, job = await _json(a, "POST", "/jobs/batch", json=batch)
    assert status == 202
    # Polled through B.
    status, seen = await _json(b, "GET", f"/jobs/{job['id']}")
    assert status == 200 and seen["id"] == job["id"]
    # Streamed through B: progress events, then the final one.
    events = []
    async with b.client.get(f"/jobs/{job['id']}/events") as response:
        async for line in response.content:
            if line.startswith(b"data: "):
                events.append(json.loads(line[6:]))
    assert events[-1]["status"] == "succeeded"
    assert len({event["progress"]["done"] for event in events}) >= 3
    # Its result, through B.
    status, result = await _json(b, "GET", f"/jobs/{job['id']}/result")
    assert status == 200 and result["succeeded"] == 6
    # Listed on both.
    assert [j["id"] for j in (await _json(b, "GET", "/jobs"))[1]["jobs"]] == [job["id"]]


async def test_long_poll_through_the_other_instance(pair: tuple[Gateway, Gateway]) -> None:
    a, b = pair
    batch = {"upstream": "fault", "path": "/json?ms=400&i={item}", "items": [1]}
    _, job = await _json(a, "POST", "/jobs/batch", json=batch)
    status, final = await _json(b, "GET", f"/jobs/{job['id']}?wait=10")
    assert status == 200 and final["status"] == "succeeded"


async def test_a_cancel_sent_to_the_other_instance_stops_the_job(
    pair: tuple[Gateway, Gateway], fault: FaultUpstream
) -> None:
    a, b = pair
    batch = {"upstream": "fault", "path": "/never?i={item}", "items": [1, 2], "concurrency": 2}
    _, job = await _json(a, "POST", "/jobs/batch", json=batch)
    for _ in range(100):
        if fault.hits["/never"] == 2:
            break
        await asyncio.sleep(0.02)
    started = asyncio.get_running_loop().time()
    status, cancelled = await _json(b, "POST", f"/jobs/{job['id']}/cancel")
    assert status == 200 and cancelled["status"] == "cancelled"
    assert asyncio.get_running_loop().time() - started < 2.0  # "within a second or two"
    for _ in range(100):
        if fault.cancelled == 2:
            break
        await asyncio.sleep(0.02)
    assert fault.cancelled == 2  # A's upstream calls were aborted
    status, seen = await _json(a, "GET", f"/jobs/{job['id']}")
    assert seen["status"] == "cancelled"


async def test_a_store_that_went_down_answers_503_and_starts_nothing(
    fault: FaultUpstream, tmp_path: Path, own_redis: tuple[int, asyncio.subprocess.Process]
) -> None:
    port, server = own_redis
    settings = {"JOB_STORE": f"redis://127.0.0.1:{port}/0"}
    async with gateway_serving(_config(fault.url), tmp_path, settings) as gateway:
        server.kill()
        await server.wait()
        batch = {"upstream": "fault", "path": "/json?i={item}", "items": [1]}
        async with gateway.client.post("/jobs/batch", json=batch) as response:
            assert response.status == 503
            assert response.content_type == "application/problem+json"
            assert int(response.headers["Retry-After"]) >= 1
        async with gateway.client.get("/readyz") as response:
            assert response.status == 503
            assert (await response.json())["checks"]["job_store"] is False
        await asyncio.sleep(0.3)
        assert fault.hits["/json"] == 0  # nothing started
