"""SqliteStore against the store contract, plus what only a shared file can get wrong."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import time
import types
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest

from fanout.jobs.memory_store import MemoryStore
from fanout.jobs.model import JobRecord, JobStatus, StoredResponse, new_job_id, start
from fanout.jobs.sqlite_store import SqliteStore
from fanout.jobs.store import JobStore, StaleRecord, StoreUnavailable
from fanout.jobs.store_factory import open_store_from_url, sqlite_path
from tests.store_contract import HOUR, StoreContract, finished, job

MB = 1024 * 1024


class TestSqliteStore(StoreContract):
    """The contract, on a file in tmp_path."""

    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[JobStore]:
        store = SqliteStore(str(tmp_path / "jobs.db"))
        await store.open()
        yield store
        await store.close()


@pytest.fixture
async def opened(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """An opened SqliteStore in a directory that did not exist yet."""
    store = SqliteStore(str(tmp_path / "state" / "fanout" / "jobs.db"))
    await store.open()
    yield store
    await store.close()


def on_disk(path: str, *, wal: bool = True) -> int:
    """Bytes the store's files take: the database and (unless told) its write-ahead log."""
    files = (path, path + "-wal") if wal else (path,)
    return sum(os.path.getsize(p) for p in files if os.path.exists(p))


async def test_creates_the_parent_directory(opened: SqliteStore) -> None:
    assert on_disk(opened.path, wal=False) > 0
    await opened.ping()


async def test_wal_mode_and_incremental_vacuum_are_on(opened: SqliteStore) -> None:
    with closing(sqlite3.connect(opened.path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        # 2 = INCREMENTAL: sweep can hand pages back without a full VACUUM.
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2


async def test_records_survive_a_reopen(opened: SqliteStore) -> None:
    record = await opened.create(finished(HOUR, params={"n": [1, 2]}))
    await opened.close()
    again = SqliteStore(opened.path)
    await again.open()
    try:
        assert await again.get(record.id) == record
    finally:
        await again.close()
    await opened.open()
    assert await opened.get(record.id) == record


async def test_two_stores_on_one_file_share_writes_and_the_cas(opened: SqliteStore) -> None:
    # Two Hypercorn workers: two processes, two connections, one file.
    other = SqliteStore(opened.path)
    await other.open()
    try:
        record = await opened.create(job(idempotency_key="k"))
        assert await other.get(record.id) == record
        assert await other.create(job(idempotency_key="k")) == record

        now = time.time()
        mine = start(record, worker="w1", now=now, lease_until=now + 30)
        theirs = start(record, worker="w2", now=now, lease_until=now + 30)
        outcomes = await asyncio.gather(
            *(
                store.replace(attempt, expected=JobStatus.PENDING)
                for _ in range(10)
                for store, attempt in ((opened, mine), (other, theirs))
            ),
            return_exceptions=True,
        )
        winners = [o for o in outcomes if isinstance(o, JobRecord)]
        assert len(winners) == 1
        assert sum(isinstance(o, StaleRecord) for o in outcomes) == 19
        assert await opened.get(record.id) == await other.get(record.id) == winners[0]

        assert await other.request_cancel(record.id) is not None
        assert await opened.cancel_requested([record.id]) == {record.id}
        assert await opened.delete(record.id)
        assert await other.get(record.id) is None
    finally:
        await other.close()


async def test_the_loop_runs_while_a_store_call_waits_on_a_lock(tmp_path: Path) -> None:
    # Deterministic, not timed: the create waits inside SQLite for a lock that
    # only the loop itself lets go. A store working on the loop's thread would
    # hold the loop for the whole busy timeout, then fail the create.
    store = SqliteStore(str(tmp_path / "jobs.db"), busy_timeout=30)
    await store.open()
    try:
        with closing(sqlite3.connect(store.path, isolation_level=None)) as blocker:
            blocker.execute("BEGIN EXCLUSIVE")
            creating = asyncio.create_task(store.create(job()))
            for _ in range(5):
                await asyncio.sleep(0.01)
            assert not creating.done()  # waiting in SQLite, yet the loop turned
            blocker.execute("COMMIT")
            record = await creating
        assert await store.get(record.id) == record
    finally:
        await store.close()


async def test_a_burst_of_concurrent_creates_all_land(opened: SqliteStore) -> None:
    created = await asyncio.gather(*(opened.create(job()) for _ in range(500)))
    assert len({record.id for record in created}) == 500
    assert len((await opened.list_jobs(owner="a", limit=1000)).records) == 500


async def test_a_locked_file_is_unavailable(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "jobs.db"), busy_timeout=0.1)
    await store.open()
    try:
        record = await store.create(job())
        with closing(sqlite3.connect(store.path, isolation_level=None)) as blocker:
            blocker.execute("BEGIN EXCLUSIVE")
            with pytest.raises(StoreUnavailable, match="locked"):
                await store.create(job())
            # Readers are not blocked by a writer in WAL mode.
            assert await store.get(record.id) == record
            blocker.execute("ROLLBACK")
        await store.create(job())
    finally:
        await store.close()


async def test_an_unreachable_path_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    store = SqliteStore(str(tmp_path / "file" / "jobs.db"))
    with pytest.raises(StoreUnavailable):
        await store.open()
    with pytest.raises(StoreUnavailable, match="not open"):
        await store.ping()


async def test_a_file_that_is_not_a_database_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    path.write_bytes(b"this is not a sqlite database file at all" * 100)
    store = SqliteStore(str(path))
    with pytest.raises(StoreUnavailable):
        await store.open()


async def test_closed_store_is_unavailable(opened: SqliteStore) -> None:
    await opened.close()
    with pytest.raises(StoreUnavailable, match="not open"):
        await opened.get(new_job_id())
    await opened.close()


@pytest.mark.timeout(120)
async def test_sweep_and_vacuum_give_the_space_back(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "jobs.db"))
    await store.open()
    try:
        result = StoredResponse(200, (("content-type", "application/octet-stream"),), b"")
        for _ in range(100):
            await asyncio.gather(
                *(store.create(finished(HOUR, result=_with_body(result))) for _ in range(100))
            )
        full = on_disk(store.path)
        assert full > 100 * MB

        assert await store.sweep(time.time() + 2 * HOUR) == 10_000
        assert (await store.list_jobs(owner="a")).records == []
        # The sweep's incremental vacuum already gave the freed pages back.
        assert on_disk(store.path, wal=False) < 2 * MB
        await store.vacuum()
        assert on_disk(store.path) < 1 * MB, on_disk(store.path)
        # Still a working store afterwards.
        record = await store.create(job())
        assert await store.get(record.id) == record
    finally:
        await store.close()


