"""A job store in one SQLite file, shared by every worker process of one machine.

sqlite3 blocks, so each store owns two connections, each with one thread (a
single-worker executor) that runs its statements; the event loop only awaits.
Writes go through one, reads through the other: in WAL mode a reader never
waits for a writer, and with its own connection and thread it never queues
behind a write that waits for another process's lock either.
``busy_timeout`` bounds how long an operation may wait, for that lock and
for its turn on the thread together, before it fails with StoreUnavailable.

An operation whose caller is cancelled still runs to its end in the thread:
cancelling an await never leaves a transaction half done.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace as evolve
from typing import Any, TypeVar

from fanout.jobs.memory_store import check_limit, decode_cursor, page_of
from fanout.jobs.model import JobRecord, JobStatus, Progress, StoredResponse
from fanout.jobs.store import Page, StaleRecord, StoreUnavailable

T = TypeVar("T")

logger = logging.getLogger(__name__)

#: A sweep gives the file's free pages back to the filesystem once they are at
#: least this many (1 MiB of 4 KiB pages), however few rows that sweep deleted:
#: expired jobs are swept a slice at a time, and the slices add up.
RECLAIM_FREE_PAGES = 256
#: IN lists are cut to this size: well under SQLite's bound-parameter limit.
_CHUNK = 500
#: After a checkpoint, the WAL file is cut back to this size.
WAL_SIZE_LIMIT = 16 * 1024 * 1024
#: Seconds an operation may wait (its turn, then another process's lock):
#: well under a client's patience, so a held lock answers 503, not a hang.
BUSY_TIMEOUT = 2.0

_FINAL = tuple(s.value for s in JobStatus if s.final)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    owner TEXT,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    expires_at REAL,
    idempotency_key TEXT,
    worker TEXT,
    lease_until REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    timeout REAL,
    params TEXT NOT NULL,
    progress TEXT NOT NULL,
    error TEXT,
    result_status INTEGER,
    result_headers TEXT,
    result_body BLOB
);
CREATE INDEX IF NOT EXISTS jobs_listing ON jobs (owner, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS jobs_leases ON jobs (lease_until)
    WHERE status IN ('pending', 'running');
CREATE INDEX IF NOT EXISTS jobs_expiry ON jobs (expires_at)
    WHERE status IN {_FINAL!r};
-- One job per (owner, key). NULLs are distinct in a UNIQUE index, so a NULL
-- owner is mapped to the empty blob: a BLOB never equals any TEXT owner.
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency
    ON jobs (coalesce(owner, x''), idempotency_key)
    WHERE idempotency_key IS NOT NULL;
"""

_COLUMNS = (
    "id, kind, owner, status, created_at, started_at, finished_at, expires_at,"
    " idempotency_key, worker, lease_until, cancel_requested, timeout, params,"
    " progress, error, result_status, result_headers, result_body"
)
_PLACEHOLDERS = ", ".join("?" * len(_COLUMNS.split(",")))
_SET_ALL = ", ".join(f"{c.strip()} = ?" for c in _COLUMNS.split(",")[1:])
#: A job is visible until its expires_at is in the past.
_LIVE = "(expires_at IS NULL OR expires_at >= ?)"


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _row(record: JobRecord) -> tuple[Any, ...]:
    result = record.result
    return (
        record.id,
        record.kind,
        record.owner,
        record.status.value,
        record.created_at,
        record.started_at,
        record.finished_at,
        record.expires_at,
        record.idempotency_key,
        record.worker,
        record.lease_until,
        int(record.cancel_requested),
        record.timeout,
        _json(record.params),
        _json(
            {
                "done": record.progress.done,
                "total": record.progress.total,
                "message": record.progress.message,
            }
        ),
        None if record.error is None else _json(record.error),
        None if result is None else result.status,
        None if result is None else _json([list(h) for h in result.headers]),
        None if result is None else result.body,
    )


