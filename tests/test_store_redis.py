"""RedisStore: the JobStore contract on a real Redis, plus what only Redis adds.

Needs a Redis server on 127.0.0.1:6379 and starts one if none answers (never
skips). Each test works under its own key prefix and deletes its keys after.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection

from fanout.jobs.model import (
    JobRecord,
    JobStatus,
    Progress,
    StoredResponse,
    new_job_id,
    report_progress,
    start,
    succeed,
)
from fanout.jobs.redis_store import RedisStore
from fanout.jobs.store import InvalidCursor, StaleRecord, StoreUnavailable
from tests.redis_server import (
    REDIS_HOST,
    REDIS_PORT,
    REDIS_URL,
    _free_port,
    _keys,
    _wait_until_answers,
)
from tests.store_contract import HOUR, StoreContract, finished, ids, job

HOST, PORT, URL = REDIS_HOST, REDIS_PORT, REDIS_URL


@pytest.fixture
async def store(redis_url: str, prefix: str) -> AsyncIterator[RedisStore]:
    """An opened RedisStore (one "machine") under the test's prefix."""
    opened = RedisStore(redis_url, prefix=prefix)
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
async def other(redis_url: str, prefix: str) -> AsyncIterator[RedisStore]:
    """A second RedisStore on the same server and prefix: another machine."""
    opened = RedisStore(redis_url, prefix=prefix)
    await opened.open()
    yield opened
    await opened.close()


class TestRedisStore(StoreContract):
    """The shared JobStore contract, run against RedisStore."""


# Several machines


async def test_two_instances_see_each_others_writes(store: RedisStore, other: RedisStore) -> None:
    record = await store.create(job())
    assert await other.get(record.id) == record
    now = time.time()
    running = start(record, worker="b", now=now, lease_until=now + 30)
    assert await other.replace(running, expected=JobStatus.PENDING) == running
    assert await store.get(record.id) == running
    assert ids((await other.list_jobs(owner="a")).records) == [record.id]
    assert await other.delete(record.id)
    assert await store.get(record.id) is None


async def test_compare_and_set_holds_across_instances(store: RedisStore, other: RedisStore) -> None:
    record = await store.create(job())
    now = time.time()
    attempts = [
        (store if i % 2 else other).replace(
            start(record, worker=f"w{i}", now=now, lease_until=now + 30),
            expected=JobStatus.PENDING,
        )
        for i in range(20)
    ]
    outcomes = await asyncio.gather(*attempts, return_exceptions=True)
    winners = [o for o in outcomes if isinstance(o, JobRecord)]
    assert len(winners) == 1
    assert sum(isinstance(o, StaleRecord) for o in outcomes) == 19
    assert await other.get(record.id) == winners[0]


async def test_a_cancel_sent_to_one_instance_reaches_the_other(
    store: RedisStore, other: RedisStore
) -> None:
    now = time.time()
    running = start(await store.create(job()), worker="a", now=now, lease_until=now + 30)
    await store.replace(running, expected=JobStatus.PENDING)
    assert await store.cancel_requested([running.id]) == set()
    flagged = await other.request_cancel(running.id)
    assert flagged is not None
    assert flagged.cancel_requested
    assert await store.cancel_requested([running.id]) == {running.id}


async def test_concurrent_creates_with_one_idempotency_key_make_one_job(
    store: RedisStore, other: RedisStore
) -> None:
    attempts = [job(idempotency_key="same") for _ in range(20)]
    created = await asyncio.gather(
        *((store if i % 2 else other).create(a) for i, a in enumerate(attempts))
    )
    assert len({r.id for r in created}) == 1
    assert ids((await store.list_jobs(owner="a")).records) == [created[0].id]


# Redis specifics


