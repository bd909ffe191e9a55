"""The one aiohttp ClientSession of a process: how it is built."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from clients.safety import SessionGuard, session_guard
from fanout.core.config import UpstreamConfig


@dataclass(frozen=True)
class SessionLimits:
    """Connection settings of the shared session."""

    connections: int = 1024
    connections_per_host: int = 256
    dns_cache_seconds: int = 10
    keepalive_seconds: float = 30.0


def open_session(limits: SessionLimits, guard: SessionGuard | None = None) -> aiohttp.ClientSession:
    """Create the shared session; call on the loop that will use it.

    With a guard, every address is checked after DNS resolution and every IP
    literal before connecting (see clients.safety); the caller closes
    ``guard.resolver`` after the session.
    """
    connector = aiohttp.TCPConnector(
        resolver=guard.resolver if guard else None,
        limit=limits.connections,
        limit_per_host=limits.connections_per_host,
        ttl_dns_cache=limits.dns_cache_seconds,
        keepalive_timeout=limits.keepalive_seconds,
    )
    return aiohttp.ClientSession(
        connector=connector,
        # Proxy and netrc settings from the environment would silently change
        # where calls go; upstream URLs come from the gateway config only.
        trust_env=False,
        # Upstream cookies must never leak from one client's call to another's.
        cookie_jar=aiohttp.DummyCookieJar(),
        # Deadlines are set per call (clients.upstream).
        timeout=aiohttp.ClientTimeout(total=None),
        # Redirects are the caller's decision, per upstream.
        raise_for_status=False,
        middlewares=guard.middlewares if guard else (),
    )


@asynccontextmanager
async def guarded_session(
    upstreams: Iterable[UpstreamConfig],
    limits: SessionLimits,
    extra_origins: Iterable[str] = (),
) -> AsyncIterator[aiohttp.ClientSession]:
    """Open the session for these upstreams, guarded to them; close it (and its resolver) after.

    Only the upstreams marked ``internal`` may be on loopback or private
    addresses, and the session reaches their configured origins only, and
    ``extra_origins`` (URLs such as a JWKS URL: public addresses only,
    unless on an internal upstream's host).
    """
    configs = list(upstreams)
    guard = session_guard(
        {urlsplit(url).hostname or "" for cfg in configs if cfg.internal for url in cfg.urls},
        origins=[*(url for cfg in configs for url in cfg.urls), *extra_origins],
    )
    session = open_session(limits, guard)
    try:
        yield session
    finally:
        await session.close()
        # The connector does not close a resolver it was given.
        await guard.resolver.close()
