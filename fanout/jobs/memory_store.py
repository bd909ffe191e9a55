"""A job store in this process's memory: for tests and a single process.

Also home of the listing cursor codec every store shares, so that a cursor
has one format and one validation whichever store handed it out.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import replace as evolve

from fanout.core.client_json import InvalidJSON, parse_client_json
from fanout.jobs.model import JobRecord, JobStatus
from fanout.jobs.store import InvalidCursor, Page, StaleRecord

#: Statuses whose jobs may still change: the only ones leases and cancels apply to.
ACTIVE = (JobStatus.PENDING, JobStatus.RUNNING)


def encode_cursor(created_at: float, job_id: str) -> str:
    """Encode the listing position just after the job (``created_at``, ``job_id``)."""
    # Always a float (1.0, not 1): decode_cursor accepts nothing else.
    raw = json.dumps([float(created_at), job_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """Decode a cursor made by encode_cursor; raise InvalidCursor for anything else."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        raw = base64.b64decode(padded.encode("ascii"), altchars=b"-_", validate=True)
        # Strict and shallow: a forged cursor may nest deep or hold NaN.
        value = parse_client_json(raw.decode("utf-8"), max_depth=1)
    except (UnicodeError, binascii.Error, InvalidJSON) as exc:
        raise InvalidCursor("not a job listing cursor") from exc
    if (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], float)
        and math.isfinite(value[0])
        and isinstance(value[1], str)
        # A JSON escape can make a lone surrogate, which no store can encode.
        and value[1] == value[1].encode("utf-8", "replace").decode("utf-8")
    ):
        return value[0], value[1]
    raise InvalidCursor("not a job listing cursor")


def page_of(records: Sequence[JobRecord], limit: int) -> Page:
    """Cut ``limit`` records (of up to limit + 1 fetched, newest first) into a Page."""
    if len(records) <= limit:
        return Page(records=list(records), next_cursor=None)
    kept = list(records[:limit])
    last = kept[-1]
    return Page(records=kept, next_cursor=encode_cursor(last.created_at, last.id))