async def test_a_lease_renewed_meanwhile_survives_a_write_from_an_older_copy(
    store: RedisStore,
) -> None:
    # The runner keeps the record it started with and writes progress from
    # it; renew_leases has moved the lease on in the store since.
    now = time.time()
    running = start(await store.create(job()), worker="w", now=now, lease_until=now + 5)
    await store.replace(running, expected=JobStatus.PENDING)
    await store.renew_leases("w", [running.id], now + 60)
    progressed = report_progress(running, Progress(done=1))
    written = await store.replace(progressed, expected=JobStatus.RUNNING)
    assert written == replace(progressed, lease_until=now + 60)
    assert await store.get(running.id) == written
    assert await store.lapsed(now + 10) == []
    # Finishing clears the lease whatever the store held.
    done = succeed(written, StoredResponse(200, (), b""), now=now + 1, ttl=HOUR)
    assert (await store.replace(done, expected=JobStatus.RUNNING)).lease_until is None
    assert await store.lapsed(now + 100) == []


async def test_owner_names_cannot_collide_in_keys(store: RedisStore) -> None:
    owners = [None, "-", "=", "=-", "a:b", "a", "a%3Ab", "ü", ""]
    made = {owner: await store.create(job(owner=owner, idempotency_key="k:1")) for owner in owners}
    assert len({r.id for r in made.values()}) == len(owners)
    for owner, record in made.items():
        assert ids((await store.list_jobs(owner=owner)).records) == [record.id]
        assert await store.create(job(owner=owner, idempotency_key="k:1")) == record


async def test_creating_an_existing_id_again_is_refused(store: RedisStore) -> None:
    record = await store.create(job())
    # The very same record again (a retried write) answers it, changes nothing.
    assert await store.create(record) == record
    with pytest.raises(ValueError, match="already exists"):
        await store.create(replace(record, kind="other"))
    assert await store.get(record.id) == record


async def test_idempotency_key_lives_as_long_as_its_job(
    store: RedisStore, redis_url: str, prefix: str
) -> None:
    now = time.time()
    record = await store.create(job(idempotency_key="k"))
    client = Redis.from_url(redis_url)
    try:
        idem = f"{prefix}idem:=a:k"
        assert await client.get(idem) == record.id.encode()
        assert await client.pttl(idem) == -1  # no expiry while the job runs
        running = start(record, worker="w", now=now, lease_until=now + 30)
        await store.replace(running, expected=JobStatus.PENDING)
        done = succeed(running, StoredResponse(200, (), b""), now=now, ttl=60)
        await store.replace(done, expected=JobStatus.RUNNING)
        assert 0 < await client.pttl(idem) <= 61_000
    finally:
        await client.aclose()


async def test_a_full_life_leaves_no_keys_behind(
    store: RedisStore, redis_url: str, prefix: str
) -> None:
    now = time.time()
    record = await store.create(job(idempotency_key="k"))
    running = start(record, worker="w", now=now, lease_until=now + 30)
    await store.replace(running, expected=JobStatus.PENDING)
    await store.request_cancel(record.id)
    done = succeed(running, StoredResponse(200, (), b"x"), now=now, ttl=60)
    await store.replace(done, expected=JobStatus.RUNNING)
    deleted = await store.create(job(owner=None, idempotency_key="k"))
    assert await _keys(redis_url, prefix) != []
    assert await store.delete(deleted.id)
    assert await store.sweep(now + 61) == 1
    assert await _keys(redis_url, prefix) == []


