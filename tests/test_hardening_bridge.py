"""Hostile clients of the bridge and of the job routes, through the real served stack.

Job store outages (a stopped Redis, a SQLite file gone bad, another process
holding SQLite's write lock), chunked bodies, h2c upgrades, redirects built
from the Host header, and raw HTTP/1.1 abuse sent over a plain socket.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from werkzeug.routing import RequestRedirect

from app import create_app
from fanout.bridge import ASGIBridge
from fanout.bridge.flask_app import relative_redirect
from fanout.bridge.h2c import ALLOW_H2C_UPGRADE
from tests.fault_upstream import FaultUpstream
from tests.gateway_serving import Gateway, gateway_serving
from tests.processes import ROOT, free_port, hypercorn_command, until_ready
from tests.serving import hypercorn_serving


def _config(upstream_url: str) -> str:
    return f"""
[upstreams.fault]
base_url = "{upstream_url}"
internal = true
timeout = 5.0

[[endpoints]]
path = "/posted"
method = "POST"
  [[endpoints.backends]]
  upstream = "fault"
  path = "/echo/posted"

[[endpoints]]
path = "/profiles/<key>"
  [[endpoints.backends]]
  upstream = "fault"
  path = "/json?key={{key}}"
"""


BATCH = {"upstream": "fault", "path": "/json?i={item}", "items": [1]}


async def _finished_job(gateway: Gateway) -> str:
    async with gateway.client.post("/jobs/batch", json=BATCH) as response:
        assert response.status == 202, await response.text()
        job_id: str = (await response.json())["id"]
    async with gateway.client.get(f"/jobs/{job_id}?wait=10") as response:
        assert (await response.json())["status"] == "succeeded"
    return job_id


async def _assert_every_job_route_answers_503(gateway: Gateway, job_id: str) -> None:
    routes = [
        ("GET", f"/jobs/{job_id}"),
        ("GET", f"/jobs/{job_id}?wait=1"),
        ("GET", f"/jobs/{job_id}/result"),
        ("GET", f"/jobs/{job_id}/events"),
        ("GET", "/jobs"),
        ("POST", f"/jobs/{job_id}/cancel"),
        ("DELETE", f"/jobs/{job_id}"),
        ("POST", "/jobs/batch"),
    ]
    for method, path in routes:
        body = BATCH if path == "/jobs/batch" else None
        async with gateway.client.request(method, path, json=body) as response:
            text = await response.text()
            assert response.status == 503, (method, path, response.status, text)
            assert response.content_type == "application/problem+json", (method, path)
            assert int(response.headers["Retry-After"]) >= 1, (method, path)
            # The problem names no store location (a file path, a host).
            assert "127.0.0.1" not in text and "jobs.db" not in text, text


async def test_job_routes_answer_503_while_redis_is_down(
    fault: FaultUpstream, tmp_path: Path, own_redis: tuple[int, asyncio.subprocess.Process]
) -> None:
    port, server = own_redis
    settings = {"JOB_STORE": f"redis://127.0.0.1:{port}/0"}
    async with gateway_serving(_config(fault.url), tmp_path, settings) as gateway:
        job_id = await _finished_job(gateway)
        server.kill()
        await server.wait()
        await _assert_every_job_route_answers_503(gateway, job_id)


def _garble(path: Path) -> None:
    # Overwritten in place (not truncated: the store maps the -shm file).
    size = path.stat().st_size
    with path.open("r+b") as file:
        file.write(b"\xa5" * size)


async def test_job_routes_answer_503_while_the_sqlite_file_is_unreadable(
    fault: FaultUpstream, tmp_path: Path
) -> None:
    db = tmp_path / "jobs.db"
    settings = {"JOB_STORE": f"sqlite:///{db}"}
    async with gateway_serving(_config(fault.url), tmp_path, settings) as gateway:
        job_id = await _finished_job(gateway)
        for suffix in ("", "-wal", "-shm"):
            _garble(Path(f"{db}{suffix}"))
        await _assert_every_job_route_answers_503(gateway, job_id)


_LOCK_HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute(sys.argv[2])
print("held", flush=True)
sys.stdin.read()  # until the test closes stdin
conn.execute("ROLLBACK")
"""


