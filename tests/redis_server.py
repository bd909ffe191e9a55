"""A real Redis server for tests: started if none answers (never skipped), with a
key prefix per test whose keys are deleted afterwards."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
HOST, PORT, URL = REDIS_HOST, REDIS_PORT, REDIS_URL


def _answers(port: int) -> bool:
    """True if a Redis server answers PING on 127.0.0.1:``port``."""
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _wait_until_answers(port: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _answers(port):
            return True
        time.sleep(0.05)
    return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def redis_url() -> str:
    """The URL of a Redis server on 127.0.0.1:6379, started if none answers."""
    if _answers(PORT):
        return URL
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("no Redis on 127.0.0.1:6379 and no redis-server to start one")
    subprocess.run(
        [server, "--daemonize", "yes", "--port", str(PORT), "--save", ""],
        check=True,
        timeout=10,
    )
    if not _wait_until_answers(PORT):
        pytest.fail("started redis-server, but it does not answer on 127.0.0.1:6379")
    return URL


async def _keys(url: str, prefix: str) -> list[bytes]:
    """Every key under ``prefix`` (SCAN, never KEYS)."""
    client = Redis.from_url(url)
    try:
        return [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
    finally:
        await client.aclose()


def new_prefix() -> str:
    """A key prefix of a test's own (hex only: no glob characters for SCAN)."""
    return f"fanout-test-{secrets.token_hex(8)}:"


async def delete_prefix(url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` (SCAN, never KEYS)."""
    client = Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        for i in range(0, len(keys), 1000):
            await client.delete(*keys[i : i + 1000])
    finally:
        await client.aclose()


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = new_prefix()
    yield prefix
    await delete_prefix(redis_url, prefix)


@pytest.fixture(params=["sqlite", "redis"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A job store URL that several gateway processes share: a SQLite file, or a
    prefix of this test's own on the real Redis (its keys deleted afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}"
        return
    url: str = request.getfixturevalue("redis_url")
    prefix = new_prefix()
    yield f"{url}?prefix={prefix}"
    await delete_prefix(url, prefix)


@pytest.fixture
async def own_redis() -> AsyncIterator[tuple[int, asyncio.subprocess.Process]]:
    """A Redis server of this test's own, on a free port (the test may kill it)."""
    port = _free_port()
    server = await asyncio.create_subprocess_exec(
        "redis-server",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        stdout=asyncio.subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            if _answers(port):
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail(f"redis-server on port {port} does not answer")
        yield port, server
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()
