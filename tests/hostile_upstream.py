"""A raw asyncio upstream on 127.0.0.1, port 0, answering each path with canned bytes.

Most answers are what a broken or hostile HTTP server might send: a bad
status line, a control byte in a header, a bad chunk size, bytes that are not
HTTP at all, a body shorter than its Content-Length, broken compression. The
last path segment (before the query) picks the answer, so the upstream can be
configured under any base path. ``/echo-query`` answers the raw query string.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

#: How long a connection may take to send its request head.
_HEAD_SECONDS = 5.0


def _ok(body: bytes, *extra: str, content_type: str = "application/json") -> bytes:
    headers = [
        "HTTP/1.1 200 OK",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *extra,
    ]
    return ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + body


def _bad_crc_gzip() -> bytes:
    packed = bytearray(gzip.compress(b'{"a": 1}'))
    packed[-8] ^= 0xFF  # the CRC32 in the trailer
    return bytes(packed)


#: Answers that make a call fail as malformed (the finding-6 cases).
MALFORMED: dict[str, bytes] = {
    "bad-status": b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\n{}",
    "bad-header": b"HTTP/1.1 200 OK\r\nX-B\x01d: 1\r\nContent-Length: 2\r\n\r\n{}",
    "bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "garbage": b"\x16\x03\x01\x02\x00 not HTTP at all\r\n\r\n",
}

#: Every canned answer, by the last segment of the request path.
ANSWERS: dict[str, bytes] = {
    **MALFORMED,
    "json": _ok(b'{"ok": true}'),
    "error-500": b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 2\r\n"
    b"Connection: close\r\n\r\n{}",
    # A Content-Length larger than what is sent, then the connection closes.
    "short-body": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    b'Content-Length: 100\r\nConnection: close\r\n\r\n{"a": 1}',
    "gzip-bad-crc": _ok(_bad_crc_gzip(), "Content-Encoding: gzip"),
    "gzip-truncated": _ok(gzip.compress(b'{"a": 1}')[:-8], "Content-Encoding: gzip"),
    "brotli": _ok(b'{"a": 1}', "Content-Encoding: br"),
    "unknown-encoding": _ok(b'{"a": 1}', "Content-Encoding: x-zork"),
    "double-gzip": _ok(gzip.compress(gzip.compress(b'{"a": 1}')), "Content-Encoding: gzip, gzip"),
    "continue-first": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    + _ok(b'{"after": "1xx"}'),
    "no-content-with-body": b"HTTP/1.1 204 No Content\r\nContent-Length: 8\r\n"
    b'Connection: close\r\n\r\n{"a": 1}',
    "bom": _ok(b'\xef\xbb\xbf{"a": 1}'),
    "utf-16": _ok('{"a": "\u00e9"}'.encode("utf-16")),
    "nan": _ok(b'{"a": NaN, "b": -Infinity}'),
    "overflow": _ok(b'{"a": 1e999}'),
    "long-int": _ok(b'{"a": ' + b"9" * 5000 + b"}"),
    "duplicate-keys": _ok(b'{"a": 1, "a": 2}'),
    "retry-after-huge": b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 999999999\r\n"
    b"Content-Length: 2\r\nConnection: close\r\n\r\n{}",
}


@dataclass
class HostileUpstream:
    """What the hostile upstream saw; its port once started."""

    port: int = 0
    #: Request targets (path and query) in arrival order.
    targets: list[str] = field(default_factory=list)


def _answer(target: str) -> bytes:
    path, _, query = target.partition("?")
    case = path.rstrip("/").rsplit("/", 1)[-1]
    if case == "echo-query":
        return _ok(json.dumps({"query": query}).encode())
    return ANSWERS.get(case, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")


@asynccontextmanager
async def hostile_upstream() -> AsyncIterator[HostileUpstream]:
    """Run the hostile upstream for the duration of the block."""
    state = HostileUpstream()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _HEAD_SECONDS)
            target = head.split(b"\r\n", 1)[0].split(b" ")[1].decode("latin-1")
            state.targets.append(target)
            writer.write(_answer(target))
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, TimeoutError, IndexError):
            pass  # the client went away or sent no request: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()
