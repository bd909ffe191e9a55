"""An upstream's complete reply, and how a call's failure and body are judged."""

from __future__ import annotations

import errno
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.http_exceptions import ContentLengthError

from clients.errors import BadUpstreamPayload, UpstreamStatusError
from fanout.core.circuit import FailureKind

#: Content-Encodings a body is read in: none, or one aiohttp decodes itself
#: (it decodes only a single coding; "br" and "zstd" fail there when their
#: libraries are missing, as malformed answers).
_DECODED_ENCODINGS = frozenset({"", "identity", "gzip", "deflate", "br", "zstd"})


@dataclass(frozen=True)
class UpstreamReply:
    """A complete upstream answer."""

    upstream: str
    status: int
    headers: Mapping[str, str]
    body: bytes

    def raise_for_status(self) -> UpstreamReply:
        """Return this reply if its status is 2xx or 3xx, else raise UpstreamStatusError."""
        if self.status >= 400:
            raise UpstreamStatusError(self.upstream, self.status)
        return self

    def json(self) -> Any:
        """Decode the body as JSON (RFC 8259: no NaN nor infinity), or raise BadUpstreamPayload."""
        try:
            # Python's decoder takes NaN, Infinity and 1e999 (inf); passed on,
            # they would make the gateway's own answer invalid JSON.
            return json.loads(self.body, parse_constant=_not_json, parse_float=_finite_float)
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
            raise BadUpstreamPayload(self.upstream, f"invalid JSON from {self.upstream}") from exc


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("a number out of the range of a double")
    return value


def classify_failure(error: BaseException) -> tuple[FailureKind, str]:
    """The kind of a failed call's transport error, and a phrase saying it to a client.

    The phrase ("is unavailable: connection refused", "sent a malformed
    response") never carries the exception's text: aiohttp's messages name
    the URL (whose path may hold a secret from the config) or the host and
    port. The caller logs the exception itself.
    """
    if isinstance(error, aiohttp.ClientConnectorDNSError):
        return FailureKind.CONNECT, "is unavailable: its host name did not resolve"
    if isinstance(error, aiohttp.ClientConnectorCertificateError):
        return FailureKind.CONNECT, "is unavailable: its TLS certificate was refused"
    if isinstance(error, aiohttp.ClientConnectorSSLError):
        return FailureKind.CONNECT, "is unavailable: the TLS handshake failed"
    if isinstance(error, aiohttp.ClientConnectorError):
        if error.os_error.errno == errno.ECONNREFUSED:
            return FailureKind.CONNECT, "is unavailable: connection refused"
        return FailureKind.CONNECT, "is unavailable: could not connect"
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return FailureKind.CONNECT, "is unavailable: the connection was not accepted in time"
    if isinstance(error, aiohttp.ClientPayloadError):
        if isinstance(error.__cause__, ContentLengthError):
            # Fewer bytes than announced, then the end: a reset or a close.
            return FailureKind.BROKEN, "is unavailable: its answer was cut short"
        return FailureKind.MALFORMED, "sent a malformed response body"
    if isinstance(error, aiohttp.ClientResponseError):
        # Also a Content-Encoding aiohttp cannot decode (br without Brotli).
        return FailureKind.MALFORMED, "sent a malformed response"
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return FailureKind.BROKEN, "is unavailable: it closed the connection"
    return FailureKind.BROKEN, "is unavailable: the connection broke"


async def read_capped(response: aiohttp.ClientResponse, upstream: str, limit: int) -> bytes:
    """Read the whole (decompressed) body, or raise BadUpstreamPayload past ``limit`` bytes."""
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in _DECODED_ENCODINGS:
        # aiohttp passes any other coding through as it came: the bytes
        # would be read as if they were the body itself.
        raise BadUpstreamPayload(
            upstream, f"{upstream} answered in a Content-Encoding it cannot decode"
        )
    if response.content_length is not None:
        if response.content_length > limit:
            raise BadUpstreamPayload(upstream, f"{upstream} answered more than {limit} bytes")
        if not response.headers.get("Content-Encoding"):
            # The declared size bounds what read() takes in: one call, no copies.
            return await response.read()
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise BadUpstreamPayload(upstream, f"{upstream} answered more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
