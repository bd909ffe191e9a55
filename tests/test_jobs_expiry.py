"""10,000 finished jobs with 10 KB results, end to end in memory, on SQLite and on Redis.

The jobs run through the served app's own registry (``submit``), and its own
maintenance loop sweeps them once their result_ttl has passed: nothing here
calls ``sweep()``. The store and the process's memory return to about where
they started, and an expired id answers 404 through HTTP.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from fanout.jobs.memory_store import MemoryStore
from fanout.jobs.model import StoredResponse
from fanout.jobs.registry import JobContext, JobRegistry
from fanout.jobs.sqlite_store import WAL_SIZE_LIMIT
from fanout.jobs.store import JobStore
from handlers.resources import job_registry
from tests.gateway_serving import gateway_serving
from tests.redis_server import _keys, delete_prefix, new_prefix

logger = logging.getLogger(__name__)

JOBS = 10_000
RESULT_BYTES = 10 * 1024
#: Long enough for all 10,000 to be stored at once on a loaded machine:
#: writing them to SQLite or Redis took 10.7 s on a quiet one, and past 20 s
#: with two busy loops beside the suite (the first ones had expired before
#: the last); to memory, 0.8 s.
RESULT_TTL = 40.0
MEMORY_RESULT_TTL = 10.0
MB = 1024 * 1024

#: What a store holds: bytes of its database file and of its write-ahead log
#: (SQLite), and how many records (SQLite rows) or keys (Redis) it has.
Size = dict[str, int]


@dataclass
class Backend:
    """A store under test and how to weigh it."""

    url: str
    result_ttl: float
    #: Weighs the store, given the served registry's store object.
    size: Callable[[JobStore], Awaitable[Size]]


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """The process's memory, a SQLite file, or a key prefix on the real Redis (cleaned up after)."""
    if request.param == "memory":

        async def records(store: JobStore) -> Size:
            assert isinstance(store, MemoryStore)
            return {"count": len(store._records)}

        yield Backend("memory://", MEMORY_RESULT_TTL, records)
        return
    if request.param == "sqlite":
        path = tmp_path / "jobs.db"

        async def on_disk(_store: JobStore) -> Size:
            return await asyncio.to_thread(_weigh_sqlite, path)

        yield Backend(f"sqlite:///{path}", RESULT_TTL, on_disk)
        return
    redis_url: str = request.getfixturevalue("redis_url")
    prefix = new_prefix()

    async def keys(_store: JobStore) -> Size:
        return {"count": len(await _keys(redis_url, prefix))}

    yield Backend(f"{redis_url}?prefix={prefix}", RESULT_TTL, keys)
    await delete_prefix(redis_url, prefix)


def _weigh_sqlite(path: Path) -> Size:
    wal = Path(f"{path}-wal")
    # Read-only, beside the store's own connection (WAL lets both read).
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        (rows,) = conn.execute("SELECT count(*) FROM jobs").fetchone()
    return {
        "db": path.stat().st_size,
        "wal": wal.stat().st_size if wal.exists() else 0,
        "count": rows,
    }


def _rss() -> int:
    """This process's resident memory, in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _python_blocks() -> int:
    """Live blocks of Python's allocator, after a full collection."""
    gc.collect()
    return sys.getallocatedblocks()


async def _quick(context: JobContext) -> StoredResponse:
    # A result of its own per job (10 KB, random): a leak of results would show.
    body = os.urandom(RESULT_BYTES - 32) + context.job_id.encode()
    return StoredResponse(200, (("Content-Type", "application/octet-stream"),), body)


async def _run_jobs(registry: JobRegistry, count: int) -> list[str]:
    ids: list[str] = []
    for _ in range(count // 100):
        started = await asyncio.gather(*(registry.submit("bulk", _quick) for _ in range(100)))
        ids += [record.id for record in started]
    await registry.drained()
    return ids


_CONFIG = """
[jobs]
max_running = 200
max_pending = {jobs}
result_ttl = {result_ttl}
"""


@pytest.mark.timeout(240)
async def test_ten_thousand_finished_jobs_leave_nothing_after_their_ttl(
    backend: Backend, tmp_path: Path
) -> None:
    settings = {"JOB_STORE": backend.url, "JOB_SWEEP_SECONDS": 0.5, "JOB_POLL_SECONDS": 0.2}
    config = _CONFIG.format(jobs=JOBS, result_ttl=backend.result_ttl)
    async with gateway_serving(config, tmp_path, settings) as gateway:
        registry = job_registry(gateway.app)
        # A first round builds what is built once (connection pool, caches),
        # so that the baseline has it. Not measured: deleted, not left to expire.
        for job_id in await _run_jobs(registry, 200):
            assert await registry.store.delete(job_id)
        store_before, blocks_before, rss_before = (
            await backend.size(registry.store),
            _python_blocks(),
            _rss(),
        )

        began = time.monotonic()
        ids = await _run_jobs(registry, JOBS)
        written_in = time.monotonic() - began
        store_peak, rss_peak = await backend.size(registry.store), _rss()
        sample = ids[:: JOBS // 20]
        for job_id in sample:
            async with gateway.client.get(f"/jobs/{job_id}") as response:
                assert response.status == 200
                assert (await response.json())["status"] == "succeeded"
        del ids

        # Nothing is done here but waiting: the registry's maintenance sweeps.
        await _until_empty(backend, registry.store)
        await asyncio.sleep(1.0)  # a sweep or two more, their space reclaim included
        store_after, blocks_after, rss_after = (
            await backend.size(registry.store),
            _python_blocks(),
            _rss(),
        )

        for job_id in sample:
            for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/result"):
                async with gateway.client.get(path) as response:
                    assert response.status == 404, path
                    assert response.content_type == "application/problem+json"

    figures = {
        "written_in_s": round(written_in, 1),
        "store": [store_before, store_peak, store_after],
        "rss_mb": [round(v / MB, 1) for v in (rss_before, rss_peak, rss_after)],
        "python_blocks": [blocks_before, blocks_after],
    }
    logger.info("expiry figures (before, peak, after) %s: %s", backend.url[:6], figures)
    assert store_peak["count"] >= JOBS, figures  # all 10,000 were stored at once
    if "db" in store_peak:
        assert store_peak["db"] > JOBS * RESULT_BYTES, figures
        # The database file gives the space back; the WAL keeps at most its
        # fixed cap (journal_size_limit), whatever the number of jobs.
        assert store_after["db"] - store_before["db"] < 2 * MB, figures
        assert store_after["wal"] <= WAL_SIZE_LIMIT, figures
    assert store_after["count"] == store_before["count"] == 0, figures
    # The process keeps nothing per job (the results alone were 100 MB).
    assert rss_after - rss_before < 30 * MB, figures
    assert blocks_after - blocks_before < JOBS, figures


async def _until_empty(backend: Backend, store: JobStore) -> None:
    for _ in range(int((backend.result_ttl + 60) / 0.25)):
        if (await backend.size(store))["count"] == 0:
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"the store still holds {await backend.size(store)}")
