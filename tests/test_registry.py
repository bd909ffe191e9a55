"""The job registry driven from plain asyncio, on the memory store."""

from __future__ import annotations

import asyncio
import gc
import logging
import sqlite3
import time
import tracemalloc
from collections.abc import AsyncIterator, Sequence
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fanout.jobs import model
from fanout.jobs.memory_store import MemoryStore
from fanout.jobs.model import JobRecord, JobStatus, Progress, StoredResponse
from fanout.jobs.redis_store import RedisStore
from fanout.jobs.registry import (
    IdempotencyConflict,
    JobContext,
    JobFailure,
    JobLimits,
    JobRegistry,
    QueueFull,
    RegistryClosed,
)
from fanout.jobs.sqlite_store import SqliteStore
from fanout.jobs.store import JobStore, StoreUnavailable
from tests.redis_server import delete_prefix, new_prefix

logger = logging.getLogger(__name__)

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
    logger.info("expiry figures memory (traced bytes): %s", (baseline, peak_records, after))
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


class FlakyStore(MemoryStore):
    """The memory store with an outage switch: while down, every call fails."""

    def __init__(self) -> None:
        super().__init__()
        self._down_until = 0.0

    def go_down(self, seconds: float) -> None:
        """Fail every call for the next ``seconds``."""
        self._down_until = time.monotonic() + seconds

    @property
    def down(self) -> bool:
        """True during the outage."""
        return time.monotonic() < self._down_until

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("outage (test)")

    async def create(self, record: JobRecord) -> JobRecord:
        self._check()
        return await super().create(record)

    async def get(self, job_id: str) -> JobRecord | None:
        self._check()
        return await super().get(job_id)

    async def replace(
        self, record: JobRecord, *, expected: JobStatus, lease_before: float | None = None
    ) -> JobRecord:
        self._check()
        return await super().replace(record, expected=expected, lease_before=lease_before)

    async def renew_leases(self, worker: str, job_ids: Sequence[str], until: float) -> None:
        self._check()
        await super().renew_leases(worker, job_ids, until)

    async def cancel_requested(self, job_ids: Sequence[str]) -> set[str]:
        self._check()
        return await super().cancel_requested(job_ids)

    async def lapsed(self, now: float) -> list[JobRecord]:
        self._check()
        return await super().lapsed(now)

    async def sweep(self, now: float) -> int:
        self._check()
        return await super().sweep(now)


async def _after_outage(store: FlakyStore) -> None:
    # The outage is a span of time, with no event to wait for.
    while store.down:  # noqa: ASYNC110
        await asyncio.sleep(0.02)


async def test_a_store_outage_during_progress_does_not_fail_the_job() -> None:
    store = FlakyStore()
    # A lease longer than the outage: the job is never judged lapsed meanwhile.
    registry = JobRegistry(store, replace(FAST, lease_seconds=5.0))
    registry.start()

    async def body(context: JobContext) -> StoredResponse:
        await context.progress(1, 3, "one")
        store.go_down(0.6)
        await asyncio.sleep(JobContext.PROGRESS_INTERVAL + 0.05)  # past the write throttle
        await context.progress(2, 3, "two")  # not stored: dropped, the job goes on
        await _after_outage(store)
        return _ok(b'{"done": 2}')

    record = await registry.submit("k", body)
    await registry.drained()
    await _after_outage(store)
    final = await store.get(record.id)
    assert final is not None and final.status is JobStatus.SUCCEEDED
    assert final.result == _ok(b'{"done": 2}')
    # The final write carried the progress the outage dropped.
    assert final.progress == Progress(2, 3, "two")
    await registry.close(1)


