"""Hostile clients of the job routes, through the real stack (issue 10: 1, 8, 14 and probes)."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from flask import Blueprint, Response, jsonify, request

from app import create_app
from fanout.bridge import ASGIBridge
from fanout.core.config import ConfigError, GatewayConfig, parse_gateway_config
from fanout.jobs.kinds import JobKind
from fanout.jobs.model import StoredResponse
from fanout.jobs.registry import JobContext
from handlers.jobs import background_view
from handlers.resources import register_job_kind
from tests.gateway_serving import Gateway, gateway_serving
from tests.serving import hypercorn_serving

LIMIT = 65_536  # the [jobs] max_result_bytes these tests configure


@dataclass
class BigUpstream:
    """An upstream answering JSON bodies of a size the path asks for; it counts hits."""

    url: str = ""
    hits: Counter[str] = field(default_factory=Counter)
    #: Raw request targets received, exactly as sent on the wire.
    targets: list[str] = field(default_factory=list)


@asynccontextmanager
async def big_upstream() -> AsyncIterator[BigUpstream]:
    """Serve the big upstream on 127.0.0.1:0."""
    state = BigUpstream()

    async def big(request: web.Request) -> web.Response:
        # /big/<KiB>/<item>: a JSON object of about that many KiB.
        state.hits["/big"] += 1
        kib = int(request.match_info["kib"])
        return web.json_response({"item": request.match_info["item"], "pad": "x" * kib * 1024})

    async def deep(request: web.Request) -> web.Response:
        # Valid JSON, too deep for any sane parser.
        return web.Response(body=b"[" * 100_000 + b"]" * 100_000, content_type="application/json")

    async def echo(request: web.Request) -> web.Response:
        state.hits["/echo"] += 1
        state.targets.append(request.raw_path)
        return web.json_response({"target": request.raw_path})

    app = web.Application()
    app.router.add_get("/base/big/{kib}/{item}", big)
    app.router.add_get("/base/deep/{item}", deep)
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        await runner.cleanup()


def _config(upstream_url: str, *, limit: int = LIMIT) -> str:
    return f"""
[jobs]
store = "memory://"
max_result_bytes = {limit}

[upstreams.big]
base_url = "{upstream_url}/base"
internal = true
timeout = 5.0

[[endpoints]]
path = "/wide/<int:kib>"
  [[endpoints.backends]]
  upstream = "big"
  path = "/big/{{kib}}/1"
  group = "one"
  [[endpoints.backends]]
  upstream = "big"
  path = "/big/{{kib}}/2"
  group = "two"
