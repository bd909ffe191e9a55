"""The job store interface: where job records live, shared by every worker."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from fanout.jobs.model import JobRecord, JobStatus


class StoreUnavailable(RuntimeError):
    """The store cannot be reached: nothing was changed."""


class StaleRecord(RuntimeError):
    """A conditional write lost: the record changed (or vanished) since it was read."""


@dataclass(frozen=True)
class Page:
    """One page of a job listing, newest first."""

    records: Sequence[JobRecord]
    #: Opaque; pass it back to get the next page. None on the last page.
    next_cursor: str | None


class InvalidCursor(ValueError):
    """A listing cursor that this store did not hand out."""


class JobStore(Protocol):
    """Async access to job records. Every method may raise StoreUnavailable.

    Records are immutable values; ``replace`` writes a new version only if
    the stored one still has the status the caller read (a compare-and-set
    on ``expected``), so two workers never both move one job. A worker that
    takes over a lapsed job also passes ``lease_before``: the same write then
    checks that the lease is still lapsed, so a renewal landing between its
    read and its write wins.
    """

    async def open(self) -> None:
        """Connect, create tables or indexes as needed."""

    async def close(self) -> None:
        """Release connections."""

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""

    async def create(self, record: JobRecord) -> JobRecord:
        """Store a new job and return it; with an idempotency key already used by
        the same owner (and not expired), store nothing and return that job."""

    async def get(self, job_id: str) -> JobRecord | None:
        """The job, or None if unknown or expired (expires_at in the past)."""

    async def replace(
        self, record: JobRecord, *, expected: JobStatus, lease_before: float | None = None
    ) -> JobRecord:
        """Write ``record`` if the stored one has status ``expected`` (and, with
        ``lease_before``, a lease that ended before it), else raise StaleRecord."""

    async def find_by_key(self, owner: str | None, key: str) -> JobRecord | None:
        """The live job that ``owner`` started with this idempotency key, if any."""

    async def request_cancel(self, job_id: str) -> JobRecord | None:
        """Set cancel_requested on a pending or running job; return it (None if unknown)."""

    async def delete(self, job_id: str) -> bool:
        """Forget the job; True if it existed."""

    async def list_jobs(
        self,
        *,
        owner: str | None,
        status: JobStatus | None = None,
        kind: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> Page:
        """Jobs of ``owner`` (None: jobs without owner), newest first (created_at,
        then id), filtered; raise InvalidCursor for a cursor it did not hand out."""

    async def renew_leases(self, worker: str, job_ids: Sequence[str], until: float) -> None:
        """Extend the lease of these pending or running jobs held by ``worker``."""

    async def cancel_requested(self, job_ids: Sequence[str]) -> set[str]:
        """Of these ids, the ones to stop: their cancel was requested, or they are
        no longer stored (deleted: a deleted job must not keep running)."""

    async def lapsed(self, now: float) -> list[JobRecord]:
        """Pending or running jobs whose lease ended before ``now``: their worker
        crashed or stopped without finishing them."""

    async def sweep(self, now: float) -> int:
        """Delete finished jobs whose expires_at has passed; return how many."""

    async def count_active(self) -> dict[tuple[str, str], int]:
        """How many pending and running jobs there are, by (kind, status); reads no records."""
