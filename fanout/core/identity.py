"""Who a request is from: the caller, as auth established it (pure; no Flask).

The gateway sets the caller of every request before its view runs (and a
job started by it inherits it); views, jobs and helpers read it with
``current_caller()``. The caller holds a name, never a secret: an API key
is known by its configured name, a token by its ``sub``.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

__all__ = ["CURRENT_CALLER", "Caller", "CallerKind", "current_caller"]


class CallerKind(StrEnum):
    """How the caller was identified."""

    API_KEY = "api_key"
    JWT = "jwt"
    ANONYMOUS = "anonymous"


def _no_claims() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True)
class Caller:
    """The caller of a request.

    ``name``: the API key's configured name, the token's ``sub``, or None
    when anonymous. ``address``: the client's address (X-Forwarded-For
    believed only as deep as ``trusted_proxies``). ``scopes``: what the
    token grants (an API key grants every scope). ``claims``: the token's
    verified claims (empty otherwise).
    """

    kind: CallerKind
    name: str | None
    address: str
    scopes: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=_no_claims, hash=False)

    @property
    def anonymous(self) -> bool:
        """True when no credential identified the caller."""
        return self.kind is CallerKind.ANONYMOUS

    @property
    def label(self) -> str:
        """How logs name the caller: ``api_key:<name>``, ``jwt:<sub>`` or ``anonymous``."""
        return "anonymous" if self.name is None else f"{self.kind}:{self.name}"

    @property
    def owner(self) -> str | None:
        """The job owner this caller is: the key's name, ``jwt:<sub>``, or None (anonymous).

        A key's name alone, as before tokens existed, so jobs stored then keep
        their owner; key names cannot hold ':', so no token's owner equals one.
        """
        if self.kind is CallerKind.API_KEY:
            return self.name
        return self.label if self.name is not None else None

    @property
    def rate_key(self) -> str:
        """What rate limits count by: the identity, or the address when anonymous."""
        return f"ip:{self.address}" if self.name is None else self.label

    def has_scopes(self, needed: tuple[str, ...] | frozenset[str]) -> bool:
        """Whether the caller holds every scope in ``needed`` (an API key holds all)."""
        if self.kind is CallerKind.API_KEY:
            return True
        return all(scope in self.scopes for scope in needed)


#: The caller of the request (or job) being served; None outside of one.
CURRENT_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "fanout.caller", default=None
)


def current_caller() -> Caller:
    """Return the caller of the request or job being served (anonymous outside of one)."""
    found = CURRENT_CALLER.get()
    return found if found is not None else Caller(CallerKind.ANONYMOUS, None, "")
