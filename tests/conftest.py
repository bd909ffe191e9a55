"""Fixtures: a real fake upstream, and the real app served by Hypercorn on port 0."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import aiohttp
import pytest

from app import create_app
from fanout.bridge import ASGIBridge, BridgeFlask
from tests.fault_upstream import FaultUpstream, fault_upstream, make_bomb
from tests.probe_views import ProbeState, mount_probes
from tests.redis_server import own_redis, prefix, redis_url, store_url  # noqa: F401 - shared fixtures
from tests.serving import hypercorn_serving
from tests.upstream import FakeUpstream, fake_upstream


@pytest.fixture(autouse=True)
def _no_fanout_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # The developer's own FANOUT_* variables must not change what tests see.
    import os

    for name in list(os.environ):
        if name.startswith("FANOUT_"):
            monkeypatch.delenv(name)
    # Jobs in memory unless a test asks for a store (child processes inherit it).
    monkeypatch.setenv("FANOUT_JOB_STORE", "memory://")
    yield


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections: bound, never listening."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield bound.getsockname()[1]


@pytest.fixture(scope="session")
def gzip_bomb() -> bytes:
    """The fault upstream's gzip bomb, built once per run."""
    return make_bomb()


@pytest.fixture
async def fault(gzip_bomb: bytes) -> AsyncIterator[FaultUpstream]:
    """The fault-injecting upstream on 127.0.0.1:0."""
    async with fault_upstream(gzip_bomb) as state:
        yield state


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    """A real aiohttp upstream on 127.0.0.1:0."""
    async with fake_upstream() as state:
        yield state


@pytest.fixture
def probe_app(upstream: FakeUpstream) -> BridgeFlask:
    """The Fanout app with the probe views mounted, pointed at the fake upstream."""
    return mount_probes(create_app(), upstream.url)


@dataclass
class Served:
    """A running server and what the test needs to talk to it."""

    url: str
    app: BridgeFlask
    client: aiohttp.ClientSession

    @property
    def probes(self) -> ProbeState:
        """The probe views' state."""
        state: ProbeState = self.app.extensions["tests.probe_state"]
        return state


@pytest.fixture
async def served(probe_app: BridgeFlask) -> AsyncIterator[Served]:
    """The probe app under real Hypercorn, and a test client without connection limits."""
    async with hypercorn_serving(ASGIBridge(probe_app)) as url:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(url, connector=connector) as client:
            yield Served(url, probe_app, client)
