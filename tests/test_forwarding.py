"""Calls on behalf of the caller: forwarded headers, query and identity, cache and coalescing."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fanout.core.identity import CURRENT_CALLER, Caller, CallerKind
from fanout.process.logs import JsonFormatter
from tests.gateway_serving import Gateway, gateway_serving
from tests.identity_upstream import EchoUpstream, echo_upstream

ALICE_KEY = "alice-key-0123456789abcdef"
BOB_KEY = "bob-key-0123456789abcdef00"


@pytest.fixture
async def echo() -> AsyncIterator[EchoUpstream]:
    """The echo upstream."""
    async with echo_upstream() as state:
        yield state


def _config(url: str, *, keys: bool = False) -> str:
    auth = f'[auth]\napi_keys = {{ alice = "{ALICE_KEY}", bob = "{BOB_KEY}" }}\n' if keys else ""
    return f"""
{auth}
[upstreams.echo]
base_url = "{url}"
internal = true

[[endpoints]]
path = "/mine"
cache_ttl = 60
  [[endpoints.backends]]
  upstream = "echo"
  path = "/echo?ms=200"
  forward_headers = ["Authorization"]

[[endpoints]]
path = "/who"
  [[endpoints.backends]]
  upstream = "echo"
  path = "/echo"
  forward_headers = ["Accept-Language"]
  forward_query = ["lang"]
  forward_identity = "X-User-Id"

[[endpoints]]
path = "/who-cached"
cache_ttl = 60
  [[endpoints.backends]]
  upstream = "echo"
  path = "/echo?ms=200"
  forward_identity = "X-User-Id"
"""


async def _get(gateway: Gateway, path: str, **headers: str) -> dict[str, object]:
    async with gateway.client.get(path, headers=headers) as response:
        assert response.status == 200, await response.text()
        body: dict[str, object] = await response.json()
        return body


async def test_two_callers_each_get_their_own_answer_from_the_cache_and_the_coalescer(
    echo: EchoUpstream, tmp_path: Path
) -> None:
    async with gateway_serving(_config(echo.url), tmp_path) as gateway:
        tokens = ["Bearer token-of-alice", "Bearer token-of-bob"] * 3
        for _round in range(2):
            # Concurrently: identical URLs in flight at once, which the
            # coalescer would share if it ignored the forwarded header.
            answers = await asyncio.gather(
                *(_get(gateway, "/mine", Authorization=token) for token in tokens)
            )
            assert [a["authorization"] for a in answers] == tokens
        # Cached per token: one upstream call for each, not one per request.
        assert echo.calls == 2


async def test_identity_query_and_listed_headers_only(echo: EchoUpstream, tmp_path: Path) -> None:
    async with gateway_serving(_config(echo.url, keys=True), tmp_path) as gateway:
        answer = await _get(
            gateway,
            "/who?lang=fr&debug=1&lang=de",
            Authorization=f"Bearer {ALICE_KEY}",
            **{"X-User-Id": "root", "Accept-Language": "fr", "Cookie": "session=s3cret"},
        )
    # The caller's key name, never the client's claim; no credential, no cookie.
    assert answer["user"] == "alice"
    assert answer["authorization"] is None
    assert answer["cookie"] is None
    assert answer["language"] == "fr"
    assert answer["query"] == "lang=fr&lang=de"


async def test_cached_answers_keyed_on_the_forwarded_identity(
    echo: EchoUpstream, tmp_path: Path
) -> None:
    async with gateway_serving(_config(echo.url, keys=True), tmp_path) as gateway:
        for _round in range(2):
            alice, bob = await asyncio.gather(
                _get(gateway, "/who-cached", Authorization=f"Bearer {ALICE_KEY}"),
                _get(gateway, "/who-cached", Authorization=f"Bearer {BOB_KEY}"),
            )
            assert (alice["user"], bob["user"]) == ("alice", "bob")
        assert echo.calls == 2


async def test_jobs_belong_to_the_caller_that_started_them(
    echo: EchoUpstream, tmp_path: Path
) -> None:
    async with gateway_serving(_config(echo.url, keys=True), tmp_path) as gateway:
        alice = {"Authorization": f"Bearer {ALICE_KEY}"}
        bob = {"Authorization": f"Bearer {BOB_KEY}"}
        async with gateway.client.get(
            "/who", headers={**alice, "Prefer": "respond-async"}
        ) as started:
            assert started.status == 202
            job = await started.json()
        async with gateway.client.get(f"/jobs/{job['id']}?wait=5", headers=alice) as mine:
            assert mine.status == 200
            assert (await mine.json())["status"] == "succeeded"
        async with gateway.client.get(f"/jobs/{job['id']}/result", headers=alice) as result:
            # The job's upstream call carried its starter's identity.
            assert (await result.json())["user"] == "alice"
        async with gateway.client.get(f"/jobs/{job['id']}", headers=bob) as theirs:
            assert theirs.status == 404
        async with gateway.client.get("/jobs", headers=bob) as listing:
            assert (await listing.json())["jobs"] == []


def test_log_lines_name_the_caller_never_the_secret() -> None:
    record = logging.LogRecord("fanout.test", logging.INFO, __file__, 1, "hello", (), None)
    token = CURRENT_CALLER.set(Caller(CallerKind.API_KEY, "alice", "127.0.0.1"))
    try:
        line = json.loads(JsonFormatter().format(record))
    finally:
        CURRENT_CALLER.reset(token)
    assert line["caller"] == "api_key:alice"
