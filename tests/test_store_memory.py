"""MemoryStore against the store contract, and the memory:// URL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from fanout.jobs.memory_store import MemoryStore, decode_cursor, encode_cursor
from fanout.jobs.store import InvalidCursor, JobStore
from fanout.jobs.store_factory import open_store_from_url
from tests.store_contract import StoreContract, finished, job


class TestMemoryStore(StoreContract):
    """The contract, in memory."""

    @pytest.fixture
    async def store(self) -> AsyncIterator[JobStore]:
        store = MemoryStore()
        await store.open()
        yield store
        await store.close()


async def test_sweep_frees_memory() -> None:
    store = MemoryStore()
    for _ in range(50):
        await store.create(finished(-1, idempotency_key="k"))
    live = await store.create(finished(3600, idempotency_key="other"))
    # Each create replaced the expired job holding its key; sweep takes the last.
    assert await store.sweep(live.created_at) == 1
    assert list(store._records) == [live.id]
    assert store._keys == {("a", "other"): live.id}


async def test_limit_must_be_positive() -> None:
    store = MemoryStore()
    await store.create(job())
    with pytest.raises(ValueError, match="limit"):
        await store.list_jobs(owner="a", limit=0)


def test_cursor_round_trip() -> None:
    for created_at, job_id in [(0.0, ""), (1_700_000_000.123456, "f" * 32), (1e-7, "é/+=")]:
        cursor = encode_cursor(created_at, job_id)
        assert "=" not in cursor
        assert decode_cursor(cursor) == (created_at, job_id)
    with pytest.raises(InvalidCursor):
        decode_cursor(encode_cursor(1.0, "x") + "!")


def test_memory_url() -> None:
    assert isinstance(open_store_from_url("memory://"), MemoryStore)
    with pytest.raises(ValueError, match="memory://"):
        open_store_from_url("memory://somewhere")


@pytest.mark.parametrize("url", ["postgres://db/jobs", "http://x", "jobs.db", ""])
def test_unknown_url_scheme(url: str) -> None:
    with pytest.raises(ValueError, match="scheme"):
        open_store_from_url(url)
