"""The job model and its state transitions (pure: no I/O, no asyncio)."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    """Where a job is in its life."""

    #: Accepted and stored; waiting for a free slot.
    PENDING = "pending"
    #: Running on a worker, which holds its lease.
    RUNNING = "running"
    #: Finished; its result is stored.
    SUCCEEDED = "succeeded"
    #: Finished with an error (its problem details are stored), a timeout included.
    FAILED = "failed"
    #: Stopped on request (cancel or delete).
    CANCELLED = "cancelled"
    #: Stopped because its worker stopped (shutdown, crash, lapsed lease).
    INTERRUPTED = "interrupted"

    @property
    def final(self) -> bool:
        """True once the job can change no more."""
        return self not in (JobStatus.PENDING, JobStatus.RUNNING)


class InvalidTransition(ValueError):
    """A job was asked to move to a state it cannot reach from where it is."""


def new_job_id() -> str:
    """A 128-bit random job id, as 32 hex digits."""
    return secrets.token_hex(16)


def is_job_id(value: str) -> bool:
    """Tell whether ``value`` has the form of a job id."""
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


@dataclass(frozen=True)
class Progress:
    """How far a running job has come."""

    done: int = 0
    total: int | None = None
    message: str = ""


@dataclass(frozen=True)
class StoredResponse:
    """A job's HTTP answer, replayed by /jobs/<id>/result exactly as produced."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @classmethod
    def from_json(cls, value: Any, status: int = 200) -> StoredResponse:
        """An ``application/json`` answer holding ``value`` (json.dumps of it)."""
        body = json.dumps(value).encode()
        return cls(status=status, headers=(("Content-Type", "application/json"),), body=body)


@dataclass(frozen=True)
class JobRecord:
    """Everything the store keeps about one job. Times are Unix seconds."""

    id: str
    kind: str
    owner: str | None
    status: JobStatus
    created_at: float
    params: Any = None
    progress: Progress = field(default_factory=Progress)
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    result: StoredResponse | None = None
    error: dict[str, Any] | None = None
    idempotency_key: str | None = None
    #: The worker running it and until when its lease holds.
    worker: str | None = None
    lease_until: float | None = None
    #: Set by a cancel sent to any worker; the running worker acts on it.
    cancel_requested: bool = False
    timeout: float | None = None


def _require(record: JobRecord, allowed: tuple[JobStatus, ...], target: JobStatus) -> None:
    if record.status not in allowed:
        raise InvalidTransition(f"job {record.id} is {record.status}; it cannot become {target}")


def start(record: JobRecord, *, worker: str, now: float, lease_until: float) -> JobRecord:
    """pending -> running on ``worker``."""
    _require(record, (JobStatus.PENDING,), JobStatus.RUNNING)
    return replace(
        record, status=JobStatus.RUNNING, started_at=now, worker=worker, lease_until=lease_until
    )


def _finish(
    record: JobRecord, status: JobStatus, now: float, ttl: float, **changes: Any
) -> JobRecord:
    return replace(
        record,
        status=status,
        finished_at=now,
        expires_at=now + ttl,
        lease_until=None,
        **changes,
    )


def succeed(record: JobRecord, result: StoredResponse, *, now: float, ttl: float) -> JobRecord:
    """running -> succeeded with its result."""
    _require(record, (JobStatus.RUNNING,), JobStatus.SUCCEEDED)
    return _finish(record, JobStatus.SUCCEEDED, now, ttl, result=result)


def fail(record: JobRecord, problem: dict[str, Any], *, now: float, ttl: float) -> JobRecord:
    """running -> failed with its problem details."""
    _require(record, (JobStatus.RUNNING,), JobStatus.FAILED)
    return _finish(record, JobStatus.FAILED, now, ttl, error=problem)


def cancel(record: JobRecord, *, now: float, ttl: float) -> JobRecord:
    """pending or running -> cancelled."""
    _require(record, (JobStatus.PENDING, JobStatus.RUNNING), JobStatus.CANCELLED)
    return _finish(record, JobStatus.CANCELLED, now, ttl, cancel_requested=True)


def interrupt(record: JobRecord, reason: str, *, now: float, ttl: float) -> JobRecord:
    """pending or running -> interrupted (its worker stopped)."""
    _require(record, (JobStatus.PENDING, JobStatus.RUNNING), JobStatus.INTERRUPTED)
    problem = {
        "type": "about:blank",
        "title": "Job Interrupted",
        "status": 409,
        "detail": reason,
    }
    # The cancel flag too: if the worker that ran it is alive after all, it
    # sees the flag on its next poll and stops the task.
    return _finish(record, JobStatus.INTERRUPTED, now, ttl, error=problem, cancel_requested=True)


def report_progress(record: JobRecord, progress: Progress) -> JobRecord:
    """Record progress of a running job."""
    _require(record, (JobStatus.RUNNING,), JobStatus.RUNNING)
    return replace(record, progress=progress)