def check_limit(limit: int) -> None:
    """Refuse a page size that cannot make progress."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")


def _expired(record: JobRecord, now: float) -> bool:
    return record.expires_at is not None and record.expires_at < now


def _lapsed(record: JobRecord, now: float) -> bool:
    return record.lease_until is not None and record.lease_until < now


class MemoryStore:
    """JobStore in a dict: nothing survives the process, nothing is shared with others.

    Bounded like the others: finished jobs expire (``get`` and listings hide
    them at once) and ``sweep`` frees them. Every method runs without awaiting
    anything, so each is atomic on the event loop and needs no lock.
    """

    def __init__(self) -> None:
        self._records: dict[str, JobRecord] = {}
        #: (owner, idempotency key) -> job id, for jobs created with a key.
        self._keys: dict[tuple[str | None, str], str] = {}

    async def open(self) -> None:
        """Nothing to connect."""

    async def close(self) -> None:
        """Nothing to release; the records stay for a reopen."""

    async def ping(self) -> None:
        """Always answers."""

    async def create(self, record: JobRecord) -> JobRecord:
        """Store a new job, or return the live one with the same owner and idempotency key."""
        if record.id in self._records:
            raise ValueError(f"job {record.id} already exists")
        if record.idempotency_key is not None:
            key = (record.owner, record.idempotency_key)
            existing_id = self._keys.get(key)
            if existing_id is not None:
                existing = self._records[existing_id]
                if not _expired(existing, time.time()):
                    return existing
                # Expired jobs are gone as far as callers can tell: drop it so
                # the key is free for this one.
                self._forget(existing_id)
            self._keys[key] = record.id
        self._records[record.id] = record
        return record

    async def get(self, job_id: str) -> JobRecord | None:
        """The job, or None if unknown or expired."""
        record = self._records.get(job_id)
        if record is None or _expired(record, time.time()):
            return None
        return record

    async def replace(
        self, record: JobRecord, *, expected: JobStatus, lease_before: float | None = None
    ) -> JobRecord:
        """Write ``record`` if the stored job still has status ``expected`` (and,
        with ``lease_before``, a lease that ended before it)."""
        stored = self._records.get(record.id)
        if stored is None or stored.status != expected:
            raise StaleRecord(f"job {record.id} is no longer {expected}")
        if lease_before is not None and not _lapsed(stored, lease_before):
            raise StaleRecord(f"job {record.id}: its lease was renewed")
        if stored.cancel_requested and not record.cancel_requested:
            # A cancel may land between the caller's read and this write; the
            # flag only ever goes up, so a write from an older copy keeps it.
            record = evolve(record, cancel_requested=True)
        if record.idempotency_key != stored.idempotency_key:
            self._unindex(stored)
            if record.idempotency_key is not None:
                self._keys[(record.owner, record.idempotency_key)] = record.id
        self._records[record.id] = record
        return record

    async def find_by_key(self, owner: str | None, key: str) -> JobRecord | None:
        """The live job that ``owner`` started with this idempotency key, if any."""
        job_id = self._keys.get((owner, key))
        return None if job_id is None else await self.get(job_id)

    async def request_cancel(self, job_id: str) -> JobRecord | None:
        """Flag a pending or running job for cancelling; return it as now stored."""
        record = await self.get(job_id)
        if record is None or record.status not in ACTIVE or record.cancel_requested:
            return record
        record = evolve(record, cancel_requested=True)
        self._records[job_id] = record
        return record

    async def delete(self, job_id: str) -> bool:
        """Forget the job; True if it existed."""
        return self._forget(job_id)

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
        now = time.time()
        matching = [
            r
            for r in self._records.values()
            if r.owner == owner
            and (status is None or r.status == status)
            and (kind is None or r.kind == kind)
            and not _expired(r, now)
            and (after is None or (r.created_at, r.id) < after)
        ]
        matching.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        return page_of(matching[: limit + 1], limit)

    async def renew_leases(self, worker: str, job_ids: Sequence[str], until: float) -> None:
        """Extend the lease of these pending or running jobs held by ``worker``."""
        for record in self._find(job_ids):
            if record.worker == worker and record.status in ACTIVE:
                self._records[record.id] = evolve(record, lease_until=until)

    async def cancel_requested(self, job_ids: Sequence[str]) -> set[str]:
        """Of these ids, the ones whose cancel has been requested or that are gone."""
        found = {job_id: self._records.get(job_id) for job_id in job_ids}
        return {job_id for job_id, r in found.items() if r is None or r.cancel_requested}

    async def lapsed(self, now: float) -> list[JobRecord]:
        """Pending or running jobs whose lease ended before ``now``."""
        return [r for r in self._records.values() if r.status in ACTIVE and _lapsed(r, now)]

    async def count_active(self) -> dict[tuple[str, str], int]:
        """How many pending and running jobs there are, by (kind, status)."""
        return dict(
            Counter((r.kind, str(r.status)) for r in self._records.values() if r.status in ACTIVE)
        )

    async def sweep(self, now: float) -> int:
        """Delete finished jobs whose expires_at has passed; return how many."""
        gone = [r.id for r in self._records.values() if r.status.final and _expired(r, now)]
        for job_id in gone:
            self._forget(job_id)
        return len(gone)

    def _find(self, job_ids: Iterable[str]) -> list[JobRecord]:
        found = (self._records.get(job_id) for job_id in job_ids)
        return [r for r in found if r is not None]

    def _forget(self, job_id: str) -> bool:
        record = self._records.pop(job_id, None)
        if record is None:
            return False
        self._unindex(record)
        return True

    def _unindex(self, record: JobRecord) -> None:
        if record.idempotency_key is None:
            return
        key = (record.owner, record.idempotency_key)
        if self._keys.get(key) == record.id:
            del self._keys[key]