@pytest.mark.parametrize("begin", ["BEGIN IMMEDIATE", "BEGIN EXCLUSIVE"])
async def test_job_reads_do_not_wait_for_another_process_holding_the_write_lock(
    fault: FaultUpstream, tmp_path: Path, begin: str
) -> None:
    db = tmp_path / "jobs.db"
    settings = {"JOB_STORE": f"sqlite:///{db}"}
    async with gateway_serving(_config(fault.url), tmp_path, settings) as gateway:
        job_id = await _finished_job(gateway)
        holder = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _LOCK_HOLDER,
            str(db),
            begin,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert holder.stdout is not None and holder.stdin is not None
            assert await asyncio.wait_for(holder.stdout.readline(), 30) == b"held\n"
            loop = asyncio.get_running_loop()
            finished: list[str] = []

            async def start() -> tuple[int, dict[str, str], float]:
                began = loop.time()
                async with gateway.client.post("/jobs/batch", json=BATCH) as response:
                    await response.read()
                    finished.append("start")
                    return response.status, dict(response.headers), loop.time() - began

            starting = asyncio.create_task(start())
            # The start is now waiting for the lock; reads come after it.
            await asyncio.sleep(0.3)
            for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/result", "/jobs"):
                async with gateway.client.get(path) as response:
                    assert response.status == 200, path
                    finished.append(path)
            status, headers, took = await starting
            # Every read answered while the start still waited for the lock.
            assert finished[-1] == "start", finished
            # The start gave up after a bounded wait: 503, not a hang.
            assert status == 503 and int(headers["Retry-After"]) >= 1
            assert took < 10.0
        finally:
            assert holder.stdin is not None
            holder.stdin.close()
            await holder.wait()


