"""The supervisor's parts in one process: backoff, the stream cut by a stop, the job rescue."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from fanout.jobs.memory_store import MemoryStore
from fanout.jobs.model import JobRecord, JobStatus, new_job_id
from fanout.process.rescue import JobStoreRef, interrupt_jobs
from fanout.process.stopping import until_set
from fanout.process.supervisor import MAX_BACKOFF_SECONDS, backoff_seconds


def test_replacements_that_keep_failing_wait_longer_and_longer_up_to_a_bound() -> None:
    delays = [backoff_seconds(n) for n in range(12)]
    assert delays[0] == 0.0  # a worker that served and died: replaced at once
    assert delays[1:4] == [0.5, 1.0, 2.0]
    assert delays == sorted(delays) and delays[-1] == MAX_BACKOFF_SECONDS


async def test_a_stream_ends_at_once_when_the_stop_is_set_and_its_source_is_closed() -> None:
    closed = asyncio.Event()

    async def endless() -> AsyncIterator[int]:
        try:
            n = 0
            while True:
                yield n
                n += 1
                await asyncio.sleep(3600)
        finally:
            closed.set()

    stop = asyncio.Event()
    seen = []
    async for item in until_set(endless(), stop):
        seen.append(item)
        asyncio.get_running_loop().call_later(0.05, stop.set)
    assert seen == [0]
    assert closed.is_set()


async def test_without_a_stop_event_a_stream_is_its_source() -> None:
    async def three() -> AsyncIterator[int]:
        for n in range(3):
            yield n

    assert [item async for item in until_set(three(), None)] == [0, 1, 2]


def _record(worker: str, status: JobStatus) -> JobRecord:
    now = time.time()
    return JobRecord(
        id=new_job_id(),
        kind="batch",
        owner=None,
        status=status,
        created_at=now,
        worker=worker,
        lease_until=now + 60,
    )


async def test_only_the_dead_workers_active_jobs_are_interrupted() -> None:
    store = MemoryStore()
    await store.open()
    dead_running = await store.create(_record("dead", JobStatus.RUNNING))
    dead_pending = await store.create(_record("dead", JobStatus.PENDING))
    alive = await store.create(_record("alive", JobStatus.RUNNING))
    assert await interrupt_jobs(store, {"dead"}, ttl=60) == 2
    for record, status in (
        (dead_running, JobStatus.INTERRUPTED),
        (dead_pending, JobStatus.INTERRUPTED),
        (alive, JobStatus.RUNNING),
    ):
        stored = await store.get(record.id)
        assert stored is not None and stored.status == status
    # Their leases had not lapsed: no worker would have marked them for a minute.
    assert JobStoreRef("memory://", 60).shared is False
    assert JobStoreRef("redis://127.0.0.1:6379/0", 60).shared is True
    await store.close()