async def test_the_final_write_is_retried_while_the_lease_holds() -> None:
    store = FlakyStore()
    registry = JobRegistry(store, replace(FAST, lease_seconds=5.0))
    registry.start()

    async def body(context: JobContext) -> StoredResponse:
        store.go_down(1.0)  # the store fails from here until after the job is done
        return _ok(b'{"computed": true}')

    record = await registry.submit("k", body)
    await registry.drained()  # the task ends only once its outcome is written
    assert not store.down
    final = await store.get(record.id)
    assert final is not None and final.status is JobStatus.SUCCEEDED
    assert final.result == _ok(b'{"computed": true}')
    await registry.close(1)


class SlowEarlyProgress(MemoryStore):
    """Progress writes short of the total take longer: they finish after later ones."""

    async def replace(
        self, record: JobRecord, *, expected: JobStatus, lease_before: float | None = None
    ) -> JobRecord:
        progress = record.progress
        if record.status is JobStatus.RUNNING and progress.done < (progress.total or 0):
            await asyncio.sleep(0.3)
        return await super().replace(record, expected=expected, lease_before=lease_before)


class SlowEarlyProgressRedis(RedisStore):
    """The same on a real Redis."""

    async def replace(
        self, record: JobRecord, *, expected: JobStatus, lease_before: float | None = None
    ) -> JobRecord:
        progress = record.progress
        if record.status is JobStatus.RUNNING and progress.done < (progress.total or 0):
            await asyncio.sleep(0.3)
        return await super().replace(record, expected=expected, lease_before=lease_before)


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_progress_never_goes_backwards(backend: str, request: pytest.FixtureRequest) -> None:
    slow: JobStore
    key_prefix = new_prefix()
    if backend == "redis":
        redis_url: str = request.getfixturevalue("redis_url")
        slow = SlowEarlyProgressRedis(redis_url, prefix=key_prefix)
    else:
        slow = SlowEarlyProgress()
    await slow.open()
    registry = JobRegistry(slow, FAST)
    registry.start()

    async def body(context: JobContext) -> StoredResponse:
        # Two items of a pool finishing together: the earlier report's write
        # is the slower one.
        await asyncio.gather(context.progress(9, 10, "nine"), context.progress(10, 10, "ten"))
        return _ok()

    try:
        record = await registry.submit("k", body)
        assert await _final(registry, record.id) is JobStatus.SUCCEEDED
        final = await slow.get(record.id)
        assert final is not None and final.progress == Progress(10, 10, "ten")
    finally:
        await registry.close(1)
        await slow.close()
        if backend == "redis":
            await delete_prefix(redis_url, key_prefix)


def _task_of(job_id: str) -> asyncio.Task[Any]:
    (task,) = [t for t in asyncio.all_tasks() if t.get_name() == f"job-{job_id}"]
    return task


@pytest.mark.parametrize("how", ["cancel", "shutdown"])
async def test_a_stopped_jobs_task_ends_cancelled(store: MemoryStore, how: str) -> None:
    registry = JobRegistry(store, FAST)
    registry.start()
    started = asyncio.Event()

    async def long(context: JobContext) -> StoredResponse:
        started.set()
        await asyncio.sleep(30)
        return _ok()

    record = await registry.submit("k", long)
    task = _task_of(record.id)
    await started.wait()
    if how == "cancel":
        assert (await registry.cancel(record)).status is JobStatus.CANCELLED
    else:
        await registry.close(0)
    await asyncio.wait([task])
    # CancelledError was re-raised, not swallowed into a normal return.
    assert task.cancelled()
    final = await store.get(record.id)
    expected = JobStatus.CANCELLED if how == "cancel" else JobStatus.INTERRUPTED
    assert final is not None and final.status is expected
    await registry.close(1)


