"""clients.upstream(name) in plain asyncio code: no Flask, upstreams set by open_upstreams."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

import clients
from clients import (
    UnknownUpstream,
    UpstreamsNotSet,
    UpstreamTimeout,
    deadline,
    gather,
    http_session,
    open_upstreams,
    upstream,
)
from clients.safety import blocked_cause
from fanout.core.config import UpstreamConfig
from tests.test_upstream_api import backend_serving


async def test_upstream_works_in_plain_asyncio_code() -> None:
    async with backend_serving() as backend:
        configs = [
            UpstreamConfig(name="ok", base_url=f"{backend.url}/ok", internal=True),
            UpstreamConfig(name="slow", base_url=f"{backend.url}/slow", timeout=4, internal=True),
        ]
        async with open_upstreams(configs):
            reply = await upstream("ok").get("/a b?q=1")
            assert reply.status == 200
            assert reply.raise_for_status().json() == {"path": "/ok/a b", "query": "q=1"}
            assert reply.headers["Content-Type"] == "application/json; charset=utf-8"
            # Several at once: each one's reply or error, never raised.
            started = time.monotonic()
            with deadline(0.3):
                results = await gather(
                    {"ok": upstream("ok").get("/"), "slow": upstream("slow").get("/")}
                )
            assert time.monotonic() - started < 3  # the deadline, not slow's 4 s
            ok, slow = results["ok"], results["slow"]
            assert not isinstance(ok, clients.UpstreamError) and ok.status == 200
            assert isinstance(slow, UpstreamTimeout)
            with pytest.raises(UnknownUpstream, match=r"'nope'.*'ok', 'slow'") as unknown:
                upstream("nope")
            assert isinstance(unknown.value, LookupError)
            # The raw session: configured origins only.
            with pytest.raises(aiohttp.ClientError) as refused:
                await http_session().get("http://127.0.0.1:9/")
            found = blocked_cause(refused.value)
            assert found is not None and found.reason == "not a configured upstream's origin"
    with pytest.raises(UpstreamsNotSet):
        upstream("ok")


async def test_cancelling_a_gather_cancels_every_call() -> None:
    started: list[str] = []
    cancelled: list[str] = []
    both_started = asyncio.Event()

    async def call(name: str) -> int:
        started.append(name)
        if len(started) == 2:
            both_started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(name)
            raise
        return 0

    task = asyncio.create_task(gather({"a": call("a"), "b": call("b")}))
    await both_started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(cancelled) == ["a", "b"]


async def test_a_bug_in_one_call_cancels_the_others_and_is_raised() -> None:
    async def slow() -> int:
        await asyncio.sleep(10)
        return 0

    async def buggy() -> int:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        await gather({"slow": slow(), "buggy": buggy()})


def test_deadline_needs_positive_seconds() -> None:
    async def enter(seconds: float) -> None:
        with deadline(seconds):
            pass

    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            asyncio.run(enter(bad))