@pytest.mark.timeout(120)
async def test_sweeps_of_a_few_rows_each_still_give_the_space_back(tmp_path: Path) -> None:
    # A maintenance loop sweeps jobs as they expire, a slice at a time: the
    # space must come back even though no single sweep deletes many rows.
    store = SqliteStore(str(tmp_path / "jobs.db"))
    await store.open()
    try:
        result = StoredResponse(200, (("content-type", "application/octet-stream"),), b"")
        now = time.time()
        for batch in range(20):
            # Batch n expires n + 1 seconds from now: each sweep below frees 100 rows.
            expires_at = now + batch + 1
            await asyncio.gather(
                *(
                    store.create(finished(0, expires_at=expires_at, result=_with_body(result)))
                    for _ in range(100)
                )
            )
        full = on_disk(store.path, wal=False)
        assert full > 15 * MB
        for batch in range(20):
            assert await store.sweep(now + batch + 1.5) == 100
        assert (await store.list_jobs(owner="a")).records == []
        assert on_disk(store.path, wal=False) < 2 * MB, (full, on_disk(store.path, wal=False))
    finally:
        await store.close()


def _with_body(result: StoredResponse) -> StoredResponse:
    # Random bytes, 10 KB: nothing on the way can shrink them.
    return StoredResponse(result.status, result.headers, os.urandom(10_000))


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///jobs.db", "jobs.db"),
        ("sqlite:///var/fanout/jobs.db", "var/fanout/jobs.db"),
        ("sqlite:////var/lib/fanout/jobs.db", "/var/lib/fanout/jobs.db"),
        ("SQLite:///Jobs.db", "Jobs.db"),
    ],
)
def test_sqlite_url_paths_follow_sqlalchemy(url: str, path: str) -> None:
    assert sqlite_path(url) == path
    store = open_store_from_url(url)
    assert isinstance(store, SqliteStore)
    assert store.path == path


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///", "sqlite:///:memory:", "sqlite:///x.db?mode=ro"]
)
def test_sqlite_urls_without_a_usable_file_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="sqlite"):
        open_store_from_url(url)


def test_redis_urls_load_the_redis_store_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    # Stands in for jobs/redis_store.py, which may not be installed with its client.
    module = types.ModuleType("fanout.jobs.redis_store")

    class RedisStore(MemoryStore):
        def __init__(self, url: str) -> None:
            super().__init__()
            self.url = url

    module.RedisStore = RedisStore  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fanout.jobs.redis_store", module)
    for url in ("redis://cache:6379/0", "rediss://user:pw@cache/1"):
        store = open_store_from_url(url)
        assert isinstance(store, RedisStore)
        assert store.url == url
