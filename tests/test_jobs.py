"""Background jobs through the real stack (memory store)."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from fanout.jobs import model
from fanout.jobs.model import JobRecord, JobStatus, new_job_id
from handlers.resources import job_registry
from tests.fault_upstream import FaultUpstream
from tests.gateway_serving import Gateway, gateway_serving

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-0123456789abcdef"


def _config(
    upstream_url: str,
    *,
    auth: bool = False,
    max_running: int = 100,
    max_pending: int = 1000,
    default_timeout: float = 30.0,
) -> str:
    keys = f'api_keys = {{ a = "{KEY_A}", b = "{KEY_B}" }}' if auth else "api_keys = {}"
    return f"""
[jobs]
store = "memory://"
max_running = {max_running}
max_pending = {max_pending}
default_timeout = {default_timeout}

[auth]
{keys}

[upstreams.fault]
base_url = "{upstream_url}"
internal = true
timeout = 5.0

[[endpoints]]
path = "/profile/<user_id>"
  [[endpoints.backends]]
  upstream = "fault"
  path = "/users/{{user_id}}?ms=200"
  group = "user"
  [[endpoints.backends]]
  upstream = "fault"
  path = "/storm"
  group = "flaky"

[[endpoints]]
path = "/report/<user_id>"
background = true
  [[endpoints.backends]]
  upstream = "fault"
  path = "/users/{{user_id}}"

[[endpoints]]
path = "/orders"
method = "POST"
background = true
  [[endpoints.backends]]
  upstream = "fault"
  path = "/echo/orders"
