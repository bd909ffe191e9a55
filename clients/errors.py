"""Errors of upstream calls, one small hierarchy::

    UpstreamError                 any failed call to an upstream
     +-- UpstreamTimeout          no complete answer within the deadline
     +-- UpstreamUnavailable      could not connect, or the connection broke
     +-- BadUpstreamPayload       an answer that cannot be used (too large, not JSON)
     +-- UpstreamStatusError      an answer with an error status (4xx, 5xx)
     +-- CircuitOpen              refused without a call: the upstream's circuit is open
     +-- BlockedDestination       refused without a call: a forbidden address
     +-- UploadStalled            the client's streamed body stopped arriving (its fault)

``errors.py`` maps them to problem details, in one place.
"""

from __future__ import annotations


class UpstreamError(Exception):
    """A call to an upstream failed."""

    def __init__(self, upstream: str, message: str) -> None:
        super().__init__(message)
        self.upstream = upstream


class UpstreamTimeout(UpstreamError):
    """The upstream gave no complete answer within the deadline."""


class UpstreamUnavailable(UpstreamError):
    """The upstream could not be reached, or the connection broke."""


class BadUpstreamPayload(UpstreamError):
    """The upstream answered with a body that cannot be used."""


class UpstreamStatusError(UpstreamError):
    """The upstream answered with an error status."""

    def __init__(self, upstream: str, status: int) -> None:
        super().__init__(upstream, f"{upstream} answered HTTP {status}")
        self.status = status


class CircuitOpen(UpstreamError):
    """The upstream's circuit breaker is open: the call was not made."""

    def __init__(self, upstream: str, message: str, retry_after: float = 1.0) -> None:
        super().__init__(upstream, message)
        #: Seconds until the circuit lets a trial call through.
        self.retry_after = retry_after


class BlockedDestination(UpstreamError):
    """The destination address is forbidden (loopback, private, metadata...): no connection made."""


class UploadStalled(UpstreamError):
    """The client's streamed body stopped arriving: the call ended (not the upstream's fault)."""
