"""``ANY /proxy/<upstream>/<path>``: forward to a configured upstream, streaming both ways."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable
from urllib.parse import quote, unquote

from flask import Blueprint, Response, abort, current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from clients.errors import UpstreamError
from fanout.bridge import (
    call_when_exchange_ends,
    iterate_async,
    limit_send_idle,
    request_body_chunks,
    request_body_over_limit,
)
from fanout.core.identity import current_caller
from fanout.core.proxy_headers import ClientSide, client_response_headers, upstream_request_headers
from handlers.request_ids import current_request_id
from handlers.resources import gateway_config, upstreams

blueprint = Blueprint("proxy", __name__)

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
CHUNK_BYTES = 64 * 1024


@blueprint.route("/proxy/<upstream>/", defaults={"path": ""}, methods=METHODS)
@blueprint.route("/proxy/<upstream>/<path:path>", methods=METHODS)
async def proxy(upstream: str, path: str) -> Response:
    """Forward the request to the upstream and stream its answer back."""
    client = upstreams(current_app).get(upstream)
    if client is None:
        abort(404, description=f"No upstream named {upstream!r} is configured.")
    target = _upstream_path(upstream, path)
    headers = upstream_request_headers(
        _client_headers(request.headers.items()),
        client=ClientSide(
            address=request.remote_addr or "",
            scheme=request.scheme,
            host=request.host,
            request_id=current_request_id(),
            http_version=request.environ.get("SERVER_PROTOCOL", "HTTP/1.1").removeprefix("HTTP/"),
        ),
        forward=client.config.forward_headers,
        trusted_proxies=gateway_config(current_app).server.trusted_proxies,
    )
    identity = client.config.forward_identity
    if identity is not None:
        # Never the client's own claim of who it is: the caller auth established, or none.
        headers = [(name, value) for name, value in headers if name.lower() != identity.lower()]
        caller = current_caller()
        if caller.name is not None:
            headers.append((identity, caller.name))
    body = await _request_body()
    try:
        stream = await client.open_stream(
            request.method,
            target,
            headers=headers,
            body=body,
            min_upload_rate=gateway_config(current_app).server.min_upload_rate,
        )
    except UpstreamError:
        # A body that went over the limit while being streamed up shows as a
        # broken upstream call: answer 413, as for a declared length.
        if request_body_over_limit():
            raise RequestEntityTooLarge() from None
        raise
    # The upstream's connection slot is freed whatever fails from here on (a
    # hook, the server refusing the response's start), not only when the
    # response is closed; closing twice is a no-op.
    call_when_exchange_ends(stream.close)
    # A client that stops reading must not hold the slot either: it gets as
    # long per chunk as the upstream does.
    limit_send_idle(client.config.timeout)
    answer = stream.response
    pass_cookies = "cookie" in {name.lower() for name in client.config.forward_headers}
    response = Response(
        iterate_async(stream.chunks(CHUNK_BYTES)),
        status=answer.status,
        headers=client_response_headers(
            _raw_headers(answer.raw_headers), pass_cookies=pass_cookies
        ),
    )
    if "Content-Type" not in answer.headers:
        # Werkzeug adds text/html by default; say nothing the upstream did not.
        del response.headers["Content-Type"]
    # Also closed when the body is never iterated (HEAD, 204, 304).
    response.call_on_close(stream.close)
    return response


#: Where upstreams split paths: "/" and, on Windows servers (and some
#: frameworks), "\\".
_SEPARATORS = re.compile(r"[/\\]")
#: How many layers of percent-encoding are looked through: some upstreams
#: (or a proxy in front of them) decode twice.
_DECODINGS = 3


def _has_dot_segment(path: str) -> bool:
    # Looked at as sent and after each decoding: an upstream that decodes
    # %2F, %5C or %2E (once or twice) before resolving would see them.
    for _ in range(_DECODINGS):
        decoded = unquote(path)
        if any(_is_dot_segment(segment) for segment in _SEPARATORS.split(decoded)):
            return True
        if decoded == path:
            return False
        path = decoded
    return False


def _is_dot_segment(segment: str) -> bool:
    # Tomcat and Jetty drop ";params" before resolving ("..;" is ".."), and
    # Windows drops trailing dots and spaces ("..." and ".. " are ".."); a
    # NUL may end the path for a C upstream.
    core = segment.split(";", 1)[0]
    return "." in core and not core.strip(". \t\x00")


def _client_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    # WSGI hands header bytes over as latin-1 strings, and aiohttp encodes
    # what it sends as UTF-8: non-ASCII bytes would reach the upstream
    # re-encoded ("日本" as mojibake). UTF-8 bytes are passed on unchanged;
    # other bytes aiohttp cannot send, and the proxy does not alter a request.
    converted = []
    for name, value in headers:
        if value.isascii():
            converted.append((name, value))
            continue
        try:
            converted.append((name, value.encode("latin-1").decode("utf-8")))
        except UnicodeDecodeError:
            abort(400, description=f"Header {name} holds bytes that are neither ASCII nor UTF-8.")
    return converted


def _raw_headers(raw: tuple[tuple[bytes, bytes], ...]) -> list[tuple[str, str]]:
    # The header bytes exactly as the upstream sent them, as WSGI's latin-1
    # strings: obs-text (bytes 0x80-0xFF, RFC 9110 5.5) is opaque data a proxy
    # passes on unchanged. aiohttp's decoded (UTF-8) values would not survive
    # the server's latin-1 encoding, and re-encoding them would alter them.
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in raw]


async def _request_body() -> AsyncIterator[bytes] | None:
    """The client's body to stream upstream, or None if it sent none."""
    if request.content_length is not None:
        return request_body_chunks() if request.content_length else None
    if "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        return request_body_chunks()
    if request.environ.get("SERVER_PROTOCOL", "HTTP/1.1") in ("HTTP/1.0", "HTTP/1.1"):
        return None  # HTTP/1 without either header has no body (RFC 9112 6.3)
    # HTTP/2 and 3 frame a body without Content-Length: wait for its first
    # bytes (or its end) to know whether there is one.
    chunks = request_body_chunks()
    first = await anext(chunks, None)
    if first is None:
        return None
    return _starting_with(first, chunks)


async def _starting_with(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


def _upstream_path(upstream: str, path: str) -> str:
    scope = request.environ.get("asgi.scope")
    prefix = f"/proxy/{upstream}".encode()
    raw: bytes | None = scope.get("raw_path") if scope else None
    if raw is not None and raw.startswith(prefix):
        # The path exactly as the client encoded it (%2F stays %2F).
        tail = raw[len(prefix) :].decode("latin-1")
    else:
        tail = "/" + quote(path, safe="/:@!$&'()*+,;=-._~")
    # The tail is appended to the upstream's base URL: anything but "/..."
    # (e.g. "%2F@other.host/") could change the host, and dot segments could
    # climb out of the base URL's path.
    if not tail.startswith("/") or tail.startswith("//"):
        abort(404, description="No such proxied path.")
    if _has_dot_segment(tail):
        abort(400, description="Proxied paths may not contain . or .. segments.")
    query = request.query_string.decode("latin-1")
    return f"{tail}?{query}" if query else tail