def _chunked(payload: bytes, size: int = 7) -> bytes:
    pieces = [payload[i : i + size] for i in range(0, len(payload), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


async def _raw(
    url: str, request: bytes, *, seconds: float = 10.0, until: bytes | None = None
) -> bytes:
    """Send ``request`` as is on a new connection; what is read until it closes (or ``until``)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        chunks = []
        async with asyncio.timeout(seconds):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
                if until is not None and until in b"".join(chunks):
                    break
        return b"".join(chunks)
    finally:
        writer.close()


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _json_body(answer: bytes) -> Any:
    head, _, body = answer.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        decoded, rest = b"", body
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if not size:
                break
            decoded, rest = decoded + rest[:size], rest[size + 2 :]
        body = decoded
    return json.loads(body)


async def test_a_chunked_body_reaches_the_job_routes_and_the_aggregate_endpoints(
    fault: FaultUpstream, tmp_path: Path
) -> None:
    payload = json.dumps(BATCH).encode()
    async with gateway_serving(_config(fault.url), tmp_path) as gateway:
        head = b"Host: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        head += b"Connection: close\r\n\r\n"
        body = head + _chunked(payload)
        answer = await _raw(gateway.url, b"POST /jobs/batch HTTP/1.1\r\n" + body)
        assert _status(answer) == 202, answer
        answer = await _raw(gateway.url, b"POST /posted HTTP/1.1\r\n" + body)
        assert _status(answer) == 200, answer
        assert _json_body(answer)["body_length"] == len(payload)


async def test_a_chunked_body_over_the_limit_is_still_refused(
    fault: FaultUpstream, tmp_path: Path
) -> None:
    payload = json.dumps({**BATCH, "items": list(range(400))}).encode()
    settings = {"MAX_CONTENT_LENGTH": 1000}
    async with gateway_serving(_config(fault.url), tmp_path, settings) as gateway:
        head = b"Host: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        head += b"Connection: close\r\n\r\n"
        for target in (b"/jobs/batch", b"/posted"):
            request = b"POST " + target + b" HTTP/1.1\r\n" + head + _chunked(payload, 100)
            assert _status(await _raw(gateway.url, request)) == 413
        assert fault.hits["/echo/posted"] == 0 and fault.hits["/json"] == 0


H2C_UPGRADE = (
    b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
)


async def _assert_h2c_refused(url: str) -> None:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(H2C_UPGRADE)
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
            # Served as plain HTTP/1.1: no switch, the upgrade ignored.
            assert head.startswith(b"HTTP/1.1 200"), head
            length = next(
                int(line.split(b":")[1])
                for line in head.lower().split(b"\r\n")
                if line.startswith(b"content-length:")
            )
            assert json.loads(await reader.readexactly(length)) == {"status": "ok"}
            # The connection still speaks HTTP/1.1 (an HTTP/2 server would
            # answer this with a GOAWAY frame).
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            rest = await reader.read()
        assert rest.startswith(b"HTTP/1.1 200"), rest
    finally:
        writer.close()


async def test_an_h2c_upgrade_is_ignored(fault: FaultUpstream, tmp_path: Path) -> None:
    async with gateway_serving(_config(fault.url), tmp_path) as gateway:
        await _assert_h2c_refused(gateway.url)


async def test_an_h2c_upgrade_is_ignored_by_the_served_process() -> None:
    port = free_port()
    env = {**os.environ, "FANOUT_JOB_STORE": "memory://", "PYTHONWARNINGS": "error"}
    server = await asyncio.create_subprocess_exec(
        *hypercorn_command(f"127.0.0.1:{port}"),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        assert await until_ready(url, server)
        await _assert_h2c_refused(url)
    finally:
        server.send_signal(signal.SIGTERM)
        await asyncio.wait_for(server.wait(), 30)


async def test_the_merge_slashes_redirect_is_relative(fault: FaultUpstream, tmp_path: Path) -> None:
    async with gateway_serving(_config(fault.url), tmp_path) as gateway:
        request = (
            b"GET //profiles//7?x=1 HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
        )
        answer = await _raw(gateway.url, request)
        assert _status(answer) == 308, answer
        head = answer.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
        assert "location: /profiles/7?x=1\r\n" in head + "\r\n", head
        assert b"evil" not in answer, answer


async def test_the_trailing_slash_redirect_is_relative(
    fault: FaultUpstream, tmp_path: Path
) -> None:
    async with gateway_serving(_config(fault.url), tmp_path) as gateway:
        request = b"GET /proxy/fault HTTP/1.1\r\nHost: evil.example:1\r\nConnection: close\r\n\r\n"
        answer = await _raw(gateway.url, request)
        assert _status(answer) == 308, answer
        assert b"\r\nlocation: /proxy/fault/\r\n" in answer.lower(), answer
        assert b"evil" not in answer, answer


@pytest.mark.parametrize(
    ("new_url", "location"),
    [
        ("http://evil.example/profiles/7", "/profiles/7"),
        ("http://evil.example/profiles/7?x=1&y=%2F", "/profiles/7?x=1&y=%2F"),
        ("http://evil.example//other.example/x", "/other.example/x"),
        ("http://evil.example/\\other.example/x", "/%5Cother.example/x"),
        ("https://evil.example:8443/root/a/", "/root/a/"),
    ],
)
def test_a_routing_redirect_keeps_only_path_and_query(new_url: str, location: str) -> None:
    response = relative_redirect(RequestRedirect(new_url))
    assert response.status_code == 308
    assert response.headers["Location"] == location
    assert response.get_data() == b""


async def test_an_h2c_upgrade_is_served_when_hypercorn_toml_allows_it(tmp_path: Path) -> None:
    (tmp_path / "gateway.toml").write_text("")
    app = create_app({"CONFIG": str(tmp_path / "gateway.toml"), "JOB_STORE": "memory://"})
    async with hypercorn_serving(ASGIBridge(app), **{ALLOW_H2C_UPGRADE: True}) as url:
        answer = await _raw(url, H2C_UPGRADE, seconds=2.0, until=b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 101"), answer


@pytest.mark.timeout(120)
async def test_an_h2c_upgrade_is_ignored_by_the_launcher_workers() -> None:
    port = free_port()
    env = {**os.environ, "FANOUT_JOB_STORE": "memory://", "PYTHONWARNINGS": "error"}
    launcher = Path(sys.executable).with_name("fanout")
    server = await asyncio.create_subprocess_exec(
        str(launcher),
        "--no-demo",
        "--workers",
        "2",
        "--bind",
        f"127.0.0.1:{port}",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        assert await until_ready(url, server)
        # Each connection lands on either worker process.
        for _ in range(4):
            await _assert_h2c_refused(url)
    finally:
        server.send_signal(signal.SIGTERM)
        await asyncio.wait_for(server.wait(), 60)


@pytest.mark.parametrize(
    "target",
    [b"healthz", b"jobs", b"http://evil.example/healthz", b"http://evil.example/jobs", b"?x=1"],
)
async def test_a_request_target_that_is_not_a_path_is_refused(
    fault: FaultUpstream, tmp_path: Path, target: bytes
) -> None:
    async with gateway_serving(_config(fault.url), tmp_path) as gateway:
        answer = await _raw(
            gateway.url, b"GET " + target + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        assert _status(answer) == 400, answer
        assert b"application/problem+json" in answer
        # A path still works, and OPTIONS * is not refused as a target.
        answer = await _raw(
            gateway.url, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        assert _status(answer) == 200, answer
        answer = await _raw(
            gateway.url, b"OPTIONS * HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        assert _status(answer) != 400, answer