"""


@pytest.fixture
async def big() -> AsyncIterator[BigUpstream]:
    """The big upstream."""
    async with big_upstream() as state:
        yield state


@pytest.fixture
async def gateway(big: BigUpstream, tmp_path: Path) -> AsyncIterator[Gateway]:
    """The gateway on a SQLite store with a 64 KiB result limit."""
    store = f"sqlite:///{tmp_path / 'jobs.db'}"
    async with gateway_serving(_config(big.url), tmp_path, {"JOB_STORE": store}) as served:
        yield served


async def _json(gateway: Gateway, method: str, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
    async with gateway.client.request(method, path, **kwargs) as response:
        text = await response.text()
        return response.status, response.headers, json.loads(text) if text else None


async def _wait_final(gateway: Gateway, job_id: str) -> dict[str, Any]:
    for _ in range(100):
        status, _, job = await _json(gateway, "GET", f"/jobs/{job_id}?wait=5")
        assert status == 200, job
        if job["status"] not in ("pending", "running"):
            return dict(job)
    raise AssertionError("the job never finished")


def _largest_stored_result(tmp_path: Path) -> int:
    with closing(sqlite3.connect(tmp_path / "jobs.db")) as db:
        (largest,) = db.execute("SELECT max(coalesce(length(result_body), 0)) FROM jobs").fetchone()
    return int(largest or 0)


# -- 1. the size of a job's result ------------------------------------------------------


async def test_a_batch_whose_result_passes_the_limit_fails_and_stores_nothing_big(
    gateway: Gateway, big: BigUpstream, tmp_path: Path
) -> None:
    # 20 items of 16 KiB: 320 KiB of result against a 64 KiB limit.
    batch = {"upstream": "big", "path": "/big/16/{item}", "items": list(range(20))}
    status, _, job = await _json(gateway, "POST", "/jobs/batch", json={**batch, "concurrency": 1})
    assert status == 202
    final = await _wait_final(gateway, job["id"])
    assert final["status"] == "failed"
    assert final["error"]["status"] == 507
    assert final["error"]["title"] == "Job Result Too Large"
    assert str(LIMIT) in final["error"]["detail"]
    status, headers, problem = await _json(gateway, "GET", f"/jobs/{job['id']}/result")
    assert status == 507 and headers["Content-Type"] == "application/problem+json"
    assert problem["max_result_bytes"] == LIMIT
    # It stopped once past the limit, rather than calling every item.
    assert big.hits["/big"] < 20
    assert _largest_stored_result(tmp_path) == 0


async def test_a_batch_under_the_limit_succeeds(gateway: Gateway, tmp_path: Path) -> None:
    batch = {"upstream": "big", "path": "/big/8/{item}", "items": ["a", "b", 3]}
    _, _, job = await _json(gateway, "POST", "/jobs/batch", json=batch)
    assert (await _wait_final(gateway, job["id"]))["status"] == "succeeded"
    async with gateway.client.get(f"/jobs/{job['id']}/result") as response:
        assert response.status == 200
        raw = await response.read()
    result = json.loads(raw)
    assert result["upstream"] == "big"
    assert (result["succeeded"], result["failed"]) == (3, 0)
    assert [entry["item"] for entry in result["results"]] == ["a", "b", 3]
    assert [entry["body"]["item"] for entry in result["results"]] == ["a", "b", "3"]
    assert all(entry["status"] == 200 for entry in result["results"])
    # The body is what json.dumps makes of it (the format the batch always had).
    assert raw == json.dumps(result).encode()
    assert len(raw) < LIMIT and _largest_stored_result(tmp_path) == len(raw)


async def test_an_endpoint_run_as_a_job_obeys_the_result_limit(
    gateway: Gateway, tmp_path: Path
) -> None:
    # Synchronously the endpoint answers 2 x 40 KiB: more than a job may keep.
    async with gateway.client.get("/wide/40") as response:
        assert response.status == 200
    status, _, job = await _json(gateway, "GET", "/wide/40", headers={"Prefer": "respond-async"})
    assert status == 202
    final = await _wait_final(gateway, job["id"])
    assert final["status"] == "failed" and final["error"]["status"] == 507
    _, _, small = await _json(gateway, "GET", "/wide/4", headers={"Prefer": "respond-async"})
    assert (await _wait_final(gateway, small["id"]))["status"] == "succeeded"
    assert 0 < _largest_stored_result(tmp_path) < LIMIT


views = Blueprint("hardening_views", __name__)


@views.post("/test/json")
async def echo_json() -> Response:
    """A view reading its body with Flask's request.get_json()."""
    return jsonify(request.get_json())


@views.get("/test/huge/<int:kib>")
@background_view
async def huge(kib: int) -> Response:
    """A background view answering about ``kib`` KiB."""
    return Response(b"x" * kib * 1024, mimetype="text/plain")


@asynccontextmanager
async def _with_views(big: BigUpstream, tmp_path: Path) -> AsyncIterator[Gateway]:
    path = tmp_path / "gateway.toml"
    path.write_text(_config(big.url))
    app = create_app({"CONFIG": str(path), "JOB_STORE": f"sqlite:///{tmp_path / 'jobs.db'}"})
    app.register_blueprint(views)
    async with hypercorn_serving(ASGIBridge(app)) as url, aiohttp.ClientSession(url) as client:
        yield Gateway(url, app, client)


async def _crash_in_a_task(context: JobContext) -> StoredResponse:
    async def crash() -> None:
        raise LookupError("detail that stays in the log")

    async with asyncio.TaskGroup() as group:
        group.create_task(crash())
    raise AssertionError("unreachable")


async def test_a_job_whose_task_crashes_names_the_error_not_its_group(
    big: BigUpstream, tmp_path: Path
) -> None:
    async with _with_views(big, tmp_path) as served:
        register_job_kind(served.app, JobKind("crash", lambda params: _crash_in_a_task))
        _, _, job = await _json(served, "POST", "/jobs/crash")
        final = await _wait_final(served, job["id"])
    assert final["status"] == "failed"
    assert final["error"]["detail"] == "The job failed (LookupError)."


async def _exit(context: JobContext) -> StoredResponse:
    raise SystemExit(3)  # a library calling sys.exit() in a job


async def test_a_job_raising_system_exit_fails_and_the_worker_keeps_serving(
    big: BigUpstream, tmp_path: Path
) -> None:
    async with _with_views(big, tmp_path) as served:
        register_job_kind(served.app, JobKind("exits", lambda params: _exit))
        _, _, job = await _json(served, "POST", "/jobs/exits")
        final = await _wait_final(served, job["id"])
        assert final["status"] == "failed"
        assert final["error"]["detail"] == "The job failed (SystemExit)."
        _, _, small = await _json(served, "GET", "/test/huge/1")
        assert (await _wait_final(served, small["id"]))["status"] == "succeeded"


