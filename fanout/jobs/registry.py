"""The job registry: jobs run as tasks on this worker's loop, their records in the store."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from fanout.core.deadline import deadline
from fanout.jobs import model
from fanout.jobs.memory_trim import trim_free_memory
from fanout.jobs.model import JobRecord, JobStatus, Progress, StoredResponse
from fanout.jobs.store import JobStore, StaleRecord, StoreUnavailable

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobLimits:
    """Bounds and timings of one worker's registry."""

    max_running: int = 100
    max_pending: int = 1000
    default_timeout: float = 300.0
    result_ttl: float = 86400.0
    #: The largest result a job may store (body and headers, in bytes).
    max_result_bytes: int = 16 * 1024 * 1024
    #: How long a worker's claim on its jobs holds without renewal.
    lease_seconds: float = 10.0
    #: How often leases are renewed, remote cancels looked for, and watchers re-read.
    poll_seconds: float = 0.5
    #: How often expired jobs are swept from the store.
    sweep_seconds: float = 60.0
    #: Once sweeps removed this many jobs in all, free memory is handed back
    #: to the system (0: never).
    trim_after_swept: int = 1000


class QueueFull(RuntimeError):
    """max_running + max_pending jobs are already here: try again later."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("too many jobs running or waiting on this worker")
        self.retry_after = retry_after


class RegistryClosed(RuntimeError):
    """The registry is shutting down and accepts no more jobs."""


class IdempotencyConflict(ValueError):
    """An idempotency key already names a job started by a different request."""

    def __init__(self, existing: JobRecord) -> None:
        super().__init__(
            f"the Idempotency-Key was used for job {existing.id}, started by a different request"
        )
        self.existing = existing


class JobFailure(Exception):
    """Raised by a job to fail with these problem details."""

    def __init__(self, problem: dict[str, Any]) -> None:
        super().__init__(problem.get("detail") or problem.get("title"))
        self.problem = problem


class ResultTooLarge(JobFailure):
    """A job's result would be larger than a job may store (507, naming the limit)."""

    def __init__(self, limit: int) -> None:
        # 507 Insufficient Storage (RFC 4918 11.5): the server cannot store
        # what completing the request needs. Not the upstream's fault (502),
        # and the same request fails the same way again.
        super().__init__(
            {
                "type": "about:blank",
                "title": "Job Result Too Large",
                "status": 507,
                "detail": (
                    f"The job's result would be larger than {limit} bytes, the most a job "
                    "may store ([jobs] max_result_bytes); ask for less per job."
                ),
                "max_result_bytes": limit,
            }
        )


class JobContext:
    """What a running job sees: its record's params, and progress reporting."""

    #: Progress is written at most this often (the last item always is).
    PROGRESS_INTERVAL = 0.2

    def __init__(self, registry: JobRegistry, record: JobRecord) -> None:
        self._registry = registry
        self._record = record
        self._last_write = 0.0
        #: One progress write at a time, so they land in the order reported.
        self._writing = asyncio.Lock()
        #: The newest progress reported and not written yet.
        self._wanted: Progress | None = None
        self._store_down = False

    @property
    def job_id(self) -> str:
        """The job's id."""
        return self._record.id

    @property
    def record(self) -> JobRecord:
        """The job's record as last written by this context."""
        return self._record

    @property
    def max_result_bytes(self) -> int:
        """The largest result the job may return (body and headers); larger fails it."""
        return self._registry.limits.max_result_bytes

    @property
    def params(self) -> Any:
        """The parameters the job was started with."""
        return self._record.params

    async def progress(self, done: int, total: int | None = None, message: str = "") -> None:
        """Report how far the job has come (visible to pollers and event streams)."""
        now = time.monotonic()
        last = total is not None and done >= total
        if not last and now - self._last_write < self.PROGRESS_INTERVAL:
            return
        self._last_write = now
        self._wanted = Progress(done, total, message)
        # Concurrent writes (a pool of items reporting) could land out of order
        # and leave the record behind the job: one at a time, each carrying the
        # newest progress, so what is stored only ever moves forward.
        async with self._writing:
            wanted, self._wanted = self._wanted, None
            if wanted is None:
                return  # the write before this one carried it
            updated = model.report_progress(self._record, wanted)
            try:
                self._record = await self._registry.write(updated, expected=JobStatus.RUNNING)
            except StoreUnavailable as exc:
                # Best effort: the job goes on, and the next write (or the
                # final one) carries this progress.
                self._record = updated
                if not self._store_down:
                    logger.warning("job %s: progress not stored (%s)", self.job_id, exc)
                self._store_down = True
            else:
                if self._store_down:
                    logger.info("job %s: progress stored again", self.job_id)
                self._store_down = False


