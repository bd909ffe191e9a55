"""The public way to call a configured upstream from any async code: ``upstream(name)``.

``upstream("users")`` finds the served app's upstream clients through a
context variable (no Flask needed): the gateway sets it for every request
it serves and every job it runs; a plain asyncio program sets it with
``open_upstreams(configs)`` or ``using_upstreams(upstreams)``. Every call
goes through the upstream's ``UpstreamClient.fetch``, so all its policies
apply (timeouts, retries and budget, circuit breaker, connection cap, body
cap, redirects, destination guard, headers, metrics, log lines).
"""

from __future__ import annotations

import asyncio
import contextvars
import json as jsonlib
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Final
from urllib.parse import quote

import aiohttp
from multidict import CIMultiDict

from clients.session import SessionLimits, guarded_session
from clients.upstream import UpstreamReply
from clients.upstream_client import UpstreamClient, UpstreamObserver
from clients.upstreams import Upstreams
from fanout.core.config import UpstreamConfig
from fanout.core.deadline import DEADLINE, check_seconds
from fanout.core.retry import RETRYABLE_METHODS
from fanout.process.logs import REQUEST_ID

REQUEST_ID_HEADER: Final = "X-Request-ID"
#: The longest pause between two tries (core.retry.backoff_delay's cap).
_MAX_BACKOFF_SECONDS: Final = 1.0
#: Characters a path may carry as they are: RFC 3986's reserved set and "%"
#: (already percent-encoded text is kept); anything else (spaces, non-ASCII,
#: "#") is percent-encoded rather than sent raw on the request line.
_PATH_SAFE: Final = "!$%&'()*+,/:;=?@[]~"

#: The upstream clients of the app being served (None: none in this context).
CURRENT_UPSTREAMS: contextvars.ContextVar[Upstreams | None] = contextvars.ContextVar(
    "fanout.upstreams", default=None
)


class UnknownUpstream(LookupError):
    """``upstream(name)`` named an upstream the gateway file does not configure."""

    def __init__(self, name: str, configured: Iterable[str]) -> None:
        self.upstream = name
        self.configured = tuple(configured)
        listed = ", ".join(repr(each) for each in self.configured) or "none"
        super().__init__(f"no upstream named {name!r} is configured (configured: {listed})")


class UpstreamsNotSet(LookupError):
    """``upstream(name)`` was called where no upstreams are set (see ``using_upstreams``)."""


def current_upstreams() -> Upstreams:
    """Return the upstream clients of the current context, or raise UpstreamsNotSet."""
    found = CURRENT_UPSTREAMS.get()
    if found is None:
        raise UpstreamsNotSet(
            "no upstreams are set here: upstream() works in a request or a job of the "
            "served gateway, or inside `async with clients.open_upstreams(configs)` / "
            "`with clients.using_upstreams(upstreams)`"
        )
    return found


def bind_upstreams(upstreams: Upstreams | None) -> None:
    """Set the upstreams for the rest of the current context (a request, a lifespan task)."""
    CURRENT_UPSTREAMS.set(upstreams)


@contextmanager
def using_upstreams(upstreams: Upstreams) -> Iterator[Upstreams]:
    """Make ``upstream(name)`` find ``upstreams`` inside the block (and in tasks started there)."""
    token = CURRENT_UPSTREAMS.set(upstreams)
    try:
        yield upstreams
    finally:
        CURRENT_UPSTREAMS.reset(token)


@asynccontextmanager
async def open_upstreams(
    configs: Mapping[str, UpstreamConfig] | Iterable[UpstreamConfig],
    *,
    limits: SessionLimits | None = None,
    observer: UpstreamObserver | None = None,
) -> AsyncIterator[Upstreams]:
    """Open a guarded session and clients for ``configs``, usable by ``upstream(name)`` inside.

    For code outside the served gateway (a script, a plain asyncio test):
    ``async with open_upstreams(load_gateway_config(path).upstreams): ...``.
    The session is closed on the way out.
    """
    by_name = dict(configs) if isinstance(configs, Mapping) else {cfg.name: cfg for cfg in configs}
    async with guarded_session(by_name.values(), limits or SessionLimits()) as session:
        with using_upstreams(Upstreams(by_name, session, observer=observer)) as upstreams:
            yield upstreams


def upstream(name: str) -> Upstream:
    """Return the configured upstream ``name``'s client (raises UnknownUpstream if unknown)."""
    upstreams = current_upstreams()
    client = upstreams.get(name)
    if client is None:
        raise UnknownUpstream(name, upstreams.names())
    return Upstream(client)