def _record(row: sqlite3.Row) -> JobRecord:
    progress = json.loads(row["progress"])
    result = None
    if row["result_status"] is not None:
        result = StoredResponse(
            status=row["result_status"],
            headers=tuple((name, value) for name, value in json.loads(row["result_headers"])),
            body=bytes(row["result_body"]),
        )
    return JobRecord(
        id=row["id"],
        kind=row["kind"],
        owner=row["owner"],
        status=JobStatus(row["status"]),
        created_at=row["created_at"],
        params=json.loads(row["params"]),
        progress=Progress(
            done=progress["done"], total=progress["total"], message=progress["message"]
        ),
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        expires_at=row["expires_at"],
        result=result,
        error=None if row["error"] is None else json.loads(row["error"]),
        idempotency_key=row["idempotency_key"],
        worker=row["worker"],
        lease_until=row["lease_until"],
        cancel_requested=bool(row["cancel_requested"]),
        timeout=row["timeout"],
    )


def _records(rows: Iterable[sqlite3.Row]) -> list[JobRecord]:
    # Decoding runs on the store's thread too: bodies can be large.
    return [_record(row) for row in rows]


def _chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front, so a read-then-write inside it
    # cannot interleave with another process's write (no lost updates).
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        # Also after a failed COMMIT (busy, I/O error), which leaves it open.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class _Connection:
    """One sqlite3 connection and the one thread that runs all of its statements."""

    def __init__(
        self, path: str, busy_timeout: float, setup: Callable[[sqlite3.Connection], None]
    ) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        self._setup = setup
        self._executor: ThreadPoolExecutor | None = None
        #: Only ever touched on the executor's thread.
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        """Connect on the connection's own thread and run ``setup`` there."""
        if self._executor is not None:
            return
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._executor = executor
        try:
            await self._in_thread(self._connect, bounded=False)
        except BaseException:
            # If the await was cancelled, _connect may still finish: the queue
            # is FIFO, so this closes whatever it opened.
            executor.submit(self._disconnect)
            self._executor = None
            executor.shutdown(wait=False)
            raise

    async def close(self) -> None:
        """Close the connection and stop its thread."""
        executor = self._executor
        if executor is None:
            return
        try:
            await self._in_thread(self._disconnect, bounded=False)
        finally:
            self._executor = None
            # The thread is idle now (its queue was FIFO): it exits on its own.
            executor.shutdown(wait=False)

    async def run(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``operation`` on the connection's thread; StoreUnavailable past the busy timeout."""
        return await self._in_thread(lambda: operation(self._connection()))

    async def _in_thread(self, operation: Callable[[], T], *, bounded: bool = True) -> T:
        executor = self._executor
        if executor is None:
            raise StoreUnavailable(f"sqlite store {self.path} is not open")
        # The bound counts from now: operations queued behind one that waits
        # for a lock must not each wait the whole timeout again in turn.
        # Opening and closing are not bounded: a close must never be skipped.
        deadline = time.monotonic() + self._busy_timeout if bounded else None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, self._guarded, operation, deadline)

    def _guarded(self, operation: Callable[[], T], deadline: float | None) -> T:
        try:
            if deadline is not None:
                self._wait_at_most(deadline - time.monotonic())
            return operation()
        except sqlite3.IntegrityError as exc:
            raise ValueError(f"job conflicts with a stored one: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            # Locked past busy_timeout, unreadable file, disk full, not a database...
            raise StoreUnavailable(f"sqlite store {self.path}: {exc}") from exc

    def _wait_at_most(self, seconds: float) -> None:
        if seconds <= 0:
            # Never started, so nothing changed: its caller may retry.
            raise StoreUnavailable(
                f"sqlite store {self.path}: database is locked"
                f" (waited {self._busy_timeout:g} s for earlier operations)"
            )
        if self._conn is not None:
            # What is left of the bound, for the lock this operation may need.
            self._conn.execute(f"PRAGMA busy_timeout = {max(1, int(seconds * 1000))}")

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailable(f"sqlite store {self.path} is not open")
        return self._conn

    def _connect(self) -> None:
        parent = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"sqlite store {self.path}: {exc}") from exc
        # Autocommit (isolation_level None): transactions are opened explicitly.
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            self._setup(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _read_only(conn: sqlite3.Connection) -> None:
    # The read connection must never take the write lock, even by mistake.
    conn.execute("PRAGMA query_only = ON")


class SqliteStore:
    """JobStore on one SQLite file (WAL mode), safe for several processes sharing it.

    ``path`` is a filesystem path; its parent directory is created if missing.
    ``busy_timeout`` (seconds) is how long an operation waits, for its turn
    and for another process's lock, before raising StoreUnavailable; reads
    never wait for a writer. Space: ``sweep`` gives the pages of deleted rows
    back to the filesystem (incremental vacuum) once the file holds at least
    ``reclaim_pages`` free pages; ``vacuum`` rebuilds the file on demand.
    """

    def __init__(
        self,
        path: str,
        *,
        busy_timeout: float = BUSY_TIMEOUT,
        reclaim_pages: int = RECLAIM_FREE_PAGES,
    ) -> None:
        self.path = path
        self._reclaim_pages = reclaim_pages
        self._writer = _Connection(path, busy_timeout, self._prepare_file)
        self._reader = _Connection(path, busy_timeout, _read_only)

    async def open(self) -> None:
        """Create the file and schema if needed; switch the file to WAL mode."""
        # The writer first: it makes the file, the schema and WAL mode.
        await self._writer.open()
        try:
            await self._reader.open()
        except BaseException:
            await self._writer.close()
            raise

    async def close(self) -> None:
        """Close both connections and stop their threads."""
        try:
            await self._reader.close()
        finally:
            await self._writer.close()

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the file can be read."""
        await self._read(lambda conn: conn.execute("SELECT 1 FROM jobs LIMIT 1").fetchall())

    async def create(self, record: JobRecord) -> JobRecord:
        """Store a new job, or return the live one with the same owner and idempotency key."""
        return await self._write(lambda conn: self._create(conn, record, time.time()))

    async def get(self, job_id: str) -> JobRecord | None:
        """The job, or None if unknown or expired."""
        return await self._read(lambda conn: self._get(conn, job_id, time.time()))

    async def replace(
        self, record: JobRecord, *, expected: JobStatus, lease_before: float | None = None
    ) -> JobRecord:
        """Write ``record`` if the stored job still has status ``expected`` (and, with
        ``lease_before``, a lease that ended before it): one compare-and-set."""
        return await self._write(lambda conn: self._replace(conn, record, expected, lease_before))

    async def find_by_key(self, owner: str | None, key: str) -> JobRecord | None:
        """The live job that ``owner`` started with this idempotency key, if any."""
        sql = (
            f"SELECT {_COLUMNS} FROM jobs WHERE coalesce(owner, x'') = coalesce(?, x'')"
            f" AND idempotency_key = ? AND {_LIVE}"
        )
        rows = await self._read(lambda conn: _records(conn.execute(sql, (owner, key, time.time()))))
        return rows[0] if rows else None

    async def request_cancel(self, job_id: str) -> JobRecord | None:
        """Flag a pending or running job for cancelling; return it as now stored."""
        return await self._write(lambda conn: self._request_cancel(conn, job_id, time.time()))

    async def delete(self, job_id: str) -> bool:
        """Forget the job; True if it existed."""
        return await self._write(
            lambda conn: conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount > 0
        )

    async def list_jobs(
        self,
        *,
        owner: str | None,
        status: JobStatus | None = None,
        kind: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> Page:
        """Jobs of ``owner`` (None: ownerless ones), newest first, filtered and paged."""
        check_limit(limit)
        after = decode_cursor(cursor) if cursor is not None else None
        # `owner IS ?` matches NULL for None and compares like = otherwise.
        where = ["owner IS ?", _LIVE]
        args: list[Any] = [owner, time.time()]
        if status is not None:
            where.append("status = ?")
            args.append(status.value)
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        if after is not None:
            where.append("(created_at, id) < (?, ?)")
            args.extend(after)
        # One row more than asked tells whether another page follows.
        sql = (
            f"SELECT {_COLUMNS} FROM jobs WHERE {' AND '.join(where)}"
            " ORDER BY created_at DESC, id DESC LIMIT ?"
        )
        args.append(limit + 1)
        records = await self._read(lambda conn: _records(conn.execute(sql, args)))
        return page_of(records, limit)

    async def renew_leases(self, worker: str, job_ids: Sequence[str], until: float) -> None:
        """Extend the lease of these pending or running jobs held by ``worker``."""
        await self._write(lambda conn: self._renew(conn, worker, list(job_ids), until))

    async def cancel_requested(self, job_ids: Sequence[str]) -> set[str]:
        """Of these ids, the ones whose cancel has been requested or that are gone."""
        return await self._read(lambda conn: self._cancel_requested(conn, list(job_ids)))

    async def lapsed(self, now: float) -> list[JobRecord]:
        """Pending or running jobs whose lease ended before ``now``."""
        sql = (
            f"SELECT {_COLUMNS} FROM jobs"
            " WHERE status IN ('pending', 'running') AND lease_until < ?"
        )
        return await self._read(lambda conn: _records(conn.execute(sql, (now,))))

    async def sweep(self, now: float) -> int:
        """Delete finished jobs whose expires_at has passed; return how many."""
        return await self._write(lambda conn: self._sweep(conn, now))

    async def count_active(self) -> dict[tuple[str, str], int]:
        """How many pending and running jobs there are, by (kind, status)."""
        # Counted in SQL: the scrape that asks must not decode every record.
        sql = (
            "SELECT kind, status, count(*) FROM jobs"
            " WHERE status IN ('pending', 'running') GROUP BY kind, status"
        )
        rows = await self._read(lambda conn: conn.execute(sql).fetchall())
        return {(kind, status): count for kind, status, count in rows}

    async def vacuum(self) -> None:
        """Rebuild the file to its smallest size and empty the WAL (slow on big files).

        It holds the write lock of the whole file while it runs: call it at a
        quiet time. Routine space reclaim is done by ``sweep``.
        """
        await self._write(self._vacuum)

    async def _write(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        return await self._writer.run(operation)

    async def _read(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        return await self._reader.run(operation)

    def _prepare_file(self, conn: sqlite3.Connection) -> None:
        # Only takes effect on a new file, so it goes before anything writes it:
        # lets sweep hand freed pages back without rewriting the whole file.
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreUnavailable(f"sqlite store {self.path}: cannot use WAL ({mode})")
        # In WAL mode NORMAL is safe against process crashes (not power loss)
        # and saves an fsync per commit.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        with _transaction(conn):
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)

    def _get(self, conn: sqlite3.Connection, job_id: str, now: float) -> JobRecord | None:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE id = ? AND {_LIVE}", (job_id, now)
        ).fetchone()
        return None if row is None else _record(row)

    def _create(self, conn: sqlite3.Connection, record: JobRecord, now: float) -> JobRecord:
        with _transaction(conn):
            if record.idempotency_key is not None:
                row = conn.execute(
                    f"SELECT {_COLUMNS} FROM jobs WHERE coalesce(owner, x'') = coalesce(?, x'')"
                    " AND idempotency_key = ?",
                    (record.owner, record.idempotency_key),
                ).fetchone()
                if row is not None:
                    existing = _record(row)
                    if existing.expires_at is None or existing.expires_at >= now:
                        return existing
                    # Expired, so already gone for every reader: free its key.
                    conn.execute("DELETE FROM jobs WHERE id = ?", (existing.id,))
            conn.execute(f"INSERT INTO jobs ({_COLUMNS}) VALUES ({_PLACEHOLDERS})", _row(record))
        return record

    def _replace(
        self,
        conn: sqlite3.Connection,
        record: JobRecord,
        expected: JobStatus,
        lease_before: float | None,
    ) -> JobRecord:
        row = _row(record)
        where = "id = ? AND status = ?"
        args: list[Any] = [record.id, expected.value]
        if lease_before is not None:
            # Checked in the same statement: a renewal committed after the
            # caller's read makes this write miss instead of undoing it.
            where += " AND lease_until < ?"
            args.append(lease_before)
        with _transaction(conn):
            # cancel_requested only ever goes up: a cancel landing between the
            # caller's read and this write survives a write from the older copy.
            updated = conn.execute(
                f"UPDATE jobs SET {_SET_ALL}, cancel_requested = cancel_requested OR ?"
                f" WHERE {where}",
                (*row[1:], int(record.cancel_requested), *args),
            ).rowcount
            if updated == 0:
                raise StaleRecord(f"job {record.id} is no longer {expected} (or was renewed)")
            if not record.cancel_requested:
                flag = conn.execute(
                    "SELECT cancel_requested FROM jobs WHERE id = ?", (record.id,)
                ).fetchone()[0]
                if flag:
                    return evolve(record, cancel_requested=True)
        return record

    def _request_cancel(
        self, conn: sqlite3.Connection, job_id: str, now: float
    ) -> JobRecord | None:
        with _transaction(conn):
            conn.execute(
                "UPDATE jobs SET cancel_requested = 1"
                f" WHERE id = ? AND status IN ('pending', 'running') AND {_LIVE}",
                (job_id, now),
            )
            return self._get(conn, job_id, now)

    def _renew(self, conn: sqlite3.Connection, worker: str, ids: list[str], until: float) -> None:
        with _transaction(conn):
            for chunk in _chunks(ids):
                conn.execute(
                    "UPDATE jobs SET lease_until = ?"
                    " WHERE worker = ? AND status IN ('pending', 'running')"
                    f" AND id IN ({', '.join('?' * len(chunk))})",
                    (until, worker, *chunk),
                )

    def _cancel_requested(self, conn: sqlite3.Connection, ids: list[str]) -> set[str]:
        # The complement of the stored, unflagged ones: a deleted id is in it too.
        keep_going: set[str] = set()
        for chunk in _chunks(ids):
            rows = conn.execute(
                "SELECT id FROM jobs WHERE cancel_requested = 0"
                f" AND id IN ({', '.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
            keep_going.update(row[0] for row in rows)
        return set(ids) - keep_going

    def _sweep(self, conn: sqlite3.Connection, now: float) -> int:
        deleted: int = conn.execute(
            f"DELETE FROM jobs WHERE status IN {_FINAL!r} AND expires_at < ?", (now,)
        ).rowcount
        if not deleted:
            return 0
        (free_pages,) = conn.execute("PRAGMA freelist_count").fetchone()
        if free_pages >= self._reclaim_pages:
            try:
                # Moves free pages to the end and truncates them away; unlike
                # VACUUM it does not rewrite the live rows. It frees one page per
                # step and execute() steps once: executescript() steps to the end.
                # The file shrinks at the checkpoint; PASSIVE never waits for readers.
                conn.executescript("PRAGMA incremental_vacuum;")
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.OperationalError as exc:
                # The rows are gone already; the space comes back at the next
                # sweep or vacuum, so the sweep still reports its deletions.
                logger.warning("sqlite store %s: space not reclaimed: %s", self.path, exc)
        return deleted

    def _vacuum(self, conn: sqlite3.Connection) -> None:
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