async def test_a_repeated_start_on_a_full_worker_gets_its_job(store: MemoryStore) -> None:
    registry = JobRegistry(store, replace(FAST, max_running=1, max_pending=0))
    registry.start()
    forever = asyncio.Event()

    async def waits(context: JobContext) -> StoredResponse:
        await forever.wait()
        return _ok()

    first = await registry.submit("k", waits, params={"n": 1}, owner="a", idempotency_key="key")
    with pytest.raises(QueueFull):
        await registry.submit("k", waits, params={"n": 2}, owner="a")
    again = await registry.submit("k", waits, params={"n": 1}, owner="a", idempotency_key="key")
    assert again.id == first.id
    with pytest.raises(QueueFull):  # the key is per owner
        await registry.submit("k", waits, params={"n": 1}, owner="b", idempotency_key="key")
    with pytest.raises(IdempotencyConflict):  # another request under the same key
        await registry.submit("k", waits, params={"n": 9}, owner="a", idempotency_key="key")
    assert registry.running_here == 1
    forever.set()
    await registry.close(1)


async def test_a_key_reused_for_another_request_is_a_conflict(store: MemoryStore) -> None:
    registry = JobRegistry(store, FAST)
    registry.start()
    first = await registry.submit("k", _quick, params={"n": 1}, idempotency_key="key")
    with pytest.raises(IdempotencyConflict):
        await registry.submit("other-kind", _quick, params={"n": 1}, idempotency_key="key")
    with pytest.raises(IdempotencyConflict):
        await registry.submit("k", _quick, params={"n": 2}, idempotency_key="key")
    same = await registry.submit("k", _quick, params={"n": 1}, idempotency_key="key")
    assert same.id == first.id
    page = await store.list_jobs(owner=None)
    assert [r.id for r in page.records] == [first.id]  # nothing else was started
    await registry.close(1)


async def _quick(context: JobContext) -> StoredResponse:
    return _ok()


async def test_a_job_deleted_while_it_runs_elsewhere_is_stopped(store: MemoryStore) -> None:
    # The runner's maintenance first runs after the delete: as when its poll
    # comes later than the deleting worker's wait for the cancel.
    # A lease long enough that the runner is not taken for dead meanwhile.
    limits = replace(FAST, lease_seconds=10.0)
    runner = JobRegistry(store, limits, worker_id="runner")
    deleter = JobRegistry(store, limits, worker_id="deleter")
    stopped = asyncio.Event()

    async def long(context: JobContext) -> StoredResponse:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stopped.set()
            raise
        return _ok()

    record = await runner.submit("k", long)
    await asyncio.sleep(0.05)
    # What DELETE /jobs/<id> does on another worker: ask the cancel, wait, forget.
    latest = await deleter.cancel(record)
    assert not latest.status.final  # the runner has not acted yet
    assert await store.delete(record.id)
    runner.start()
    await asyncio.wait_for(stopped.wait(), timeout=5)
    await runner.drained()
    assert await store.get(record.id) is None  # not brought back by the stopped job
    await runner.close(1)
    await deleter.close(1)


async def test_close_waits_for_a_submit_still_storing_its_job(tmp_path: Path) -> None:
    sqlite = SqliteStore(str(tmp_path / "jobs.db"), busy_timeout=30)
    await sqlite.open()
    registry = JobRegistry(sqlite, FAST)
    registry.start()
    forever = asyncio.Event()

    async def waits(context: JobContext) -> StoredResponse:
        await forever.wait()
        return _ok()

    try:
        with closing(sqlite3.connect(sqlite.path, isolation_level=None)) as blocker:
            blocker.execute("BEGIN IMMEDIATE")  # the submit's write waits for this lock
            submitting = asyncio.create_task(registry.submit("k", waits))
            for _ in range(5):
                await asyncio.sleep(0.01)
            assert not submitting.done()
            closing_task = asyncio.create_task(registry.close(0.5))
            await asyncio.sleep(0.05)
            blocker.execute("COMMIT")
        record = await submitting
        await closing_task
        # The job was seen by close(): interrupted after the grace, not left running.
        assert registry.running_here == 0
        final = await sqlite.get(record.id)
        assert final is not None and final.status is JobStatus.INTERRUPTED
        with pytest.raises(RegistryClosed):
            await registry.submit("k", waits)
    finally:
        forever.set()
        await sqlite.close()