async def test_a_background_view_obeys_the_result_limit(big: BigUpstream, tmp_path: Path) -> None:
    async with _with_views(big, tmp_path) as served:
        _, _, job = await _json(served, "GET", "/test/huge/100")
        final = await _wait_final(served, job["id"])
        assert final["status"] == "failed" and final["error"]["status"] == 507
        _, _, small = await _json(served, "GET", "/test/huge/1")
        assert (await _wait_final(served, small["id"]))["status"] == "succeeded"
    assert _largest_stored_result(tmp_path) == 1024


def _parse(text: str) -> GatewayConfig:
    return parse_gateway_config(text, source="gateway.toml", env={})


def test_max_result_bytes_is_validated_like_the_other_job_keys() -> None:
    assert _parse("").jobs.max_result_bytes == 16 * 1024 * 1024
    assert _parse("[jobs]\nmax_result_bytes = 1024").jobs.max_result_bytes == 1024
    for bad in ("0", "-1", '"big"', "1.5"):
        with pytest.raises(ConfigError, match=r"gateway\.toml: jobs\.max_result_bytes: expected"):
            _parse(f"[jobs]\nmax_result_bytes = {bad}")


# -- 8. the batch's path ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "items", "named"),
    [
        ("/../orders/{item}", [1], "path"),
        ("/c/{item}/..", [1], "path"),
        ("/%2e%2E/orders/{item}", [1], "path"),
        ("/c/.%2e/{item}", [1], "path"),
        ("/c/..\\{item}", [1], "path"),
        ("/c/..%5c{item}", [1], "path"),
        ("/c/{item} HTTP/1.0", [1], "path"),
        ("/c/{item}\tx", [1], "path"),
        ("/c/\x00{item}", [1], "path"),
        ("/c/%00{item}", [1], "path"),
        ("/c/\r\nX-Injected: 1\r\n{item}", [1], "path"),
        ("/c/{item}#frag", [1], "path"),
        ("/c/日本/{item}", [1], "path"),
        ("/c/%zz/{item}", [1], "path"),
        ("//other.host/{item}", [1], "path"),
        ("/c/{other}/{item}", [1], "path"),
        ("/c/{item}", ["../x"], "item"),
        ("/c/{item}", ["..\\x"], "item"),
        ("/c/%2e{item}", ["."], "item"),
        ("/c/{item}", ["x" * 9000], "item"),
        ("/c/{item}", ["\x00nul"], "item"),
        ("/c/{item}", ["ok", "."], "item"),
        ("/c/{item}", ["\ud800"], "Unicode"),
    ],
)
async def test_a_batch_path_that_is_not_a_plain_origin_form_path_is_400(
    gateway: Gateway, big: BigUpstream, path: str, items: list[Any], named: str
) -> None:
    batch = {"upstream": "big", "path": path, "items": items}
    status, headers, problem = await _json(gateway, "POST", "/jobs/batch", json=batch)
    assert status == 400, problem
    assert headers["Content-Type"] == "application/problem+json"
    assert named in problem["detail"]
    _, _, listing = await _json(gateway, "GET", "/jobs")
    assert listing["jobs"] == []  # started nothing
    assert big.hits["/echo"] == 0


async def test_batch_items_are_percent_encoded_into_their_segment(
    gateway: Gateway, big: BigUpstream
) -> None:
    items = ["a b", "a/b", "q?r=1#f", "%2e%2e", "日本", "-._~"]
    batch = {"upstream": "big", "path": "/c/{item}/v?tag=x{item}", "items": items}
    _, _, job = await _json(gateway, "POST", "/jobs/batch", json={**batch, "concurrency": 1})
    final = await _wait_final(gateway, job["id"])
    assert final["status"] == "succeeded", final
    _, _, result = await _json(gateway, "GET", f"/jobs/{job['id']}/result")
    assert result["failed"] == 0
    assert sorted(big.targets) == sorted(
        [
            "/base/c/a%20b/v?tag=xa%20b",
            "/base/c/a%2Fb/v?tag=xa%2Fb",
            "/base/c/q%3Fr%3D1%23f/v?tag=xq%3Fr%3D1%23f",
            "/base/c/%252e%252e/v?tag=x%252e%252e",
            "/base/c/%E6%97%A5%E6%9C%AC/v?tag=x%E6%97%A5%E6%9C%AC",
            "/base/c/-._~/v?tag=x-._~",
        ]
    )


