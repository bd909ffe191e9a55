"""The upstream clients of a gateway config, with the shared cache and coalescer."""

from __future__ import annotations

import random
from collections.abc import Mapping

import aiohttp

from clients.cache import ResponseCache
from clients.coalesce import Coalescer
from clients.upstream import UpstreamReply
from clients.upstream_client import UpstreamClient, UpstreamObserver
from fanout.core.config import UpstreamConfig


class Upstreams:
    """One UpstreamClient per configured upstream, over the shared session."""

    def __init__(
        self,
        configs: Mapping[str, UpstreamConfig],
        session: aiohttp.ClientSession,
        rng: random.Random | None = None,
        cache_entries: int = 4096,
        observer: UpstreamObserver | None = None,
    ) -> None:
        chance = rng or random.Random()
        #: The shared session the clients call over (``clients.http_session()``).
        self.session = session
        self._clients = {
            name: UpstreamClient(cfg, session, chance, observer) for name, cfg in configs.items()
        }
        self.cache: ResponseCache[UpstreamReply] = ResponseCache(cache_entries)
        self.coalescer: Coalescer[UpstreamReply] = Coalescer()

    def get(self, name: str) -> UpstreamClient | None:
        """The client of upstream ``name``, or None if it is not configured."""
        return self._clients.get(name)

    def __getitem__(self, name: str) -> UpstreamClient:
        return self._clients[name]

    def names(self) -> list[str]:
        """The configured upstreams' names, in config order."""
        return list(self._clients)

    def clients(self) -> list[UpstreamClient]:
        """Every upstream client, in config order."""
        return list(self._clients.values())
