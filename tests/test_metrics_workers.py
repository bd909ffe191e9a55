"""/metrics with several Hypercorn workers: a scrape adds up the live workers, load or not."""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.fault_upstream import FaultUpstream
from tests.held_views_app import RELEASE_ENV
from tests.processes import ROOT, start_gateway
from tests.worker_processes import (
    Pinned,
    Samples,
    counter_by_pid,
    pinned_by_worker,
    samples,
    scrape_fresh,
    served_workers,
)

ROUTE = "/profile/<user_id>"
REQUESTS = ("fanout_http_requests_total", (("method", "GET"), ("route", ROUTE), ("status", "200")))
UPSTREAM_OK = ("fanout_upstream_calls_total", (("outcome", "ok"), ("upstream", "fault")))
UPSTREAM_SECONDS = ("fanout_upstream_call_seconds_count", (("upstream", "fault"),))
IN_FLIGHT = ("fanout_http_requests_in_flight", ())
THREADS = ("fanout_sync_threads", ())
RUNNING = ("fanout_sync_views_running", ())
QUEUED = ("fanout_sync_views_queued", ())


def _config(upstream_url: str) -> str:
    return f"""
[upstreams.fault]
base_url = "{upstream_url}"
internal = true
timeout = 5.0

[[endpoints]]
path = "{ROUTE}"
  [[endpoints.backends]]
  upstream = "fault"
  path = "/users/{{user_id}}"
  group = "user"
  [[endpoints.backends]]
  upstream = "fault"
  path = "/orders?user={{user_id}}"
  group = "orders"
"""


def _env(fault: FaultUpstream, tmp_path: Path, **extra: str) -> dict[str, str]:
    config = tmp_path / "gateway.toml"
    config.write_text(_config(fault.url))
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    return {
        **os.environ,
        "FANOUT_CONFIG": str(config),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        **extra,
    }


@pytest.mark.timeout(180)
async def test_scrapes_during_a_load_run_show_both_workers_counting(
    fault: FaultUpstream, tmp_path: Path
) -> None:
    env = _env(fault, tmp_path)
    metrics_dir = Path(env["PROMETHEUS_MULTIPROC_DIR"])
    statuses: Counter[int] = Counter()
    stop = asyncio.Event()
    answered = asyncio.Event()

    async def client(user: int) -> None:
        # A connection per request: the kernel spreads them over the workers.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(url, connector=connector) as session:
            while not stop.is_set():
                async with session.get(f"/profile/{user}") as response:
                    await response.read()
                    statuses[response.status] += 1
                    answered.set()

    async def answered_more_than(count: int) -> None:
        while statuses.total() <= count:
            answered.clear()
            await answered.wait()

    scrapes: list[Samples] = []
    contributed: dict[int, float] = {}
    labels = {"method": "GET", "route": ROUTE, "status": "200"}
    async with served_workers(env, workers=2) as url:
        load = [asyncio.create_task(client(user)) for user in range(6)]
        try:
            # Scrape while the load runs, each time after more answers came
            # back, until both workers have served some of it.
            for _ in range(200):
                await asyncio.wait_for(answered_more_than(statuses.total() + 20), timeout=30)
                scrapes.append(await scrape_fresh(url))
                contributed = counter_by_pid(metrics_dir, "fanout_http_requests_total", labels)
                if len(scrapes) >= 3 and len(contributed) == 2:
                    break
        finally:
            stop.set()
            await asyncio.gather(*load)
        after = await scrape_fresh(url)
        contributed = counter_by_pid(metrics_dir, "fanout_http_requests_total", labels)
    sent = statuses[200]
    assert statuses == {200: sent}
    assert len(scrapes) >= 3
    for earlier, later in itertools.pairwise(scrapes):
        assert earlier[REQUESTS] < later[REQUESTS], (earlier[REQUESTS], later[REQUESTS])
        assert earlier[UPSTREAM_OK] < later[UPSTREAM_OK], (earlier[UPSTREAM_OK], later[UPSTREAM_OK])
    # Both worker processes served part of the load, and a scrape adds them up.
    assert len(contributed) == 2 and all(count > 0 for count in contributed.values()), contributed
    assert sum(contributed.values()) == sent
    assert after[REQUESTS] == sent
    assert after[UPSTREAM_OK] == after[UPSTREAM_SECONDS] == 2 * sent  # users and orders


