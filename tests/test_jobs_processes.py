"""Jobs across real gateway processes sharing one store (``hypercorn app:app``).

Two instances on one SQLite file or one Redis server: a job started on one
is polled, long-polled, streamed and cancelled through the other. And one
instance with two Hypercorn workers on one port: every poll finds the job,
whichever worker answers it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fault_upstream import FaultUpstream
from tests.processes import start_gateway


def _env(fault: FaultUpstream, store_url: str, tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[upstreams.fault]\nbase_url = "{fault.url}"\ninternal = true\ntimeout = 30.0\n'
    )
    return {
        **os.environ,
        "FANOUT_CONFIG": str(config),
        "FANOUT_JOB_STORE": store_url,
        # Remote changes (progress, cancels) are seen within this.
        "FANOUT_JOB_POLL_SECONDS": "0.2",
        "FANOUT_JOB_GRACE_SECONDS": "1.0",
    }


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), timeout=30)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise


async def _call(
    client: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any]:
    async with client.request(method, url, **kwargs) as response:
        text = await response.text()
        return response.status, json.loads(text) if text else None


async def _events(client: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    found = []
    async with client.get(url) as response:
        assert response.status == 200
        async for line in response.content:
            if line.startswith(b"data: "):
                found.append(json.loads(line[6:]))
    return found


async def _until(condition: Any) -> None:
    for _ in range(1000):  # polls: generous budgets, the machine is shared
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the condition never held")


@pytest.mark.timeout(90)
async def test_two_processes_on_one_store_follow_each_others_jobs(
    fault: FaultUpstream, store_url: str, tmp_path: Path
) -> None:
    env = _env(fault, store_url, tmp_path)
    (a, url_a), (b, url_b) = await asyncio.gather(start_gateway(env), start_gateway(env))
    try:
        async with aiohttp.ClientSession() as client:
            # Started on A: one to stream, one to long-poll, one to cancel.
            streamed = {
                "upstream": "fault",
                "path": "/json?ms=300&i={item}",
                "items": list(range(5)),
                "concurrency": 1,
            }
            waited = {"upstream": "fault", "path": "/json?ms=800&w={item}", "items": [1]}
            stopped = {
                "upstream": "fault",
                "path": "/never?i={item}",
                "items": [1, 2],
                "concurrency": 2,
            }
            jobs = []
            for body in (streamed, waited, stopped):
                status, job = await _call(client, "POST", f"{url_a}/jobs/batch", json=body)
                assert status == 202
                jobs.append(job)
            first, second, third = (job["id"] for job in jobs)

            # Polled through B.
            status, seen = await _call(client, "GET", f"{url_b}/jobs/{first}")
            assert status == 200 and seen["id"] == first and seen["kind"] == "batch"

            # Streamed and long-polled through B, at once.
            events, (status, final) = await asyncio.gather(
                _events(client, f"{url_b}/jobs/{first}/events"),
                _call(client, "GET", f"{url_b}/jobs/{second}?wait=20"),
            )
            assert status == 200 and final["status"] == "succeeded"
            assert events[-1]["status"] == "succeeded"
            assert events[-1]["progress"] == {"done": 5, "total": 5, "message": "5 of 5"}
            assert "running" in [event["status"] for event in events]
            # Progress moved while B watched A's job.
            assert len({event["progress"]["done"] for event in events[:-1]}) >= 2
            status, result = await _call(client, "GET", f"{url_b}/jobs/{first}/result")
            assert status == 200 and result["succeeded"] == 5

            # Cancelled through B: A's task stops and its upstream calls are aborted.
            await _until(lambda: fault.hits["/never"] == 2)
            status, cancelled = await _call(client, "POST", f"{url_b}/jobs/{third}/cancel")
            assert status == 200 and cancelled["status"] == "cancelled"
            await _until(lambda: fault.cancelled == 2)
            status, seen = await _call(client, "GET", f"{url_a}/jobs/{third}")
            assert status == 200 and seen["status"] == "cancelled"
    finally:
        await asyncio.gather(_stop(a), _stop(b))


@pytest.mark.timeout(90)
async def test_two_hypercorn_workers_on_one_port_always_find_the_job(
    fault: FaultUpstream, tmp_path: Path
) -> None:
    path = tmp_path / "jobs.db"
    env = _env(fault, f"sqlite:///{path}", tmp_path)
    server, url = await start_gateway(env, "--workers", "2")
    # A connection per request: the kernel hands each to either worker.
    fresh = aiohttp.TCPConnector(force_close=True)
    try:
        async with aiohttp.ClientSession(connector=fresh) as client:
            ids: list[str] = []
            body = {"upstream": "fault", "path": "/json?ms=50&i={item}", "items": [1]}
            workers: set[str] = set()
            # /readyz answered once one worker was up; the other may still be
            # starting, and the kernel hands a connection to either: start
            # jobs, 10 at a time, until both workers took some (each job holds
            # its worker's id).
            for _ in range(30):
                started = await asyncio.gather(
                    *(_call(client, "POST", f"{url}/jobs/batch", json=body) for _ in range(10))
                )
                assert [status for status, _ in started] == [202] * 10
                ids.extend(job["id"] for _, job in started)
                with closing(sqlite3.connect(path)) as conn:
                    workers = {row[0] for row in conn.execute("SELECT worker FROM jobs")}
                if len(workers) == 2:
                    break
                await asyncio.sleep(0.2)
            assert len(workers) == 2, workers
            answers = []
            for n in range(50):
                status, seen = await _call(client, "GET", f"{url}/jobs/{ids[n % len(ids)]}")
                answers.append((status, seen["id"] if status == 200 else None))
            assert answers == [(200, ids[n % len(ids)]) for n in range(50)]
    finally:
        await _stop(server)
