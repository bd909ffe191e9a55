"""clients.upstream.call_upstream: one call under a total deadline, against the fault upstream."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from clients.errors import UpstreamTimeout, UpstreamUnavailable
from clients.session import SessionLimits, open_session
from clients.upstream import call_upstream
from tests.fault_upstream import FaultUpstream, fault_upstream


@pytest.fixture
async def faults() -> AsyncIterator[FaultUpstream]:
    """The fault upstream, without its gzip bomb (not needed here)."""
    async with fault_upstream() as state:
        yield state


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A session built as the app builds its shared one."""
    opened = open_session(SessionLimits())
    async with opened:
        yield opened


async def test_an_answer_within_the_deadline_is_returned(
    faults: FaultUpstream, session: aiohttp.ClientSession
) -> None:
    reply = await call_upstream(session, "faults", "GET", f"{faults.url}/json?ms=10", deadline=10)
    assert reply.status == 200
    assert reply.json()["path"] == "/json"


async def test_an_upstream_slower_than_the_deadline_times_out_at_the_deadline(
    faults: FaultUpstream, session: aiohttp.ClientSession
) -> None:
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout, match=r"faults did not answer within 0.2s"):
        await call_upstream(session, "faults", "GET", f"{faults.url}/json?ms=5000", deadline=0.2)
    # Well before the upstream's 5 s (generous slack: the machine is shared).
    assert time.monotonic() - started < 3.0


async def test_the_deadline_covers_reading_the_body_not_just_the_headers(
    faults: FaultUpstream, session: aiohttp.ClientSession
) -> None:
    # Headers at once, then a byte a second for a minute: only a total
    # deadline catches it.
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await call_upstream(session, "faults", "GET", f"{faults.url}/trickle", deadline=0.5)
    assert time.monotonic() - started < 5.0
    assert faults.hits["/trickle"] == 1


async def test_an_upstream_that_never_answers_is_cancelled_at_the_deadline(
    faults: FaultUpstream, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(UpstreamTimeout):
        await call_upstream(session, "faults", "GET", f"{faults.url}/never", deadline=0.2)
    assert faults.hits["/never"] == 1


async def test_a_broken_connection_is_unavailable_not_a_timeout(
    faults: FaultUpstream, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(UpstreamUnavailable):
        await call_upstream(session, "faults", "GET", f"{faults.url}/reset", deadline=5)