def http_session() -> aiohttp.ClientSession:
    """Return the raw shared session: no upstream policies, configured origins only.

    For the rare call ``upstream(name)`` cannot make. Its guard refuses any
    address that is not a configured upstream's origin (scheme, host and
    port) with ``aiohttp.ClientOSError`` (errno EACCES).
    """
    return current_upstreams().session


class Upstream:
    """Calls to one configured upstream; each returns the whole reply or raises UpstreamError.

    ``timeout`` is the call's overall deadline in seconds, retries included
    (each try is still bounded by the upstream's own ``timeout``); an
    enclosing ``clients.deadline(...)`` (a job's time limit, an aggregate
    endpoint's timeout) bounds it too. Without either, a call lasts at most
    its tries: ``timeout`` each, plus the pauses between them.
    """

    def __init__(self, client: UpstreamClient) -> None:
        self.client = client

    @property
    def name(self) -> str:
        """The upstream's configured name."""
        return self.client.name

    @property
    def config(self) -> UpstreamConfig:
        """The upstream's configuration."""
        return self.client.config

    def __repr__(self) -> str:
        return f"<Upstream {self.name!r} {self.config.base_url}>"

    async def get(
        self, path: str, *, timeout: float | None = None, headers: Mapping[str, str] | None = None
    ) -> UpstreamReply:
        """GET ``path`` (retried as the upstream's ``retries`` allow)."""
        return await self.request("GET", path, timeout=timeout, headers=headers)

    async def head(
        self, path: str, *, timeout: float | None = None, headers: Mapping[str, str] | None = None
    ) -> UpstreamReply:
        """HEAD ``path`` (retried as the upstream's ``retries`` allow)."""
        return await self.request("HEAD", path, timeout=timeout, headers=headers)

    async def post(
        self,
        path: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> UpstreamReply:
        """POST ``json`` (encoded) or ``data`` (bytes) to ``path``; never retried."""
        return await self.request(
            "POST", path, json=json, data=data, timeout=timeout, headers=headers
        )

    async def put(
        self,
        path: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> UpstreamReply:
        """PUT ``json`` (encoded) or ``data`` (bytes) to ``path``; never retried."""
        return await self.request(
            "PUT", path, json=json, data=data, timeout=timeout, headers=headers
        )

    async def patch(
        self,
        path: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> UpstreamReply:
        """PATCH ``path`` with ``json`` (encoded) or ``data`` (bytes); never retried."""
        return await self.request(
            "PATCH", path, json=json, data=data, timeout=timeout, headers=headers
        )

    async def delete(
        self,
        path: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> UpstreamReply:
        """DELETE ``path`` (a body, if any, from ``json`` or ``data``); never retried."""
        return await self.request(
            "DELETE", path, json=json, data=data, timeout=timeout, headers=headers
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> UpstreamReply:
        """Call ``method`` ``path`` (query string allowed) on the upstream; return its whole reply.

        Any status is returned (``reply.raise_for_status()`` turns 4xx/5xx
        into UpstreamStatusError); a call that fails raises UpstreamError
        (UpstreamTimeout, UpstreamUnavailable, CircuitOpen, ...). The
        current request id goes along as X-Request-ID.
        """
        method = method.upper()
        if json is not None and data is not None:
            raise TypeError("give json= or data=, not both")
        body = data
        sent: CIMultiDict[str] = CIMultiDict(headers or {})
        if json is not None:
            body = jsonlib.dumps(json, separators=(",", ":"), allow_nan=False).encode()
            sent.setdefault("Content-Type", "application/json")
        request_id = REQUEST_ID.get()
        if request_id is not None:
            sent.setdefault(REQUEST_ID_HEADER, request_id)
        return await self.client.fetch(
            method,
            quote(path, safe=_PATH_SAFE),
            deadline=self._deadline(method, timeout),
            headers=sent,
            body=body,
        )

    def _deadline(self, method: str, timeout: float | None) -> float:
        now = asyncio.get_running_loop().time()
        if timeout is not None:
            until = now + check_seconds(timeout)
        else:
            # As long as every try may take: the deadline never cuts one short.
            tries = 1 + (self.config.retries if method in RETRYABLE_METHODS else 0)
            until = now + tries * self.config.timeout + (tries - 1) * _MAX_BACKOFF_SECONDS
        outer = DEADLINE.get()
        return until if outer is None else min(until, outer)
