"""The signing keys of a JWKS URL, fetched over the shared (guarded) session and cached.

PyJWT's own ``PyJWKClient`` fetches with urllib, blocking the event loop
and bypassing the destination guard; here the set is fetched with aiohttp
over the gateway's session and parsed with PyJWT's ``PyJWKSet``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

import aiohttp
from jwt import PyJWK, PyJWKSet
from jwt.exceptions import PyJWKSetError

logger = logging.getLogger(__name__)

#: A JWKS document larger than this is refused (sets are a few KiB).
MAX_JWKS_BYTES = 256 * 1024
#: Seconds one fetch of the set may take.
FETCH_TIMEOUT = 5.0


class JwksUnavailable(Exception):
    """The key set could not be fetched (and none is cached for the key asked)."""


class JwksCache:
    """The keys of one JWKS URL by ``kid``.

    Fetched on first use, refetched when older than ``max_age``, and when a
    token names a ``kid`` the set lacks, at most once per ``refetch_after``
    seconds (a flood of tokens with made-up kids costs one fetch a minute).
    Concurrent requests share one fetch.
    """

    def __init__(
        self,
        url: str,
        session: Callable[[], aiohttp.ClientSession],
        *,
        refetch_after: float = 60.0,
        max_age: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._session = session
        self._refetch_after = refetch_after
        self._max_age = max_age
        self._clock = clock
        self._keys: dict[str, PyJWK] = {}
        self._unnamed: list[PyJWK] = []
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._fetching: asyncio.Task[None] | None = None

    async def keys_for(self, kid: str | None) -> list[PyJWK]:
        """The keys that may have signed a token with this ``kid`` (all if it names none).

        Raises JwksUnavailable when the set cannot be fetched and holds nothing cached.
        """
        now = self._clock()
        stale = self._fetched_at is None or now - self._fetched_at >= self._max_age
        unknown = kid is not None and kid not in self._keys
        may_retry = self._attempted_at is None or now - self._attempted_at >= self._refetch_after
        if self._fetching is not None and not self._fetching.done():
            # A fetch is under way (started by another request): its keys may be the ones.
            await asyncio.shield(self._fetching)
        elif (stale or unknown) and may_retry:
            await self._refresh()
        if self._fetched_at is None:
            raise JwksUnavailable(f"the key set at {self.url} could not be fetched")
        if kid is None:
            return [*self._keys.values(), *self._unnamed]
        found = self._keys.get(kid)
        return [found] if found is not None else []

    async def _refresh(self) -> None:
        if self._fetching is None or self._fetching.done():
            self._attempted_at = self._clock()
            self._fetching = asyncio.get_running_loop().create_task(self._fetch())
        # Shielded: a request that gives up must not cancel the others' fetch.
        await asyncio.shield(self._fetching)

    async def _fetch(self) -> None:
        try:
            async with (
                asyncio.timeout(FETCH_TIMEOUT),
                self._session().get(
                    self.url, allow_redirects=False, headers={"Accept": "application/json"}
                ) as response,
            ):
                if response.status != 200:
                    raise ValueError(f"HTTP {response.status}")
                data = await response.content.read(MAX_JWKS_BYTES + 1)
                if len(data) > MAX_JWKS_BYTES:
                    raise ValueError(f"larger than {MAX_JWKS_BYTES} bytes")
            document = json.loads(data)
            if not isinstance(document, dict):
                raise ValueError("not a JSON object")
            keyset = PyJWKSet.from_dict(document)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, PyJWKSetError) as exc:
            # The old keys stay in use: an outage of the key server must not
            # refuse every token it signed before.
            logger.warning(
                "JWKS fetch failed",
                extra={"url": self.url, "cause": f"{type(exc).__name__}: {exc}"},
            )
            return
        self._keys = {key.key_id: key for key in keyset.keys if key.key_id is not None}
        self._unnamed = [key for key in keyset.keys if key.key_id is None]
        self._fetched_at = self._clock()
        logger.info("JWKS fetched", extra={"url": self.url, "keys": len(keyset.keys)})