async def _scrape_until(
    pinned: Pinned, condition: Callable[[Samples], bool], seconds: float = 20.0
) -> Samples:
    """Scrape on ``pinned`` until ``condition`` holds (or ``seconds`` pass); the last scrape."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        found = await pinned.scrape()
        if condition(found) or loop.time() > deadline:
            return found
        await asyncio.sleep(0.05)


def _pool(found: Samples) -> tuple[float, float, float, float]:
    return found.get(THREADS, -1), found[RUNNING], found.get(QUEUED, -1), found[IN_FLIGHT]


@pytest.mark.timeout(180)
async def test_any_worker_reports_the_thread_pool_and_requests_of_every_worker(
    fault: FaultUpstream, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    env = _env(fault, tmp_path, FANOUT_SYNC_THREADS="1", **{RELEASE_ENV: str(release)})
    async with (
        served_workers(env, workers=2) as url,
        pinned_by_worker(url, workers=2, per_worker=2) as by_worker,
    ):
        holder, scraper = by_worker.values()
        idle = await _scrape_until(scraper[0], lambda found: _pool(found) == (2, 0, 0, 1))
        # 2 workers of 1 thread each, nothing running; in flight: the scrape itself.
        assert _pool(idle) == (2, 0, 0, 1)
        # Two plain def views held on the other worker: one runs, one waits for the thread.
        holds = [asyncio.create_task(pinned.session.get("/test/hold")) for pinned in holder]
        try:
            busy = await _scrape_until(scraper[0], lambda found: _pool(found) == (2, 1, 1, 3))
            assert _pool(busy) == (2, 1, 1, 3)
        finally:
            release.touch()
            answers = await asyncio.gather(*holds)
        assert [answer.status for answer in answers] == [200, 200]
        for answer in answers:
            assert (await answer.json())["pid"] == holder[0].pid
            answer.release()
        done = await _scrape_until(scraper[0], lambda found: _pool(found) == (2, 0, 0, 1))
        assert _pool(done) == (2, 0, 0, 1)


def _names(directory: Path) -> set[str]:
    return {path.name for path in directory.iterdir()}


#: A process that writes metrics into the directory, as a worker would, then exits.
DEAD_WORKER = """
from app import create_app
from fanout.core.circuit import CircuitState
from fanout.process.metrics import metrics

found = metrics(create_app())
found.observe_circuit("fault", CircuitState.OPEN)
found.in_flight.inc(3)
found.sync_threads.set(64)
found.child(found.requests, "/dead", "GET", "200").inc()
"""


async def test_a_dead_process_gauges_leave_the_scrape_and_its_counters_stay(
    fault: FaultUpstream, tmp_path: Path
) -> None:
    env = _env(fault, tmp_path)
    metrics_dir = Path(env["PROMETHEUS_MULTIPROC_DIR"])
    process, url = await start_gateway(env)
    try:
        async with aiohttp.ClientSession(url) as client:
            async with client.get("/profile/1") as response:
                assert response.status == 200
            # A worker that had the circuit open and requests in flight, and died.
            dead = await asyncio.create_subprocess_exec(
                sys.executable, "-c", DEAD_WORKER, cwd=ROOT, env=env
            )
            assert await asyncio.wait_for(dead.wait(), timeout=60) == 0
            written = _names(metrics_dir)
            assert any(name.startswith("gauge_") and name.endswith(".db") for name in written)
            async with client.get("/metrics") as response:
                found = samples(await response.text())
            left = _names(metrics_dir)
    finally:
        process.terminate()
        await process.wait()
    assert found[("fanout_circuit_state", (("upstream", "fault"),))] == 0  # the live one: closed
    assert found[IN_FLIGHT] == 1  # the scrape, not the dead process's three
    assert found[THREADS] == 64  # the live worker's pool only
    # Counters of finished processes stay: a counter never goes down.
    dead_route = (
        "fanout_http_requests_total",
        (("method", "GET"), ("route", "/dead"), ("status", "200")),
    )
    assert found[dead_route] == 1
    gone = written - left
    assert gone and all(name.startswith("gauge_") for name in gone), (written, left)


@pytest.mark.timeout(180)
async def test_active_jobs_are_what_the_store_holds_whichever_worker_ran_them(
    fault: FaultUpstream, tmp_path: Path
) -> None:
    env = _env(
        fault,
        tmp_path,
        FANOUT_JOB_STORE=f"sqlite:///{tmp_path / 'jobs.db'}",
        FANOUT_JOB_LEASE_SECONDS="1.0",
        FANOUT_JOB_POLL_SECONDS="0.1",
    )
    running = ("fanout_jobs_active", (("kind", "batch"), ("status", "running")))
    interrupted = ("fanout_jobs_finished_total", (("kind", "batch"), ("status", "interrupted")))
    async with (
        served_workers(env, workers=2) as url,
        pinned_by_worker(url, workers=2, per_worker=1) as by_worker,
    ):
        (owner,), (other,) = by_worker.values()
        batch = {"upstream": "fault", "path": "/json?ms={item}", "items": [200] * 50}
        async with owner.session.post("/jobs/batch", json={**batch, "concurrency": 1}) as response:
            assert response.status == 202
            job = await response.json()
        started = await _scrape_until(other, lambda found: found.get(running) == 1)
        assert started[running] == 1
        # The owner's loop stops past its lease: the other worker takes the job
        # for lost and marks it interrupted; the owner, when it wakes, only
        # finds its job changed elsewhere.
        async with owner.session.get("/test/stall", params={"seconds": "4"}) as response:
            assert response.status == 200
        async with other.session.get(f"/jobs/{job['id']}") as response:
            assert (await response.json())["status"] == "interrupted"
        # Both workers' scrapes agree with the store.
        for pinned in (owner, other):
            found = await pinned.scrape()
            assert found[running] == 0
            assert found[interrupted] == 1