async def test_cancel_requested_for_hundreds_of_ids_is_one_round_trip(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = await asyncio.gather(*(store.create(job()) for _ in range(300)))
    for record in records[::7]:
        await store.request_cancel(record.id)
    # Counted, not timed: every write to the server goes through this method
    # (the real one still runs).
    sends: list[object] = []
    send = AbstractConnection.send_packed_command

    async def counted(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        sends.append(command)
        await send(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)
    flagged = await store.cancel_requested(ids(records))
    monkeypatch.undo()
    assert len(sends) == 1  # one pipelined round trip for 300 ids
    assert flagged == set(ids(records[::7]))


async def test_listing_a_large_owner_with_a_rare_filter(store: RedisStore) -> None:
    t = time.time() - 1000
    records = [job(created_at=t + i, kind="rare" if i % 100 == 0 else "common") for i in range(350)]
    await asyncio.gather(*(store.create(r) for r in records))
    rare = [r for r in reversed(records) if r.kind == "rare"]
    first = await store.list_jobs(owner="a", kind="rare", limit=2)
    assert ids(first.records) == ids(rare[:2])
    assert first.next_cursor is not None
    second = await store.list_jobs(owner="a", kind="rare", limit=2, cursor=first.next_cursor)
    assert ids(second.records) == ids(rare[2:4])
    assert second.next_cursor is None


async def test_created_at_order_is_exact_below_a_microsecond(store: RedisStore) -> None:
    t = 1_700_000_000.0
    close = [job(id=f"{i:032x}", created_at=t + i * 2.5e-7) for i in range(4)]
    negative = job(id="f" * 32, created_at=-5.0)
    for record in [*close, negative]:
        await store.create(record)
    listed = (await store.list_jobs(owner="a")).records
    assert ids(listed) == [*ids(reversed(close)), negative.id]


async def test_a_garbage_cursor_is_refused(store: RedisStore) -> None:
    with pytest.raises(InvalidCursor):
        await store.list_jobs(owner="a", cursor="c1.nonsense")


# Failures


async def test_nothing_listening_fails_fast() -> None:
    dead = RedisStore("redis://127.0.0.1:1/0")
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(StoreUnavailable):
        await dead.open()
    assert loop.time() - began < 10  # fails fast; generous, the machine is shared
    with pytest.raises(RuntimeError, match="not open"):
        await dead.get(new_job_id())
    await dead.close()


async def test_a_server_that_never_answers_fails_in_about_the_timeout() -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # reads everything, answers nothing
        writer.close()

    server = await asyncio.start_server(mute, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        silent = RedisStore(f"redis://{HOST}:{port}/0", timeout=0.5)
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(StoreUnavailable):
            await silent.open()
        assert loop.time() - began < 10  # fails fast; generous, the machine is shared
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[int]:
    """A redis-server of this test's own, on a free port; stopped afterwards."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed")
    port = _free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"],
        cwd=tmp_path,  # whatever it might write stays out of the project
        stdout=subprocess.DEVNULL,
    )
    try:
        if not _wait_until_answers(port):
            pytest.fail(f"redis-server on port {port} does not answer")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


async def test_a_server_that_dies_makes_calls_fail_fast(own_server: int) -> None:
    mortal = RedisStore(f"redis://{HOST}:{own_server}/0", prefix="fanout-test:")
    await mortal.open()
    try:
        record = await mortal.create(job())
        client = Redis.from_url(f"redis://{HOST}:{own_server}/0")
        await client.shutdown(nosave=True)  # the server exits, dropping the store's connections
        await client.aclose()
        loop = asyncio.get_running_loop()
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: mortal.get(record.id),
            mortal.ping,
            lambda: mortal.sweep(time.time()),
            lambda: mortal.cancel_requested([record.id]),
        ]
        for call in calls:
            began = loop.time()
            with pytest.raises(StoreUnavailable):
                await call()
            assert loop.time() - began < 10  # fails fast; generous, the machine is shared
    finally:
        await mortal.close()


# Size


@pytest.mark.timeout(180)
async def test_sweep_removes_ten_thousand_big_jobs_and_every_key(
    store: RedisStore, redis_url: str, prefix: str
) -> None:
    body = secrets.token_bytes(10 * 1024)
    now = time.time()
    for _ in range(100):
        batch = [finished(HOUR, result=StoredResponse(200, (), body)) for _ in range(100)]
        await asyncio.gather(*(store.create(r) for r in batch))
    assert len(await _keys(redis_url, prefix)) == 10_000 + 2  # jobs, owner index, expiries
    assert await store.sweep(now) == 0
    assert await store.sweep(now + 2 * HOUR) == 10_000
    assert await _keys(redis_url, prefix) == []


async def test_records_written_without_the_kind_field_are_still_counted(store: RedisStore) -> None:
    now = time.time()
    record = await store.create(job(kind="batch", worker="w", lease_until=now + 30))
    # As a record written before kind was kept beside data.
    await store.redis.hdel(store._job_key(record.id), "kind")
    assert await store.count_active() == {("batch", "pending"): 1}