async def test_a_batch_item_failing_at_run_time_is_that_items_error(
    gateway: Gateway, big: BigUpstream
) -> None:
    # An answer too deep to parse is that item's error; the job goes on and succeeds.
    batch = {"upstream": "big", "path": "/{item}/1", "items": ["deep", "echo"]}
    _, _, job = await _json(gateway, "POST", "/jobs/batch", json=batch)
    final = await _wait_final(gateway, job["id"])
    assert final["status"] == "succeeded", final
    _, _, result = await _json(gateway, "GET", f"/jobs/{job['id']}/result")
    assert (result["succeeded"], result["failed"]) == (1, 1)
    assert result["results"][0]["error"]["title"] == "BadUpstreamPayload"
    assert result["results"][1]["body"] == {"target": "/base/echo/1"}


# -- 14. deep nesting in what a client sends ---------------------------------------------


async def test_a_deeply_nested_body_is_400(gateway: Gateway) -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    status, _, problem = await _json(
        gateway,
        "POST",
        "/jobs/batch",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    assert status == 400, problem
    assert problem["status"] == 400


def _cursor(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 5000 + b"]" * 5000,
        b'[1e400, "x"]',
        b"[" + b"9" * 4000 + b', "x"]',
        b'[NaN, "x"]',
        b'[1, "x", 3]',
        b"\xff\xfe",
        b'[1.0, "\\ud800"]',  # a lone surrogate: no store can encode it
    ],
)
async def test_a_forged_cursor_is_400(gateway: Gateway, raw: bytes) -> None:
    status, _, problem = await _json(gateway, "GET", f"/jobs?cursor={_cursor(raw)}")
    assert status == 400, problem
    assert "cursor" in problem["detail"]


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b"\xff\xfe{}",
        b"[" + b"9" * 5000 + b"]",
    ],
)
async def test_a_view_reading_a_hostile_json_body_answers_400(
    big: BigUpstream, tmp_path: Path, body: bytes
) -> None:
    async with _with_views(big, tmp_path) as served:
        headers = {"Content-Type": "application/json"}
        status, _, problem = await _json(served, "POST", "/test/json", data=body, headers=headers)
        assert status == 400, problem
        assert problem["status"] == 400
        # Reasonable JSON still reads, a UTF-8 byte order mark included.
        status, _, echoed = await _json(
            served,
            "POST",
            "/test/json",
            data=b"\xef\xbb\xbf" + b"[" * 64 + b"]" * 64,
            headers=headers,
        )
        assert status == 200 and echoed == json.loads("[" * 64 + "]" * 64)
        # What plain Flask reads, a view reads too (NaN, deep but parseable).
        deep = b"[" * 200 + b"]" * 200
        status, _, echoed = await _json(
            served, "POST", "/test/json", data=b"[NaN, Infinity, " + deep + b"]", headers=headers
        )
        assert status == 200 and echoed[1:] == [math.inf, json.loads(deep)]


@pytest.mark.parametrize(
    "body", [b'{"upstream": "big", "path": "/c/{item}", "items": [1], "concurrency": NaN}', b"\xff"]
)
async def test_a_batch_body_that_is_not_strict_json_is_400(gateway: Gateway, body: bytes) -> None:
    headers = {"Content-Type": "application/json"}
    status, _, problem = await _json(gateway, "POST", "/jobs/batch", data=body, headers=headers)
    assert status == 400 and "JSON" in problem["detail"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_a_job_start_whose_body_is_not_declared_json_is_415(
    gateway: Gateway, big: BigUpstream, content_type: str | None
) -> None:
    # What a web page can send cross-site without a CORS preflight: it must not start jobs.
    body = json.dumps({"upstream": "big", "path": "/c/{item}", "items": [1]}).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    async with gateway.client.post(
        "/jobs/batch", data=body, headers=headers, skip_auto_headers=["Content-Type"]
    ) as response:
        assert response.status == 415
        problem = await response.json(content_type=None)
    assert problem["status"] == 415 and "application/json" in problem["detail"]
    _, _, listing = await _json(gateway, "GET", "/jobs")
    assert listing["jobs"] == []
    # A JSON media type with parameters or a +json suffix is JSON.
    for declared in ("application/json; charset=utf-8", "application/vnd.batch+json"):
        status, _, _ = await _json(
            gateway, "POST", "/jobs/batch", data=body, headers={"Content-Type": declared}
        )
        assert status == 202
