"""The one aiohttp ClientSession of a process: how it is built."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from clients.safety import SessionGuard


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