"""


@pytest.fixture
async def gateway(fault: FaultUpstream, tmp_path: Path) -> AsyncIterator[Gateway]:
    """The gateway with jobs in memory."""
    async with gateway_serving(_config(fault.url), tmp_path) as served:
        yield served


async def _json(gateway: Gateway, method: str, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
    async with gateway.client.request(method, path, **kwargs) as response:
        text = await response.text()
        return response.status, response.headers, json.loads(text) if text else None


def _batch(items: list[Any], path: str = "/json?ms=100&i={item}", **extra: Any) -> dict[str, Any]:
    return {"upstream": "fault", "path": path, "items": items, **extra}


async def _wait_final(gateway: Gateway, job_id: str, **kwargs: Any) -> dict[str, Any]:
    for _ in range(100):
        status, _, job = await _json(gateway, "GET", f"/jobs/{job_id}?wait=5", **kwargs)
        assert status == 200
        if job["status"] not in ("pending", "running"):
            return dict(job)
    raise AssertionError("the job never finished")


async def test_a_job_runs_after_the_response_shows_progress_and_its_result(
    gateway: Gateway, fault: FaultUpstream
) -> None:
    status, headers, job = await _json(
        gateway, "POST", "/jobs/batch", json=_batch(list(range(10)), concurrency=2)
    )
    assert status == 202
    assert headers["Location"] == f"/jobs/{job['id']}"
    assert headers["Retry-After"] == "1"
    assert job["status"] in ("pending", "running") and job["kind"] == "batch"
    assert len(job["id"]) == 32
    seen_progress = set()
    for _ in range(200):
        status, headers, job = await _json(gateway, "GET", f"/jobs/{job['id']}")
        if job["status"] == "running":
            assert headers["Retry-After"] == "1"
            seen_progress.add(job["progress"]["done"])
        if job["status"] == "succeeded":
            break
        await asyncio.sleep(0.05)
    assert job["status"] == "succeeded" and "Retry-After" not in headers
    assert len(seen_progress - {0}) >= 2  # progress moved while it ran
    assert job["progress"] == {"done": 10, "total": 10, "message": "10 of 10"}
    status, _, result = await _json(gateway, "GET", job["result_url"])
    assert status == 200
    assert result["succeeded"] == 10 and result["failed"] == 0
    assert [entry["item"] for entry in result["results"]] == list(range(10))
    assert fault.hits["/json"] == 10


async def test_result_answers_202_while_running(gateway: Gateway) -> None:
    # An upstream that never answers: the job is still running when asked.
    _, _, job = await _json(gateway, "POST", "/jobs/batch", json=_batch([1], "/never?i={item}"))
    status, headers, body = await _json(gateway, "GET", f"/jobs/{job['id']}/result")
    assert status == 202
    assert headers["Location"] == f"/jobs/{job['id']}" and headers["Retry-After"] == "1"
    assert body["status"] in ("pending", "running")
    assert (await _json(gateway, "POST", f"/jobs/{job['id']}/cancel"))[0] in (200, 202)


async def test_cancel_stops_the_job_and_aborts_its_upstream_calls(
    gateway: Gateway, fault: FaultUpstream
) -> None:
    _, _, job = await _json(
        gateway, "POST", "/jobs/batch", json=_batch([1, 2, 3], "/never?i={item}", concurrency=3)
    )
    for _ in range(1000):  # polls: generous budgets, the machine is shared
        if fault.hits["/never"] == 3:
            break
        await asyncio.sleep(0.02)
    assert fault.hits["/never"] == 3
    status, _, cancelled = await _json(gateway, "POST", f"/jobs/{job['id']}/cancel")
    assert status == 200 and cancelled["status"] == "cancelled"
    for _ in range(1000):
        if fault.cancelled == 3:
            break
        await asyncio.sleep(0.02)
    assert fault.cancelled == 3  # the upstream saw each call aborted
    status, _, problem = await _json(gateway, "POST", f"/jobs/{job['id']}/cancel")
    assert status == 409 and problem["status"] == 409
    status, _, problem = await _json(gateway, "GET", f"/jobs/{job['id']}/result")
    assert status == 409 and problem["title"] == "Job cancelled"


async def test_prefer_respond_async_replays_exactly_the_synchronous_answer(
    gateway: Gateway,
) -> None:
    async with gateway.client.get("/profile/4") as response:
        sync_status, sync_headers = response.status, response.headers
        sync_body = await response.read()
    status, headers, job = await _json(
        gateway, "GET", "/profile/4", headers={"Prefer": "respond-async, wait=0"}
    )
    assert status == 202
    assert headers["Preference-Applied"] == "respond-async"
    await _wait_final(gateway, job["id"])
    async with gateway.client.get(f"/jobs/{job['id']}/result") as response:
        assert response.status == sync_status == 200
        assert response.headers["X-Fanout-Completed"] == sync_headers["X-Fanout-Completed"]
        assert response.headers["Content-Type"] == sync_headers["Content-Type"]
        assert await response.read() == sync_body


async def test_a_background_endpoint_always_answers_202(gateway: Gateway) -> None:
    status, headers, job = await _json(gateway, "GET", "/report/9")
    assert status == 202 and "Preference-Applied" not in headers
    final = await _wait_final(gateway, job["id"])
    assert final["status"] == "succeeded"
    status, _, body = await _json(gateway, "GET", f"/jobs/{job['id']}/result")
    assert status == 200 and body["name"] == "user 9"


async def test_wait_holds_until_the_job_finishes(gateway: Gateway) -> None:
    _, _, job = await _json(
        gateway, "POST", "/jobs/batch", json=_batch([1], "/json?ms=300&i={item}")
    )
    started = asyncio.get_running_loop().time()
    status, _, final = await _json(gateway, "GET", f"/jobs/{job['id']}?wait=10")
    elapsed = asyncio.get_running_loop().time() - started
    assert status == 200 and final["status"] == "succeeded"
    assert 0.2 < elapsed < 5  # held for the job, released when it finished


async def test_events_stream_every_change_and_close_after_the_last(gateway: Gateway) -> None:
    _, _, job = await _json(
        gateway, "POST", "/jobs/batch", json=_batch(list(range(4)), concurrency=1)
    )
    events: list[dict[str, Any]] = []
    async with gateway.client.get(f"/jobs/{job['id']}/events") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        async for line in response.content:
            if line.startswith(b"data: "):
                events.append(json.loads(line[6:]))
    statuses = [event["status"] for event in events]
    assert statuses[-1] == "succeeded"
    # One event per change: never the same resource twice in a row.
    assert all(a != b for a, b in itertools.pairwise(events))
    assert "running" in statuses
    assert len({event["progress"]["done"] for event in events}) >= 3


async def test_idempotency_key_returns_the_same_job(gateway: Gateway) -> None:
    headers = {"Idempotency-Key": "order-77"}
    _, _, first = await _json(gateway, "POST", "/jobs/batch", json=_batch([1]), headers=headers)
    _, _, again = await _json(gateway, "POST", "/jobs/batch", json=_batch([1]), headers=headers)
    assert first["id"] == again["id"]


async def test_listing_is_newest_first_filtered_and_paginated(gateway: Gateway) -> None:
    ids = []
    for n in range(5):
        _, _, job = await _json(gateway, "POST", "/jobs/batch", json=_batch([n]))
        ids.append(job["id"])
    for job_id in ids:
        await _wait_final(gateway, job_id)
    status, _, page = await _json(gateway, "GET", "/jobs?limit=2")
    assert status == 200 and [j["id"] for j in page["jobs"]] == ids[::-1][:2]
    seen = [j["id"] for j in page["jobs"]]
    while page["next_cursor"]:
        _, _, page = await _json(gateway, "GET", f"/jobs?limit=2&cursor={page['next_cursor']}")
        seen += [j["id"] for j in page["jobs"]]
    assert seen == ids[::-1]
    _, _, running = await _json(gateway, "GET", "/jobs?status=running")
    assert running["jobs"] == []
    _, _, done = await _json(gateway, "GET", "/jobs?status=succeeded&kind=batch&limit=100")
    assert len(done["jobs"]) == 5


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/jobs/" + "0" * 32, None, 404),
        ("GET", "/jobs/not-a-job-id", None, 404),
        ("GET", "/jobs/" + "0" * 32 + "/result", None, 404),
        ("POST", "/jobs/" + "0" * 32 + "/cancel", None, 404),
        ("DELETE", "/jobs/" + "0" * 32, None, 404),
        ("POST", "/jobs/no-such-kind", {}, 404),
        ("POST", "/jobs/batch", {"upstream": "fault"}, 400),
        ("POST", "/jobs/batch", {"upstream": "nope", "path": "/x/{item}", "items": [1]}, 400),
        ("POST", "/jobs/batch", {"upstream": "fault", "path": "/x/{item}", "items": [".."]}, 400),
        ("POST", "/jobs/batch", [1, 2], 400),
        ("GET", "/jobs?cursor=garbage", None, 400),
        ("GET", "/jobs?limit=0", None, 400),
        ("GET", "/jobs?limit=x", None, 400),
        ("GET", "/jobs?status=done", None, 400),
    ],
)
async def test_bad_requests_are_problem_details_and_change_nothing(
    gateway: Gateway, method: str, path: str, body: Any, status: int
) -> None:
    answer, headers, problem = await _json(gateway, method, path, json=body)
    assert answer == status, problem
    assert headers["Content-Type"] == "application/problem+json"
    assert problem["status"] == status
    _, _, listing = await _json(gateway, "GET", "/jobs")
    assert listing["jobs"] == []


@pytest.mark.parametrize("wait", ["-1", "61", "soon", "nan"])
async def test_bad_wait_values_are_400(gateway: Gateway, wait: str) -> None:
    _, _, job = await _json(gateway, "POST", "/jobs/batch", json=_batch([1]))
    status, _, problem = await _json(gateway, "GET", f"/jobs/{job['id']}?wait={wait}")
    assert status == 400 and "wait" in problem["detail"]


async def test_bad_json_body_is_400(gateway: Gateway) -> None:
    status, _, problem = await _json(
        gateway,
        "POST",
        "/jobs/batch",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert status == 400 and problem["status"] == 400


async def test_delete_cancels_and_forgets(gateway: Gateway, fault: FaultUpstream) -> None:
    _, _, job = await _json(gateway, "POST", "/jobs/batch", json=_batch([1], "/never?i={item}"))
    async with gateway.client.delete(f"/jobs/{job['id']}") as response:
        assert response.status == 204
    status, _, _ = await _json(gateway, "GET", f"/jobs/{job['id']}")
    assert status == 404


async def test_bounds_answer_503_with_retry_after(fault: FaultUpstream, tmp_path: Path) -> None:
    async with gateway_serving(_config(fault.url, max_running=1, max_pending=1), tmp_path) as gw:
        never = _batch([1], "/never?i={item}")
        assert (await _json(gw, "POST", "/jobs/batch", json=never))[0] == 202
        assert (await _json(gw, "POST", "/jobs/batch", json=never))[0] == 202
        status, headers, problem = await _json(gw, "POST", "/jobs/batch", json=never)
        assert status == 503 and int(headers["Retry-After"]) >= 1
        assert problem["status"] == 503


async def test_a_job_past_its_timeout_fails_with_a_timeout_problem(
    fault: FaultUpstream, tmp_path: Path
) -> None:
    async with gateway_serving(_config(fault.url, default_timeout=0.5), tmp_path) as gw:
        _, _, job = await _json(gw, "POST", "/jobs/batch", json=_batch([1], "/never?i={item}"))
        final = await _wait_final(gw, job["id"])
        assert final["status"] == "failed"
        assert final["error"]["status"] == 504 and final["error"]["title"] == "Job Timed Out"
        status, _, problem = await _json(gw, "GET", f"/jobs/{job['id']}/result")
        assert status == 504 and problem["title"] == "Job Timed Out"


async def test_each_key_sees_only_its_own_jobs(fault: FaultUpstream, tmp_path: Path) -> None:
    async with gateway_serving(_config(fault.url, auth=True), tmp_path) as gw:
        status, headers, _ = await _json(gw, "POST", "/jobs/batch", json=_batch([1]))
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        assert (await _json(gw, "GET", "/healthz"))[0] == 200  # probes stay open
        a = {"Authorization": f"Bearer {KEY_A}"}
        b = {"Authorization": f"Bearer {KEY_B}"}
        _, _, job = await _json(gw, "POST", "/jobs/batch", json=_batch([1]), headers=a)
        assert (await _json(gw, "GET", f"/jobs/{job['id']}", headers=a))[0] == 200
        assert (await _json(gw, "GET", f"/jobs/{job['id']}", headers=b))[0] == 404
        assert (await _json(gw, "POST", f"/jobs/{job['id']}/cancel", headers=b))[0] == 404
        _, _, listing_b = await _json(gw, "GET", "/jobs", headers=b)
        assert listing_b["jobs"] == []
        bad = {"Authorization": "Bearer wrong-key-0123456789"}
        assert (await _json(gw, "GET", "/jobs", headers=bad))[0] == 401


async def test_shutdown_interrupts_jobs_still_running_after_the_grace(
    fault: FaultUpstream, tmp_path: Path
) -> None:
    store_path = tmp_path / "jobs.db"
    # A grace the 100 ms job finishes within even on a loaded machine.
    settings = {"JOB_STORE": f"sqlite:///{store_path}", "JOB_GRACE_SECONDS": 2.0}
    async with gateway_serving(_config(fault.url), tmp_path, settings) as gw:
        _, _, slow = await _json(gw, "POST", "/jobs/batch", json=_batch([1], "/never?i={item}"))
        _, _, quick = await _json(
            gw, "POST", "/jobs/batch", json=_batch([1], "/json?ms=100&i={item}")
        )
        await asyncio.sleep(0.05)
    # Served again on the same store: what the first run left is final.
    async with gateway_serving(_config(fault.url), tmp_path, settings) as gw:
        _, _, slow_after = await _json(gw, "GET", f"/jobs/{slow['id']}")
        _, _, quick_after = await _json(gw, "GET", f"/jobs/{quick['id']}")
    assert slow_after["status"] == "interrupted"
    assert quick_after["status"] == "succeeded"  # finished within the grace


async def _until(condition: Any, polls: int = 1000) -> None:
    # Polls: generous budgets, the machine is shared.
    for _ in range(polls):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the condition never held")


async def test_a_batch_never_runs_more_calls_than_its_concurrency(
    gateway: Gateway, fault: FaultUpstream
) -> None:
    _, _, job = await _json(
        gateway,
        "POST",
        "/jobs/batch",
        json=_batch(list(range(12)), "/json?ms=200&i={item}", concurrency=3),
    )
    final = await _wait_final(gateway, job["id"])
    assert final["status"] == "succeeded" and fault.hits["/json"] == 12
    # The upstream saw the concurrency asked for, and never more.
    assert fault.peak_in_flight == 3


async def test_a_batch_whose_record_moved_on_stops_without_a_failure(
    fault: FaultUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fanout.jobs.registry")
    # A slow maintenance loop: the job learns of the change from its own
    # progress write (a StaleRecord inside the batch's TaskGroup), not from a poll.
    async with gateway_serving(_config(fault.url), tmp_path, {"JOB_POLL_SECONDS": 30.0}) as gw:
        _, _, job = await _json(
            gw,
            "POST",
            "/jobs/batch",
            json=_batch(list(range(4)), "/json?ms=300&i={item}", concurrency=1),
        )
        await _until(lambda: fault.hits["/json"] >= 1)
        registry = job_registry(gw.app)
        running = await registry.store.get(job["id"])
        assert running is not None and running.status is JobStatus.RUNNING
        # As another worker does once it judges the lease lapsed:
        await registry.store.replace(
            model.interrupt(running, "taken over", now=time.time(), ttl=60),
            expected=JobStatus.RUNNING,
        )
        await asyncio.wait_for(registry.drained(), timeout=10)
        _, _, seen = await _json(gw, "GET", f"/jobs/{job['id']}")
    assert seen["status"] == "interrupted"
    assert fault.hits["/json"] < 4  # the rest of the batch was not called
    complaints = [
        r for r in caplog.records if r.name == "jobs.registry" and r.levelno >= logging.WARNING
    ]
    assert complaints == []  # no traceback, no failing write attempted
    assert any("changed elsewhere" in r.getMessage() for r in caplog.records)


async def test_a_start_while_shutting_down_is_503(gateway: Gateway, fault: FaultUpstream) -> None:
    _, _, running = await _json(gateway, "POST", "/jobs/batch", json=_batch([1], "/never?i={item}"))
    registry = job_registry(gateway.app)
    closing_down = asyncio.create_task(registry.close(30))
    await asyncio.sleep(0)  # close() has begun: it waits for the running job
    status, headers, problem = await _json(gateway, "POST", "/jobs/batch", json=_batch([2]))
    assert status == 503 and int(headers["Retry-After"]) >= 1
    assert problem["status"] == 503 and "shutting down" in problem["detail"]
    assert not closing_down.done()
    await _json(gateway, "POST", f"/jobs/{running['id']}/cancel")
    await closing_down
    assert fault.hits["/json"] == 0  # the refused job never ran


async def test_a_repeated_start_on_a_full_worker_answers_its_job(
    fault: FaultUpstream, tmp_path: Path
) -> None:
    async with gateway_serving(_config(fault.url, max_running=1, max_pending=0), tmp_path) as gw:
        never, key = _batch([1], "/never?i={item}"), {"Idempotency-Key": "nightly-1"}
        status, _, first = await _json(gw, "POST", "/jobs/batch", json=never, headers=key)
        assert status == 202
        assert (await _json(gw, "POST", "/jobs/batch", json=never))[0] == 503
        status, headers, again = await _json(gw, "POST", "/jobs/batch", json=never, headers=key)
        assert status == 202 and again["id"] == first["id"]
        assert headers["Location"] == f"/jobs/{first['id']}"


async def test_an_idempotency_key_reused_for_another_request_is_422(gateway: Gateway) -> None:
    key = {"Idempotency-Key": "order-78"}
    _, _, first = await _json(gateway, "POST", "/jobs/batch", json=_batch([1]), headers=key)
    # Another kind of job (an aggregate endpoint run as a job) under the same key:
    status, headers, problem = await _json(
        gateway, "GET", "/profile/4", headers={**key, "Prefer": "respond-async"}
    )
    assert status == 422 and headers["Content-Type"] == "application/problem+json"
    assert problem["status"] == 422 and first["id"] not in json.dumps(problem)
    # The same kind with other parameters:
    status, _, _ = await _json(gateway, "POST", "/jobs/batch", json=_batch([2]), headers=key)
    assert status == 422
    _, _, listing = await _json(gateway, "GET", "/jobs")
    assert [j["id"] for j in listing["jobs"]] == [first["id"]]


async def test_an_idempotency_key_reused_with_another_body_is_422(gateway: Gateway) -> None:
    key = {"Idempotency-Key": "order-79"}
    status, _, first = await _json(gateway, "POST", "/orders", json={"n": 1}, headers=key)
    assert status == 202
    status, _, again = await _json(gateway, "POST", "/orders", json={"n": 1}, headers=key)
    assert status == 202 and again["id"] == first["id"]
    status, _, problem = await _json(gateway, "POST", "/orders", json={"n": 2}, headers=key)
    assert status == 422 and problem["status"] == 422


def _orphan(lease_in: float) -> JobRecord:
    # A pending job of a worker that died before running it.
    now = time.time()
    return JobRecord(
        id=new_job_id(),
        kind="batch",
        owner=None,
        status=JobStatus.PENDING,
        created_at=now,
        worker="dead-worker",
        lease_until=now + lease_in,
        timeout=30.0,
    )


async def test_cancel_of_a_dead_workers_pending_job_cancels_it(
    fault: FaultUpstream, tmp_path: Path
) -> None:
    # A slow maintenance loop, so that it is the cancel, not a poll, that acts.
    async with gateway_serving(_config(fault.url), tmp_path, {"JOB_POLL_SECONDS": 30.0}) as gw:
        orphan = await job_registry(gw.app).store.create(_orphan(lease_in=-60))
        status, _, job = await _json(gw, "POST", f"/jobs/{orphan.id}/cancel")
        assert status == 200 and job["status"] == "cancelled"
        assert (await _json(gw, "GET", f"/jobs/{orphan.id}"))[2]["status"] == "cancelled"


async def test_cancel_not_yet_effective_answers_202(gateway: Gateway) -> None:
    # Its worker died a moment ago: its lease still holds, nobody can act yet.
    orphan = await job_registry(gateway.app).store.create(_orphan(lease_in=60))
    status, headers, job = await _json(gateway, "POST", f"/jobs/{orphan.id}/cancel")
    assert status == 202 and job["status"] == "pending"
    assert headers["Location"] == f"/jobs/{orphan.id}" and headers["Retry-After"] == "1"
    stored = await job_registry(gateway.app).store.get(orphan.id)
    assert stored is not None and stored.cancel_requested


async def test_a_locked_sqlite_store_answers_503_and_starts_nothing(
    fault: FaultUpstream, tmp_path: Path
) -> None:
    path = tmp_path / "jobs.db"
    async with gateway_serving(
        _config(fault.url), tmp_path, {"JOB_STORE": f"sqlite:///{path}"}
    ) as gw:
        with closing(sqlite3.connect(path, isolation_level=None)) as blocker:
            # Another process holds the write lock past the store's busy timeout.
            blocker.execute("BEGIN IMMEDIATE")
            status, headers, problem = await _json(gw, "POST", "/jobs/batch", json=_batch([1]))
            assert status == 503 and headers["Content-Type"] == "application/problem+json"
            assert problem["status"] == 503 and int(headers["Retry-After"]) >= 1
            blocker.execute("ROLLBACK")
        _, _, listing = await _json(gw, "GET", "/jobs")
        assert listing["jobs"] == []
        await asyncio.sleep(0.3)
        assert fault.hits["/json"] == 0