JobBody = Callable[[JobContext], Awaitable[StoredResponse]]


class JobObserver(Protocol):
    """Told of every change of a job's status on this worker (metrics)."""

    def observe_job(self, kind: str, before: JobStatus | None, after: JobStatus) -> None:
        """The job moved from ``before`` (None: new) to ``after``."""


class JobRegistry:
    """Runs jobs with ``asyncio.create_task`` and keeps their records in the store.

    - At most ``max_running`` run at once; at most ``max_pending`` more wait.
    - Each job holds a lease in the store, renewed while this worker lives;
      another worker marks it interrupted once the lease lapses.
    - A cancel recorded in the store by any worker reaches the task here
      within ``poll_seconds``.
    - On shutdown, running jobs get a grace period, then are cancelled and
      recorded as interrupted.
    """

    def __init__(
        self,
        store: JobStore,
        limits: JobLimits,
        *,
        worker_id: str | None = None,
        clock: Callable[[], float] = time.time,
        observer: JobObserver | None = None,
        trim: Callable[[], object] = trim_free_memory,
    ) -> None:
        self.store = store
        self._trim = trim
        #: Jobs swept since memory was last handed back.
        self._swept_untrimmed = 0
        self._observer = observer
        self.limits = limits
        self.worker_id = worker_id or uuid.uuid4().hex
        self._clock = clock
        self._slots = asyncio.Semaphore(limits.max_running)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: Why a task was cancelled: "cancel" (asked) or "shutdown".
        self._stop_reasons: dict[str, str] = {}
        self._changed = asyncio.Condition()
        self._accepting = True
        self._closed = False
        self._starting = 0
        #: Set while no submit is between its checks and its task (storing the job).
        self._no_starts = asyncio.Event()
        self._no_starts.set()
        self._maintenance: asyncio.Task[None] | None = None
        #: Until when the last successful renewal holds this worker's jobs.
        self._renewed_until = 0.0

    # Lifecycle

    def start(self) -> None:
        """Start the maintenance loop (leases, remote cancels, lapsed jobs, sweeping)."""
        self._maintenance = asyncio.get_running_loop().create_task(
            self._maintain(), name=f"jobs-maintenance-{self.worker_id[:8]}"
        )

    async def close(self, grace_seconds: float) -> None:
        """Stop accepting; let running jobs finish within the grace, then interrupt the rest."""
        self._accepting = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_seconds
        # A submit already storing its job gets its task made (and the grace)
        # rather than starting it behind our back once we are done.
        try:
            async with asyncio.timeout(grace_seconds):
                await self._no_starts.wait()
        except TimeoutError:
            logger.warning("jobs still being stored at shutdown; they will be interrupted")
        # From here no task is launched: a submit still storing abandons its job.
        self._closed = True
        tasks = list(self._tasks.values())
        if tasks:
            _, unfinished = await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
            for job_id, task in list(self._tasks.items()):
                if task in unfinished:
                    self._stop_reasons.setdefault(job_id, "shutdown")
                    task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)

    async def drained(self) -> None:
        """Wait until every job of this worker has finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    @property
    def running_here(self) -> int:
        """Jobs of this worker not finished yet (running or waiting for a slot)."""
        return len(self._tasks)

    # Starting

    async def submit(
        self,
        kind: str,
        body: JobBody,
        *,
        params: Any = None,
        owner: str | None = None,
        idempotency_key: str | None = None,
        time_limit: float | None = None,
    ) -> JobRecord:
        """Store a new job and start it; return its record (or the idempotent original).

        Raise RegistryClosed while shutting down, QueueFull past the bounds, and
        IdempotencyConflict for a key that names a job of a different request.
        """
        if not self._accepting:
            raise RegistryClosed("the worker is shutting down")
        if len(self._tasks) + self._starting >= self.limits.max_running + self.limits.max_pending:
            # A repeated start is no new work: it gets its job even when full.
            existing = None
            if idempotency_key is not None:
                existing = await self.store.find_by_key(owner, idempotency_key)
            if existing is None:
                raise QueueFull(retry_after=max(1, round(self.limits.poll_seconds * 4)))
            return _same_request(existing, kind, params)
        now = self._clock()
        record = JobRecord(
            id=model.new_job_id(),
            kind=kind,
            owner=owner,
            status=JobStatus.PENDING,
            created_at=now,
            params=params,
            idempotency_key=idempotency_key,
            worker=self.worker_id,
            lease_until=now + self.limits.lease_seconds,
            timeout=time_limit or self.limits.default_timeout,
        )
        # Saved before anyone is told of it: a store failure starts nothing.
        # Counted meanwhile, so concurrent starts cannot pass the bound together.
        self._starting += 1
        self._no_starts.clear()
        try:
            stored = await self.store.create(record)
            if stored.id != record.id:
                return _same_request(stored, kind, params)  # the key was used before
            if self._closed:
                # close() gave up waiting for this store call: start nothing.
                await self._abandon(stored)
                raise RegistryClosed("the worker is shutting down")
            return self._launch(stored, body)
        finally:
            self._starting -= 1
            if not self._starting:
                self._no_starts.set()

    async def _abandon(self, record: JobRecord) -> None:
        reason = "The worker stopped before the job started."
        final = model.interrupt(record, reason, now=self._clock(), ttl=self.limits.result_ttl)
        try:
            await self.store.replace(final, expected=record.status)
        except (StaleRecord, StoreUnavailable):
            logger.warning("job %s was never started; its lease will lapse", record.id)

    def _launch(self, stored: JobRecord, body: JobBody) -> JobRecord:
        kind = stored.kind
        if self._observer is not None:
            self._observer.observe_job(kind, None, JobStatus.PENDING)
        task = asyncio.get_running_loop().create_task(
            self._run(stored, body), name=f"job-{stored.id}"
        )
        self._tasks[stored.id] = task
        task.add_done_callback(lambda done: self._forget(stored.id, done))
        return stored

    def _forget(self, job_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.pop(job_id, None)
        self._stop_reasons.pop(job_id, None)
        if not task.cancelled() and task.exception() is not None:
            logger.error("job %s task ended with an error", job_id, exc_info=task.exception())

    # Running

    async def _run(self, record: JobRecord, body: JobBody) -> None:
        try:
            async with self._slots:
                now = self._clock()
                record = await self.write(
                    model.start(
                        record,
                        worker=self.worker_id,
                        now=now,
                        lease_until=now + self.limits.lease_seconds,
                    ),
                    expected=JobStatus.PENDING,
                )
                context = JobContext(self, record)
                try:
                    # The deadline tells the job's upstream calls (clients) of
                    # the time limit, so none is started past it.
                    async with asyncio.timeout(record.timeout):
                        with deadline(record.timeout):
                            result = await body(context)
                except ExceptionGroup as group:
                    # A body's TaskGroup wraps what its tasks raised: judge the
                    # job by what is inside, as if it had been raised alone.
                    inner = _unwrap(group)
                    if inner is group:
                        raise
                    raise inner from group
                finally:
                    record = context.record  # the latest version, progress included
            await self._finish(record, result)
        except asyncio.CancelledError:
            await self._stopped(record)
            raise
        except TimeoutError:
            await self._failed(
                record,
                {
                    "type": "about:blank",
                    "title": "Job Timed Out",
                    "status": 504,
                    "detail": f"The job did not finish within {record.timeout:g} seconds.",
                },
            )
        except JobFailure as failure:
            await self._failed(record, failure.problem)
        except StaleRecord:
            # Cancelled or interrupted by another worker meanwhile: nothing to record.
            logger.info("job %s changed elsewhere; stopping", record.id)
        except BaseException as exc:  # cancellation is handled above
            # SystemExit or KeyboardInterrupt from a job's code too: let out of
            # the task, it would stop the event loop and every job and request.
            logger.exception("job %s (%s) failed", record.id, record.kind)
            await self._failed(
                record,
                {
                    "type": "about:blank",
                    "title": "Job Failed",
                    "status": 500,
                    "detail": f"The job failed ({_error_name(exc)}).",
                },
            )

    async def _finish(self, record: JobRecord, result: StoredResponse) -> None:
        limit = self.limits.max_result_bytes
        if _size(result) > limit:
            # Stored, it would be kept (and served whole) for result_ttl.
            await self._failed(record, ResultTooLarge(limit).problem)
            return
        if result.status >= 500:
            # The endpoint itself failed: the job failed with its problem.
            await self._failed(record, _problem_of(result))
            return
        now, ttl = self._clock(), self.limits.result_ttl
        await self._write_final(record, model.succeed(record, result, now=now, ttl=ttl))

    async def _failed(self, record: JobRecord, problem: dict[str, Any]) -> None:
        try:
            final = model.fail(record, problem, now=self._clock(), ttl=self.limits.result_ttl)
            await self._write_final(record, final)
        except (StaleRecord, model.InvalidTransition):
            logger.warning("job %s failed, and its failure could not be recorded", record.id)

    async def _write_final(self, record: JobRecord, final: JobRecord) -> None:
        """Store a job's outcome; while the store is down, retry as long as the lease holds.

        Until the lease lapses no other worker touches the job, so a write that
        lands by then is as good as the first try; past it, the job is left to
        be marked interrupted (its outcome is logged as lost).
        """
        delay = 0.05
        while True:
            try:
                await self.write(final, expected=record.status)
                return
            except StoreUnavailable as exc:
                lease_ends = max(record.lease_until or 0.0, self._renewed_until)
                if self._clock() + delay >= lease_ends:
                    logger.error(
                        "job %s %s, but the store stayed unavailable for its whole lease; "
                        "its outcome is lost (%s)",
                        record.id,
                        final.status,
                        exc,
                    )
                    return
                logger.warning(
                    "job %s: outcome not stored (%s); retrying in %.2f s", record.id, exc, delay
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _stopped(self, record: JobRecord) -> None:
        reason = self._stop_reasons.get(record.id, "shutdown")
        now, ttl = self._clock(), self.limits.result_ttl
        try:
            if reason == "cancel":
                final = model.cancel(record, now=now, ttl=ttl)
            else:
                final = model.interrupt(
                    record, "The worker stopped before the job finished.", now=now, ttl=ttl
                )
            await self.write(final, expected=record.status)
        except StaleRecord:
            # Finished elsewhere already (interrupted, taken over, or deleted).
            logger.info("job %s stopped (%s); its record had moved on", record.id, reason)
        except (model.InvalidTransition, StoreUnavailable):
            logger.warning(
                "job %s stopped (%s); its state could not be recorded", record.id, reason
            )

    async def write(self, record: JobRecord, *, expected: JobStatus) -> JobRecord:
        """Write a new version of a record (compare-and-set) and wake watchers."""
        if not record.status.final:
            # A copy read before the last renewal must not shorten the lease.
            fresh = self._clock() + self.limits.lease_seconds
            record = dataclasses.replace(record, lease_until=max(record.lease_until or 0, fresh))
        stored = await self.store.replace(record, expected=expected)
        if self._observer is not None and stored.status != expected:
            self._observer.observe_job(stored.kind, expected, stored.status)
        async with self._changed:
            self._changed.notify_all()
        return stored

    # Cancelling and watching

    async def cancel(self, record: JobRecord) -> JobRecord:
        """Ask a pending or running job to stop, wherever it runs; return its latest record.

        The record returned is final once the job has stopped. It may still be
        pending or running (the cancel asked for) when its worker has not acted
        within a few polls: that worker is busy, or dead with its lease not yet
        lapsed; once the lease lapses, whoever finds the job records it cancelled.
        """
        flagged = await self.store.request_cancel(record.id) or record
        task = self._tasks.get(record.id)
        if task is not None:
            self._stop_reasons[record.id] = "cancel"
            task.cancel()
        elif not flagged.status.final and await self._cancel_lapsed(flagged):
            return await self.store.get(record.id) or flagged
        async for latest in self.watch(record.id, seconds=3 * self.limits.poll_seconds + 1):
            if latest.status.final:
                return latest
        current = await self.store.get(record.id)
        if current is not None and not current.status.final and record.id not in self._tasks:
            await self._cancel_lapsed(current)
            current = await self.store.get(record.id)
        return current or flagged

    async def _cancel_lapsed(self, record: JobRecord) -> bool:
        # No worker will act on the cancel flag of a job whose worker is gone.
        now = self._clock()
        cutoff = now - self.limits.lease_seconds
        if record.lease_until is None or record.lease_until >= cutoff:
            return False
        return await self._take_over(record, now=now, cutoff=cutoff) is not None

    async def watch(self, job_id: str, *, seconds: float) -> AsyncIterator[JobRecord]:
        """Yield the job's record now and after each change, until final or ``seconds`` pass."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        previous: JobRecord | None = None
        while True:
            current = await self.store.get(job_id)
            if current is None:
                return
            if previous is None or _visible(current) != _visible(previous):
                yield current
                previous = current
            remaining = deadline - loop.time()
            if current.status.final or remaining <= 0:
                return
            # Woken early by a change made here; re-read at least every poll
            # for changes made by other workers.
            async with self._changed:
                try:
                    async with asyncio.timeout(min(remaining, self.limits.poll_seconds)):
                        await self._changed.wait()
                except TimeoutError:
                    pass

    # Maintenance

    async def _maintain(self) -> None:
        last_sweep = self._clock()
        while True:
            await asyncio.sleep(self.limits.poll_seconds)
            try:
                await self._maintain_once()
                if self._clock() - last_sweep >= self.limits.sweep_seconds:
                    last_sweep = self._clock()
                    await self._sweep(last_sweep)
            except StoreUnavailable:
                logger.warning("job store unavailable; will retry")
            except Exception:
                # The loop must survive anything; the error is logged, not hidden.
                logger.exception("job maintenance failed; will retry")

    async def _sweep(self, now: float) -> None:
        self._swept_untrimmed += await self.store.sweep(now)
        threshold = self.limits.trim_after_swept
        if threshold and self._swept_untrimmed >= threshold:
            # Freed results (in this process with the memory store, and the
            # buffers that carried them with any store) stay resident otherwise.
            # In a thread: trimming a big heap takes a few milliseconds.
            self._swept_untrimmed = 0
            await asyncio.to_thread(self._trim)

    async def _maintain_once(self) -> None:
        now = self._clock()
        mine = list(self._tasks)
        if mine:
            until = now + self.limits.lease_seconds
            await self.store.renew_leases(self.worker_id, mine, until)
            self._renewed_until = until
            # Asked to cancel, or deleted (a forgotten job must not keep running).
            for job_id in await self.store.cancel_requested(mine):
                task = self._tasks.get(job_id)
                if task is not None and job_id not in self._stop_reasons:
                    self._stop_reasons[job_id] = "cancel"
                    task.cancel()
        # A full extra lease of margin: worker clocks may differ (by less than
        # a lease), and a loop blocked for a moment must not lose its jobs.
        cutoff = now - self.limits.lease_seconds
        for candidate in await self.store.lapsed(cutoff):
            if candidate.id in self._tasks:
                continue
            await self._take_over(candidate, now=now, cutoff=cutoff)

    async def _take_over(self, lapsed: JobRecord, *, now: float, cutoff: float) -> JobRecord | None:
        """Finish a job whose worker's lease ended before ``cutoff``; None if it moved on."""
        ttl = self.limits.result_ttl
        if lapsed.cancel_requested:
            # Its owner was asked to cancel it, then died: cancelled is what was asked.
            final = model.cancel(lapsed, now=now, ttl=ttl)
        else:
            final = model.interrupt(lapsed, "The worker running the job stopped.", now=now, ttl=ttl)
        try:
            # The lease is checked by the write itself: a renewal landing since
            # the read makes it miss instead of overwriting a live job.
            stored = await self.store.replace(final, expected=lapsed.status, lease_before=cutoff)
        except (StaleRecord, model.InvalidTransition):
            return None  # renewed meanwhile, or another worker got there first
        if self._observer is not None:
            # Never active here: counted as finished, not as leaving "active".
            self._observer.observe_job(stored.kind, None, stored.status)
        async with self._changed:
            self._changed.notify_all()
        logger.info("job %s %s: its worker's lease lapsed", stored.id, stored.status)
        return stored


