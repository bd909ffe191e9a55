"""Mark the jobs of workers that died as interrupted, at once (not after their leases lapse)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import urlsplit

from fanout.jobs import model
from fanout.jobs.store import JobStore, StaleRecord, StoreUnavailable
from fanout.jobs.store_factory import open_store_from_url

logger = logging.getLogger(__name__)

#: Past every lease: asking for the jobs whose lease ends before then lists all active ones.
_EVERY_LEASE_SECONDS = 10 * 365 * 24 * 3600.0
#: How long the supervisor waits for the store before leaving it to the leases.
STORE_TIMEOUT_SECONDS = 5.0
REASON = "The worker running the job stopped."


@dataclass(frozen=True)
class JobStoreRef:
    """The job store the workers share, and how long finished jobs are kept."""

    url: str
    result_ttl: float

    @property
    def shared(self) -> bool:
        """False for memory://: a worker's jobs die with it, nothing is left to mark."""
        return urlsplit(self.url).scheme.lower() != "memory"


async def interrupt_jobs(store: JobStore, workers: Collection[str], ttl: float) -> int:
    """Mark the pending and running jobs of ``workers`` interrupted; return how many."""
    now = time.time()
    marked = 0
    for record in await store.lapsed(now + _EVERY_LEASE_SECONDS):
        if record.worker not in workers:
            continue
        final = model.interrupt(record, REASON, now=now, ttl=ttl)
        try:
            await store.replace(final, expected=record.status)
        except (StaleRecord, model.InvalidTransition):
            continue  # finished meanwhile, or deleted
        marked += 1
    return marked


async def _interrupt_in(ref: JobStoreRef, workers: Collection[str]) -> int:
    store = open_store_from_url(ref.url)
    await store.open()
    try:
        return await interrupt_jobs(store, workers, ref.result_ttl)
    finally:
        await store.close()


def interrupt_jobs_of(ref: JobStoreRef, workers: Collection[str]) -> int:
    """From sync code: mark the jobs of ``workers`` interrupted (0 if the store fails)."""
    if not ref.shared or not workers:
        return 0
    try:
        return asyncio.run(asyncio.wait_for(_interrupt_in(ref, workers), STORE_TIMEOUT_SECONDS))
    except (StoreUnavailable, TimeoutError, OSError) as exc:
        # Not lost: the leases lapse and a live worker marks them then.
        logger.warning("could not mark the jobs of a dead worker interrupted: %s", exc)
        return 0
