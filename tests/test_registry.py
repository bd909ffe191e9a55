"""The job registry driven from plain asyncio, on the memory store."""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from jobs import model
from jobs.memory_store import MemoryStore
from jobs.model import JobStatus, StoredResponse
from jobs.registry import JobContext, JobFailure, JobLimits, JobRegistry, QueueFull
from jobs.sqlite_store import SqliteStore

FAST = JobLimits(lease_seconds=0.5, poll_seconds=0.05, sweep_seconds=0.1, result_ttl=60)


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    """An opened memory store."""
    opened = MemoryStore()
    await opened.open()
    yield opened
    await opened.close()


def _ok(body: bytes = b"{}") -> StoredResponse:
    return StoredResponse(200, (("Content-Type", "application/json"),), body)


async def _final(registry: JobRegistry, job_id: str) -> JobStatus:
    async for record in registry.watch(job_id, seconds=10):
        if record.status.final:
            return record.status
    raise AssertionError("not final")


async def test_results_failures_and_problems_are_recorded(store: MemoryStore) -> None:
    registry = JobRegistry(store, FAST)
    registry.start()

    async def works(context: JobContext) -> StoredResponse:
        await context.progress(1, 1, "done")
        return _ok(b'{"ok": true}')

    async def raises(context: JobContext) -> StoredResponse:
        raise RuntimeError("secret detail")

    async def refuses(context: JobContext) -> StoredResponse:
        raise JobFailure({"type": "about:blank", "title": "Nope", "status": 422})

    ids = [(await registry.submit("k", body)).id for body in (works, raises, refuses)]
    assert [await _final(registry, i) for i in ids] == [
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.FAILED,
    ]
    done, crashed, refused = [await store.get(i) for i in ids]
    assert done is not None and done.result == _ok(b'{"ok": true}')
    assert done.progress.message == "done"
    assert crashed is not None and crashed.error is not None
    assert crashed.error["status"] == 500 and "secret detail" not in str(crashed.error)
    assert refused is not None and refused.error is not None and refused.error["title"] == "Nope"
    await registry.close(1)


async def test_a_crashed_workers_jobs_are_interrupted_by_another(store: MemoryStore) -> None:
    crashed = JobRegistry(store, FAST, worker_id="crashed")
    # The crashed worker's jobs: stored, never renewed (it never starts maintenance).
    forever = asyncio.Event()

    async def waits(context: JobContext) -> StoredResponse:
        await forever.wait()
        return _ok()

    ids = [(await crashed.submit("k", waits)).id for _ in range(5)]
    await asyncio.sleep(0.05)
    # The crashed worker never renews its leases (no maintenance loop ran):
    # as after a SIGKILL, only the store knows of its jobs.
    survivor = JobRegistry(store, FAST, worker_id="survivor")
    survivor.start()
    assert [await _final(survivor, i) for i in ids] == [JobStatus.INTERRUPTED] * 5
    await survivor.close(1)
    forever.set()
    await crashed.close(1)


async def test_a_cancel_recorded_by_another_worker_reaches_the_running_job(
    store: MemoryStore,
) -> None:
    runner = JobRegistry(store, FAST, worker_id="runner")
    other = JobRegistry(store, FAST, worker_id="other")
    runner.start()
    other.start()
    stopped = asyncio.Event()

    async def long(context: JobContext) -> StoredResponse:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stopped.set()
            raise
        return _ok()

    record = await runner.submit("k", long)
    await asyncio.sleep(0.1)
    latest = await other.cancel(record)
    assert latest.status is JobStatus.CANCELLED
    assert stopped.is_set()
    await runner.close(1)
    await other.close(1)


async def test_finished_jobs_are_swept_and_memory_returns(store: MemoryStore) -> None:
    limits = JobLimits(
        max_running=200, max_pending=20000, poll_seconds=0.05, sweep_seconds=0.05, result_ttl=0.5
    )
    registry = JobRegistry(store, limits)
    registry.start()
    payload = b"x" * 10_240

    async def quick(context: JobContext) -> StoredResponse:
        return _ok(payload + context.job_id.encode())

    gc.collect()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        ids = [(await registry.submit("k", quick)).id for _ in range(10_000)]
        await registry.drained()
        peak_records = tracemalloc.get_traced_memory()[0]
        assert peak_records - baseline > 10_000 * 10_240  # the results were really held
        await asyncio.sleep(limits.result_ttl + 3 * limits.sweep_seconds + 0.2)
        assert await store.get(ids[0]) is None and await store.get(ids[-1]) is None
        del ids
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # Back to about where it started: under 5% of what 10,000 results took.
    assert after - baseline < (peak_records - baseline) * 0.05, (baseline, peak_records, after)
    await registry.close(1)


async def test_a_worker_whose_clock_runs_ahead_does_not_interrupt_a_live_job(
    store: MemoryStore,
) -> None:
    # A 1 s lease (not FAST's 0.5 s): renewals keep 0.6 s of slack on a loaded machine.
    limits = replace(FAST, lease_seconds=1.0)
    runner = JobRegistry(store, limits, worker_id="runner")
    runner.start()
    # Another worker's clock runs 1.4 s ahead: more than a lease, less than two.
    ahead = JobRegistry(store, limits, worker_id="ahead", clock=lambda: time.time() + 1.4)
    ahead.start()
    done = asyncio.Event()

    async def long(context: JobContext) -> StoredResponse:
        await done.wait()
        return _ok()

    record = await runner.submit("k", long)
    await asyncio.sleep(3.0)  # three leases
    current = await store.get(record.id)
    assert current is not None and current.status is JobStatus.RUNNING
    done.set()
    assert await _final(runner, record.id) is JobStatus.SUCCEEDED
    await ahead.close(1)
    await runner.close(1)


async def test_a_job_interrupted_elsewhere_is_stopped_by_its_worker(store: MemoryStore) -> None:
    runner = JobRegistry(store, FAST, worker_id="runner")
    runner.start()
    stopped = asyncio.Event()

    async def long(context: JobContext) -> StoredResponse:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stopped.set()
            raise
        return _ok()

    record = await runner.submit("k", long)
    await asyncio.sleep(0.1)
    running = await store.get(record.id)
    assert running is not None and running.status is JobStatus.RUNNING
    # As another worker would after judging the lease lapsed:
    await store.replace(
        model.interrupt(running, "judged lapsed", now=time.time(), ttl=60),
        expected=JobStatus.RUNNING,
    )
    await asyncio.wait_for(stopped.wait(), timeout=2)  # within a few polls
    await runner.drained()
    assert runner.running_here == 0
    final = await store.get(record.id)
    assert final is not None and final.status is JobStatus.INTERRUPTED
    await runner.close(1)


async def test_concurrent_starts_never_pass_the_bounds(tmp_path: Path) -> None:
    sqlite = SqliteStore(str(tmp_path / "jobs.db"))  # its writes really suspend
    await sqlite.open()
    registry = JobRegistry(sqlite, JobLimits(max_running=1, max_pending=1, poll_seconds=0.05))
    registry.start()
    forever = asyncio.Event()

    async def waits(context: JobContext) -> StoredResponse:
        await forever.wait()
        return _ok()

    outcomes = await asyncio.gather(
        *(registry.submit("k", waits) for _ in range(10)), return_exceptions=True
    )
    assert sum(isinstance(o, QueueFull) for o in outcomes) == 8
    assert registry.running_here == 2
    forever.set()
    await registry.close(1)
    await sqlite.close()