def _visible(record: JobRecord) -> tuple[Any, ...]:
    # What the job resource shows; lease renewals and cancel flags are not changes.
    return (record.status, record.progress, record.started_at, record.finished_at, record.error)


def _size(result: StoredResponse) -> int:
    return len(result.body) + sum(len(name) + len(value) for name, value in result.headers)


def _problem_of(result: StoredResponse) -> dict[str, Any]:
    try:
        problem = json.loads(result.body)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        problem = None
    if isinstance(problem, dict) and "status" in problem:
        return problem
    return {"type": "about:blank", "title": "Job Failed", "status": result.status}


def _same_request(existing: JobRecord, kind: str, params: Any) -> JobRecord:
    # An Idempotency-Key names one request: reusing it for another is the
    # client's mistake, never a reason to hand back an unrelated job.
    if existing.kind != kind or existing.params != params:
        raise IdempotencyConflict(existing)
    return existing


def _unwrap(group: ExceptionGroup[Exception]) -> Exception:
    """What a job whose tasks raised ``group`` raised, in effect."""
    stale = group.subgroup(StaleRecord)
    if stale is not None:
        # The record moved on (cancelled, interrupted, deleted elsewhere): any
        # write now would be stale too, whatever else the tasks raised.
        return _first(stale)
    failures, rest = group.split(JobFailure)
    if failures is not None and rest is None:
        return _first(failures)
    return group


def _error_name(error: BaseException) -> str:
    # A TaskGroup's ExceptionGroup says nothing: name what its first task raised.
    if isinstance(error, BaseExceptionGroup):
        return type(_first(error)).__name__
    return type(error).__name__


def _first(group: BaseExceptionGroup[Exception]) -> Exception:
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first
