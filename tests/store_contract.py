"""The JobStore contract as tests: every store's test class inherits them.

A subclass named ``Test...`` provides a ``store`` fixture yielding an opened
store (closed afterwards) and gets every test below run against it.
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import replace
from typing import Any

import pytest

from fanout.jobs.model import (
    JobRecord,
    JobStatus,
    Progress,
    StoredResponse,
    cancel,
    interrupt,
    new_job_id,
    start,
    succeed,
)
from fanout.jobs.store import InvalidCursor, JobStore, StaleRecord

HOUR = 3600.0


def job(**changes: Any) -> JobRecord:
    """A pending job of owner "a", created now, with ``changes`` applied."""
    base = JobRecord(
        id=new_job_id(), kind="report", owner="a", status=JobStatus.PENDING, created_at=time.time()
    )
    return replace(base, **changes)


def finished(expires_in: float, **changes: Any) -> JobRecord:
    """A succeeded job that expires ``expires_in`` seconds from now (negative: expired)."""
    now = time.time()
    done: dict[str, Any] = {
        "status": JobStatus.SUCCEEDED,
        "started_at": now - 2,
        "finished_at": now - 1,
        "expires_at": now + expires_in,
        "result": StoredResponse(200, (("content-type", "application/json"),), b"{}"),
    }
    return job(**(done | changes))


def ids(records: Any) -> list[str]:
    """The ids of ``records``, in order."""
    return [r.id for r in records]


class StoreContract:
    """What every JobStore must do; subclasses provide the ``store`` fixture."""

    async def test_ping(self, store: JobStore) -> None:
        await store.ping()

    async def test_round_trip_of_every_field(self, store: JobStore) -> None:
        record = JobRecord(
            id=new_job_id(),
            kind="aggregate:/dash",
            owner="key-1",
            status=JobStatus.SUCCEEDED,
            created_at=1_700_000_000.123456,
            params={"q": ["x", {"deep": [1, 2.5, None, True]}], "név": "ünïcode ✓"},
            progress=Progress(done=7, total=9, message="almost"),
            started_at=1_700_000_001.5,
            finished_at=1_700_000_002.25,
            expires_at=time.time() + HOUR,
            result=StoredResponse(
                status=207,
                # Order and repeats matter: they are replayed as they are.
                headers=(("x-b", "2"), ("content-type", "application/x-raw"), ("x-b", "1")),
                body=b"\xff\xfe\x00\x80not utf-8\xc3",
            ),
            error={"type": "about:blank", "title": "Bad", "status": 502, "extra": {"a": [1]}},
            idempotency_key="idem-1",
            worker="host:123",
            lease_until=1_700_000_030.75,
            cancel_requested=True,
            timeout=12.5,
        )
        assert await store.create(record) == record
        assert await store.get(record.id) == record

    async def test_round_trip_of_a_minimal_record(self, store: JobStore) -> None:
        record = job(owner=None)
        assert await store.create(record) == record
        got = await store.get(record.id)
        assert got == record
        assert got is not None
        assert got.params is None
        assert got.progress == Progress()
        assert got.result is None
        assert got.error is None

    async def test_idempotency_key_returns_the_first_job(self, store: JobStore) -> None:
        first = await store.create(job(idempotency_key="k"))
        second = job(idempotency_key="k", params={"other": True})
        assert await store.create(second) == first
        assert await store.get(second.id) is None
        page = await store.list_jobs(owner="a")
        assert ids(page.records) == [first.id]

    async def test_idempotency_key_is_per_owner(self, store: JobStore) -> None:
        of_a = await store.create(job(owner="a", idempotency_key="k"))
        of_b = await store.create(job(owner="b", idempotency_key="k"))
        ownerless = await store.create(job(owner=None, idempotency_key="k"))
        assert len({of_a.id, of_b.id, ownerless.id}) == 3
        assert await store.get(of_b.id) == of_b
        assert await store.get(ownerless.id) == ownerless
        # Ownerless jobs share one owner (none), so their key dedups too.
        assert await store.create(job(owner=None, idempotency_key="k")) == ownerless
        assert await store.create(job(owner="b", idempotency_key="k")) == of_b

    async def test_idempotency_key_of_an_expired_job_is_free(self, store: JobStore) -> None:
        old = await store.create(finished(-1, idempotency_key="k"))
        new = job(idempotency_key="k")
        assert await store.create(new) == new
        assert await store.get(new.id) == new
        assert await store.get(old.id) is None

    async def test_jobs_without_key_are_never_merged(self, store: JobStore) -> None:
        one, two = job(params={"n": 1}), job(params={"n": 1})
        assert await store.create(one) == one
        assert await store.create(two) == two
        assert await store.get(one.id) == one
        assert await store.get(two.id) == two

    async def test_get_unknown_is_none(self, store: JobStore) -> None:
        assert await store.get(new_job_id()) is None

    async def test_get_expired_is_none(self, store: JobStore) -> None:
        expired = await store.create(finished(-1))
        alive = await store.create(finished(HOUR))
        assert await store.get(expired.id) is None
        assert await store.get(alive.id) == alive

    async def test_replace_writes_when_expected_status_matches(self, store: JobStore) -> None:
        record = await store.create(job())
        now = time.time()
        running = start(record, worker="w1", now=now, lease_until=now + 30)
        assert await store.replace(running, expected=JobStatus.PENDING) == running
        assert await store.get(record.id) == running
        done = succeed(running, StoredResponse(200, (), b"ok"), now=now + 1, ttl=HOUR)
        assert await store.replace(done, expected=JobStatus.RUNNING) == done
        assert await store.get(record.id) == done

    async def test_replace_with_wrong_expected_status_is_stale(self, store: JobStore) -> None:
        record = await store.create(job())
        now = time.time()
        running = start(record, worker="w1", now=now, lease_until=now + 30)
        with pytest.raises(StaleRecord):
            await store.replace(running, expected=JobStatus.RUNNING)
        assert await store.get(record.id) == record

    async def test_replace_of_a_deleted_job_is_stale(self, store: JobStore) -> None:
        record = await store.create(job())
        assert await store.delete(record.id)
        now = time.time()
        running = start(record, worker="w1", now=now, lease_until=now + 30)
        with pytest.raises(StaleRecord):
            await store.replace(running, expected=JobStatus.PENDING)
        assert await store.get(record.id) is None

    async def test_replace_keeps_a_cancel_requested_since_the_read(self, store: JobStore) -> None:
        # The runner writes progress from the copy it read before the cancel
        # arrived; the cancel must not be lost.
        now = time.time()
        running = start(await store.create(job()), worker="w1", now=now, lease_until=now + 30)
        await store.replace(running, expected=JobStatus.PENDING)
        assert await store.request_cancel(running.id) is not None
        progressed = replace(running, progress=Progress(done=1))
        written = await store.replace(progressed, expected=JobStatus.RUNNING)
        assert written == replace(progressed, cancel_requested=True)
        assert await store.get(running.id) == written
        assert await store.cancel_requested([running.id]) == {running.id}

    async def test_request_cancel_of_running_and_pending_jobs(self, store: JobStore) -> None:
        now = time.time()
        pending = await store.create(job())
        running = start(await store.create(job()), worker="w1", now=now, lease_until=now + 30)
        await store.replace(running, expected=JobStatus.PENDING)
        for record in (pending, running):
            flagged = await store.request_cancel(record.id)
            assert flagged == replace(record, cancel_requested=True)
            assert await store.get(record.id) == flagged
            # Asking again changes nothing.
            assert await store.request_cancel(record.id) == flagged

    async def test_request_cancel_of_a_finished_job_changes_nothing(self, store: JobStore) -> None:
        record = await store.create(finished(HOUR))
        assert await store.request_cancel(record.id) == record
        assert await store.get(record.id) == record
        assert await store.cancel_requested([record.id]) == set()

    async def test_request_cancel_of_unknown_or_expired_is_none(self, store: JobStore) -> None:
        assert await store.request_cancel(new_job_id()) is None
        expired = await store.create(finished(-1))
        assert await store.request_cancel(expired.id) is None

    async def test_delete(self, store: JobStore) -> None:
        record = await store.create(job())
        other = await store.create(job())
        assert await store.delete(record.id) is True
        assert await store.get(record.id) is None
        assert await store.delete(record.id) is False
        assert await store.delete(new_job_id()) is False
        assert await store.get(other.id) == other

    async def test_delete_frees_the_idempotency_key(self, store: JobStore) -> None:
        first = await store.create(job(idempotency_key="k"))
        assert await store.delete(first.id)
        second = job(idempotency_key="k")
        assert await store.create(second) == second

    async def test_list_is_newest_first_then_by_id(self, store: JobStore) -> None:
        t = time.time() - 100
        records = [
            job(id="1" * 32, created_at=t + 1),
            job(id="3" * 32, created_at=t + 2),
            job(id="2" * 32, created_at=t + 2),
            job(id="4" * 32, created_at=t),
            job(id="0" * 32, created_at=t + 3),
        ]
        for record in records:
            await store.create(record)
        page = await store.list_jobs(owner="a")
        assert ids(page.records) == ["0" * 32, "3" * 32, "2" * 32, "1" * 32, "4" * 32]
        assert page.records == sorted(records, key=lambda r: (r.created_at, r.id), reverse=True)
        assert page.next_cursor is None

    async def test_list_filters_by_status_and_kind(self, store: JobStore) -> None:
        t = time.time() - 100
        pending_report = await store.create(job(kind="report", created_at=t))
        pending_export = await store.create(job(kind="export", created_at=t + 1))
        done_report = await store.create(finished(HOUR, kind="report", created_at=t + 2))
        done_export = await store.create(finished(HOUR, kind="export", created_at=t + 3))

        async def listed(status: JobStatus | None, kind: str | None) -> list[str]:
            return ids((await store.list_jobs(owner="a", status=status, kind=kind)).records)

        pending, done = JobStatus.PENDING, JobStatus.SUCCEEDED
        assert await listed(pending, None) == [pending_export.id, pending_report.id]
        assert await listed(done, None) == [done_export.id, done_report.id]
        assert await listed(None, "report") == [done_report.id, pending_report.id]
        assert await listed(done, "export") == [done_export.id]
        assert await listed(JobStatus.FAILED, None) == []
        assert await listed(None, "nothing") == []

    async def test_list_shows_only_the_owners_jobs(self, store: JobStore) -> None:
        t = time.time() - 100
        of_a = [await store.create(job(owner="a", created_at=t + i)) for i in range(3)]
        of_b = [await store.create(job(owner="b", created_at=t + i)) for i in range(3)]
        ownerless = [await store.create(job(owner=None, created_at=t + i)) for i in range(3)]
        of_ab = await store.create(job(owner="ab", created_at=t + 10))
        assert ids((await store.list_jobs(owner="a")).records) == ids(reversed(of_a))
        assert ids((await store.list_jobs(owner="b")).records) == ids(reversed(of_b))
        assert ids((await store.list_jobs(owner=None)).records) == ids(reversed(ownerless))
        assert ids((await store.list_jobs(owner="ab")).records) == [of_ab.id]
        assert (await store.list_jobs(owner="")).records == []
        assert (await store.list_jobs(owner="c")).records == []

    async def test_list_paginates_across_three_pages(self, store: JobStore) -> None:
        t = time.time() - 100
        created = [await store.create(job(created_at=t + i)) for i in range(7)]
        # Noise that must never show up, interleaved in time.
        for i in range(7):
            await store.create(job(owner="b", created_at=t + i + 0.5))
            await store.create(job(owner=None, created_at=t + i))
        newest_first = ids(reversed(created))

        first = await store.list_jobs(owner="a", limit=3)
        assert ids(first.records) == newest_first[0:3]
        assert first.next_cursor is not None
        second = await store.list_jobs(owner="a", limit=3, cursor=first.next_cursor)
        assert ids(second.records) == newest_first[3:6]
        assert second.next_cursor is not None
        third = await store.list_jobs(owner="a", limit=3, cursor=second.next_cursor)
        assert ids(third.records) == newest_first[6:7]
        assert third.next_cursor is None

    async def test_list_last_full_page_has_no_cursor(self, store: JobStore) -> None:
        t = time.time() - 100
        created = [await store.create(job(created_at=t + i)) for i in range(6)]
        first = await store.list_jobs(owner="a", limit=3)
        assert first.next_cursor is not None
        second = await store.list_jobs(owner="a", limit=3, cursor=first.next_cursor)
        assert ids(second.records) == ids(reversed(created[:3]))
        assert second.next_cursor is None

    async def test_list_pages_keep_filters_and_survive_new_jobs(self, store: JobStore) -> None:
        t = time.time() - 100
        reports = [await store.create(job(kind="report", created_at=t + i)) for i in range(4)]
        for i in range(4):
            await store.create(job(kind="export", created_at=t + i + 0.5))
        first = await store.list_jobs(owner="a", kind="report", limit=2)
        assert ids(first.records) == ids([reports[3], reports[2]])
        # A job created meanwhile is newer than the cursor: it moves nothing.
        await store.create(job(kind="report"))
        assert first.next_cursor is not None
        second = await store.list_jobs(owner="a", kind="report", limit=2, cursor=first.next_cursor)
        assert ids(second.records) == ids([reports[1], reports[0]])

    @pytest.mark.parametrize(
        "cursor",
        [
            "",
            "garbage",
            "%%%%",
            "bm90IGpzb24",  # base64 of "not json"
            base64.urlsafe_b64encode(b'{"a": 1}').decode(),
            base64.urlsafe_b64encode(b"[1]").decode(),
            base64.urlsafe_b64encode(b'["x", "y"]').decode(),
            base64.urlsafe_b64encode(b'[1.5, 2, "z"]').decode(),
            base64.urlsafe_b64encode(b'[NaN, "x"]').decode(),
            base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        ],
    )
    async def test_list_refuses_a_cursor_it_did_not_make(
        self, store: JobStore, cursor: str
    ) -> None:
        await store.create(job())
        with pytest.raises(InvalidCursor):
            await store.list_jobs(owner="a", cursor=cursor)

    async def test_list_hides_expired_jobs(self, store: JobStore) -> None:
        await store.create(finished(-1))
        alive = await store.create(finished(HOUR))
        assert ids((await store.list_jobs(owner="a")).records) == [alive.id]

    async def test_renew_leases_only_of_that_workers_active_jobs(self, store: JobStore) -> None:
        now = time.time()
        mine = start(await store.create(job()), worker="w1", now=now, lease_until=now + 5)
        theirs = start(await store.create(job()), worker="w2", now=now, lease_until=now + 5)
        queued = replace(await store.create(job()), worker="w1", lease_until=now + 5)
        for record in (mine, theirs, queued):
            await store.replace(record, expected=JobStatus.PENDING)
        done = cancel(mine, now=now, ttl=HOUR)
        done = await store.create(replace(done, id=new_job_id(), lease_until=now + 5))
        unknown = new_job_id()

        await store.renew_leases("w1", [mine.id, theirs.id, queued.id, done.id, unknown], now + 60)
        assert await store.get(mine.id) == replace(mine, lease_until=now + 60)
        assert await store.get(queued.id) == replace(queued, lease_until=now + 60)
        assert await store.get(theirs.id) == theirs
        assert await store.get(done.id) == done
        assert await store.get(unknown) is None
        await store.renew_leases("w1", [], now + 90)

    async def test_cancel_requested(self, store: JobStore) -> None:
        flagged = [await store.create(job()) for _ in range(3)]
        quiet = [await store.create(job()) for _ in range(3)]
        for record in flagged:
            await store.request_cancel(record.id)
        asked = [*ids(flagged), *ids(quiet)]
        assert await store.cancel_requested(asked) == set(ids(flagged))
        assert await store.cancel_requested(ids(quiet)) == set()
        assert await store.cancel_requested([]) == set()

    async def test_cancel_requested_includes_deleted_jobs(self, store: JobStore) -> None:
        # DELETE forgets a job that may still run elsewhere: its worker must
        # stop it, though the record (and its cancel flag) is gone.
        now = time.time()
        running = start(await store.create(job()), worker="w", now=now, lease_until=now + 30)
        await store.replace(running, expected=JobStatus.PENDING)
        quiet = await store.create(job())
        never = new_job_id()
        assert await store.delete(running.id)
        assert await store.cancel_requested([running.id, quiet.id, never]) == {running.id, never}

    async def test_a_renewal_after_the_read_beats_the_lapse_write(self, store: JobStore) -> None:
        # Another worker read the job as lapsed; the owner renews its lease
        # before that worker writes: the interrupting write must lose.
        now = time.time()
        running = start(await store.create(job()), worker="w", now=now, lease_until=now - 5)
        await store.replace(running, expected=JobStatus.PENDING)
        (seen,) = await store.lapsed(now)
        await store.renew_leases("w", [running.id], now + 30)
        taken_over = interrupt(seen, "lapsed", now=now, ttl=HOUR)
        with pytest.raises(StaleRecord):
            await store.replace(taken_over, expected=JobStatus.RUNNING, lease_before=now)
        assert await store.get(running.id) == replace(running, lease_until=now + 30)

    async def test_a_lapse_write_on_a_lapsed_lease_lands(self, store: JobStore) -> None:
        now = time.time()
        running = start(await store.create(job()), worker="w", now=now, lease_until=now - 5)
        await store.replace(running, expected=JobStatus.PENDING)
        no_lease = await store.create(job())  # a lease of None never counts as lapsed
        taken_over = interrupt(running, "lapsed", now=now, ttl=HOUR)
        written = await store.replace(taken_over, expected=JobStatus.RUNNING, lease_before=now)
        assert await store.get(running.id) == written
        assert written.status is JobStatus.INTERRUPTED
        with pytest.raises(StaleRecord):
            await store.replace(
                interrupt(no_lease, "lapsed", now=now, ttl=HOUR),
                expected=JobStatus.PENDING,
                lease_before=now,
            )
        assert await store.get(no_lease.id) == no_lease

    async def test_find_by_key(self, store: JobStore) -> None:
        of_a = await store.create(job(owner="a", idempotency_key="k"))
        ownerless = await store.create(job(owner=None, idempotency_key="k"))
        await store.create(finished(-1, owner="a", idempotency_key="gone"))
        assert await store.find_by_key("a", "k") == of_a
        assert await store.find_by_key(None, "k") == ownerless
        assert await store.find_by_key("b", "k") is None
        assert await store.find_by_key("a", "other") is None
        assert await store.find_by_key("a", "gone") is None  # expired
        assert await store.delete(of_a.id)
        assert await store.find_by_key("a", "k") is None

    async def test_lapsed(self, store: JobStore) -> None:
        now = time.time()
        running_lapsed = start(await store.create(job()), worker="w", now=now, lease_until=now - 1)
        running_held = start(await store.create(job()), worker="w", now=now, lease_until=now + 30)
        pending_lapsed = replace(await store.create(job()), worker="w", lease_until=now - 1)
        pending_held = replace(await store.create(job()), worker="w", lease_until=now + 30)
        for record in (running_lapsed, running_held, pending_lapsed, pending_held):
            await store.replace(record, expected=JobStatus.PENDING)
        # A finished job keeps a past lease only if someone wrote it so: still not lapsed.
        await store.create(finished(HOUR, worker="w", lease_until=now - 1))
        await store.create(job(status=JobStatus.FAILED, worker="w", lease_until=now - 1))

        lapsed = await store.lapsed(now)
        assert sorted(ids(lapsed)) == sorted([running_lapsed.id, pending_lapsed.id])
        assert {r.id: r for r in lapsed} == {
            running_lapsed.id: running_lapsed,
            pending_lapsed.id: pending_lapsed,
        }
        assert await store.lapsed(now - 10) == []

    async def test_sweep_deletes_only_expired_finished_jobs(self, store: JobStore) -> None:
        now = time.time()
        expired = [await store.create(finished(-10)) for _ in range(3)]
        alive = await store.create(finished(HOUR))
        pending = await store.create(job())
        # Odd, but only finished jobs are swept, whatever their expires_at says.
        running = await store.create(
            job(status=JobStatus.RUNNING, worker="w", lease_until=now + 30, expires_at=now - 10)
        )
        assert await store.sweep(now) == 3
        assert await store.sweep(now) == 0
        for record in expired:
            assert await store.delete(record.id) is False
        assert await store.get(alive.id) == alive
        assert await store.get(pending.id) == pending
        assert await store.sweep(now + 2 * HOUR) == 1
        assert await store.get(pending.id) == pending
        assert await store.delete(running.id) is True

    async def test_count_active_counts_pending_and_running_by_kind(self, store: JobStore) -> None:
        now = time.time()
        # As the registry makes them: every active job holds its worker's lease.
        for kind in ("report", "report", "batch"):
            await store.create(job(kind=kind, worker="w", lease_until=now + 30))
        running = await store.create(job(worker="w", lease_until=now + 30))
        await store.replace(
            start(running, worker="w", now=now, lease_until=now + 30), expected=JobStatus.PENDING
        )
        await store.create(finished(HOUR, kind="batch"))
        gone = await store.create(job(kind="batch", worker="w", lease_until=now + 30))
        await store.delete(gone.id)
        assert await store.count_active() == {
            ("report", "pending"): 2,
            ("batch", "pending"): 1,
            ("report", "running"): 1,
        }

    async def test_concurrent_replaces_let_exactly_one_win(self, store: JobStore) -> None:
        record = await store.create(job())
        now = time.time()
        attempts = [start(record, worker=f"w{i}", now=now, lease_until=now + 30) for i in range(20)]
        outcomes = await asyncio.gather(
            *(store.replace(a, expected=JobStatus.PENDING) for a in attempts),
            return_exceptions=True,
        )
        winners = [o for o in outcomes if isinstance(o, JobRecord)]
        assert len(winners) == 1
        assert sum(isinstance(o, StaleRecord) for o in outcomes) == 19
        assert await store.get(record.id) == winners[0]
