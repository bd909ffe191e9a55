"""What of the client's request a backend call carries: listed headers, query, identity (pure).

Nothing is forwarded unless the config lists it. Every value forwarded is
also part of the call's cache and coalescing key (``Forwarded.key``), so a
caller never receives an answer produced for another caller's values.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote_plus

from fanout.core.config import BackendConfig, UpstreamConfig


@dataclass(frozen=True)
class ForwardRule:
    """A backend's forwarding, with its upstream's defaults filled in."""

    #: Lower-case names of the client headers passed on.
    headers: frozenset[str]
    #: Query parameter names passed on; None with ``all_query``: every one.
    query: frozenset[str]
    all_query: bool
    #: The header that carries the caller's name, if any.
    identity: str | None

    @classmethod
    def of(cls, backend: BackendConfig, upstream: UpstreamConfig) -> ForwardRule:
        """The rule of ``backend`` (its own settings, else its upstream's)."""
        headers = (
            backend.forward_headers
            if backend.forward_headers is not None
            else upstream.forward_headers
        )
        query = backend.forward_query if backend.forward_query is not None else ()
        if backend.forward_query is None and not backend.pass_query:
            query = upstream.forward_query
        return cls(
            headers=frozenset(name.lower() for name in headers),
            query=frozenset(query),
            all_query=backend.pass_query,
            identity=backend.forward_identity or upstream.forward_identity,
        )

    @property
    def forwards_anything(self) -> bool:
        """Whether any value of the client's request is passed on."""
        return bool(self.headers or self.query or self.all_query or self.identity)


@dataclass(frozen=True)
class Forwarded:
    """The client values one backend call carries."""

    headers: tuple[tuple[str, str], ...]
    query: str

    @property
    def key(self) -> tuple[tuple[str, str], ...]:
        """The headers as a cache key part (the query is in the path already)."""
        return tuple((name.lower(), value) for name, value in self.headers)


def forwarded(
    rule: ForwardRule,
    client_headers: Iterable[tuple[str, str]],
    query_string: str,
    caller_name: str | None,
) -> Forwarded:
    """The headers and query ``rule`` passes on from the client's request.

    The identity header is never taken from the client: it is the caller's
    name or absent (an anonymous caller sends none).
    """
    identity = rule.identity.lower() if rule.identity is not None else None
    headers = [
        (name, value)
        for name, value in client_headers
        if name.lower() in rule.headers and name.lower() != identity
    ]
    if rule.identity is not None and caller_name is not None:
        headers.append((rule.identity, caller_name))
    headers.sort(key=lambda item: item[0].lower())
    return Forwarded(tuple(headers), _query(rule, query_string))


def _query(rule: ForwardRule, query_string: str) -> str:
    if rule.all_query:
        return query_string
    if not rule.query or not query_string:
        return ""
    return "&".join(
        part
        for part in query_string.split("&")
        if part and unquote_plus(part.partition("=")[0]) in rule.query
    )
