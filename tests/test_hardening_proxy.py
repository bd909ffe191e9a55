"""The proxy against hostile upstreams and hostile clients, through the real stack."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from flask import Response, request

from tests.gateway_serving import Gateway, gateway_serving
from tests.raw_upstream import Handler, RawUpstream, header, raw_upstream
from tests.test_proxy_headers import CLIENT_CLAIMS

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter


def _config(upstream_url: str, *, max_connections: int = 2, timeout: float = 1.0) -> str:
    return f"""
[upstreams.raw]
base_url = "{upstream_url}"
internal = true
timeout = {timeout}
connect_timeout = {min(timeout, 0.5)}
max_connections = {max_connections}
"""


@asynccontextmanager
async def _serving(
    handler: Handler, tmp_path: Path, **options: Any
) -> AsyncIterator[tuple[Gateway, RawUpstream]]:
    async with (
        raw_upstream(handler) as upstream,
        gateway_serving(_config(upstream.url, **options), tmp_path) as gateway,
    ):
        yield gateway, upstream


async def _raw_call(url: str, request: bytes, *, read_for: float = 10.0) -> bytes:
    """Send raw request bytes to the gateway; the answer as read until it closes or goes quiet."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    answer = b""
    try:
        async with asyncio.timeout(read_for):
            while chunk := await reader.read(65536):
                answer += chunk
    except TimeoutError:
        pass
    except ConnectionError:
        pass
    finally:
        writer.close()
    return answer


def _ok(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


# --- 2. non-ASCII header bytes from the upstream ---------------------------


async def test_obs_text_header_bytes_pass_through_and_never_leak_a_slot(tmp_path: Path) -> None:
    async def handler(head: bytes, reader: Reader, writer: Writer) -> None:
        if head.startswith(b"GET /bad "):
            writer.write(_ok(extra="X-Name: 日本\r\n".encode()))
        else:
            writer.write(_ok())
        await writer.drain()

    async with _serving(handler, tmp_path, max_connections=2) as (gateway, _):
        for _ in range(4):  # twice the upstream's connection slots
            async with gateway.client.get("/proxy/raw/bad") as response:
                assert response.status == 200
                assert await response.read() == b"ok"
                # The bytes as the upstream sent them (RFC 9110 obs-text is opaque).
                assert (b"x-name", "日本".encode()) in response.raw_headers
        async with gateway.client.get("/proxy/raw/good") as response:
            assert response.status == 200, await response.text()


async def test_a_failure_after_the_upstream_answered_still_frees_its_slot(tmp_path: Path) -> None:
    async def handler(head: bytes, reader: Reader, writer: Writer) -> None:
        writer.write(_ok())
        await writer.drain()

    async with _serving(handler, tmp_path, max_connections=2) as (gateway, _):

        def failing_hook(response: Response) -> Response:
            if request.path.startswith("/proxy/raw/fail"):
                raise RuntimeError("a hook failed after the upstream answered")
            return response

        # Added behind Flask's back: the app has served (its readiness probe).
        gateway.app.after_request_funcs.setdefault(None, []).append(failing_hook)
        for _ in range(4):  # twice the upstream's connection slots
            async with gateway.client.get("/proxy/raw/fail") as response:
                assert response.status == 500
        async with gateway.client.get("/proxy/raw/good") as response:
            assert response.status == 200, await response.text()


# --- 3. slow uploads and Expect: 100-continue -------------------------------


async def _echo_body(head: bytes, reader: Reader, writer: Writer) -> None:
    """Read a Content-Length body and answer its length; answer 200 "ok" to anything else."""
    length = int(header(head, b"content-length") or b"0")
    body = await reader.readexactly(length)
    writer.write(_ok(b"%d" % len(body)))
    await writer.drain()


async def test_an_idle_upload_ends_the_call_and_frees_the_slot(tmp_path: Path) -> None:
    async with _serving(_echo_body, tmp_path, max_connections=1, timeout=0.5) as (gateway, _):
        host, port = gateway.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        # 5 of 100 bytes, then nothing: the upstream waits for the rest.
        writer.write(b"POST /proxy/raw/up HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nhello")
        async with asyncio.timeout(10):
            answer = await reader.read(65536)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b"application/problem+json" in answer
        assert b"connection: close" in answer.lower()  # the rest of the body never comes
        # The one slot is free again.
        async with gateway.client.post("/proxy/raw/up", data=b"x" * 10) as response:
            assert response.status == 200, await response.text()
            assert await response.read() == b"10"


async def test_expect_100_continue_is_not_forwarded(tmp_path: Path) -> None:
    # This upstream, as RFC 9110 allows, never sends 100 Continue: it just
    # waits for the body, which a client waiting for its 100 never sends.
    async with _serving(_echo_body, tmp_path, timeout=0.5) as (gateway, upstream):
        async with asyncio.timeout(10):
            async with gateway.client.post(
                "/proxy/raw/up", data=b"hello", expect100=True
            ) as response:
                assert response.status == 200, await response.text()
                assert await response.read() == b"5"
        assert header(upstream.heads[-1], b"expect") is None


# --- 5. Content-Length and Transfer-Encoding together ------------------------


async def _echo_framing(head: bytes, reader: Reader, writer: Writer) -> None:
    """Read the body as framed (chunked wins, as RFC 9112 says); answer what arrived."""
    if b"chunked" in (header(head, b"transfer-encoding") or b"").lower():
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            body += await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")
    else:
        async with asyncio.timeout(2):
            body = await reader.readexactly(int(header(head, b"content-length") or b"0"))
    writer.write(_ok(body))
    await writer.drain()


async def test_content_length_with_chunked_is_refused_and_the_connection_closed(
    tmp_path: Path,
) -> None:
    async with _serving(_echo_framing, tmp_path) as (gateway, upstream):
        answer = await _raw_call(
            gateway.url,
            b"POST /proxy/raw/up HTTP/1.1\r\nHost: t\r\nContent-Length: 30\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )
        assert answer.startswith(b"HTTP/1.1 400"), answer
        assert b"connection: close" in answer.lower()
        assert upstream.heads == []


# --- 7. client address headers ------------------------------------------------


async def test_client_address_claims_never_reach_the_upstream(tmp_path: Path) -> None:
    async def handler(head: bytes, reader: Reader, writer: Writer) -> None:
        writer.write(_ok())
        await writer.drain()

    claims = {name: value for name, value in CLIENT_CLAIMS if name != "Expect"}
    async with (
        _serving(handler, tmp_path) as (gateway, upstream),
        gateway.client.get("/proxy/raw/who", headers={**claims, "Via": "1.0 evil"}) as response,
    ):
        assert response.status == 200
    seen = upstream.heads[-1]
    for name in claims:
        assert header(seen, name.encode()) is None, name
    assert header(seen, b"via") == b"1.1 fanout"
    assert header(seen, b"x-forwarded-for") == b"127.0.0.1"


# --- 9. dot segments by any separator -----------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/proxy/raw/..%5C..%5Csecret",
        "/proxy/raw/..%5c..%5csecret",
        "/proxy/raw/..\\..\\secret",
        "/proxy/raw/a/..\\secret",
        "/proxy/raw/%2e%2e%5Csecret",
        "/proxy/raw/.\\secret",
        "/proxy/raw/..;/secret",  # Tomcat and Jetty take "..;" for ".."
        "/proxy/raw/%2e%2e;x=1/secret",
        "/proxy/raw/%252e%252e/secret",  # an upstream decoding twice
        "/proxy/raw/%252e%252e%255csecret",
        "/proxy/raw/.../secret",  # Windows drops trailing dots and spaces
        "/proxy/raw/..%20/secret",
        "/proxy/raw/..%00/secret",
    ],
)
async def test_dot_segments_are_refused_whatever_the_separator(tmp_path: Path, path: str) -> None:
    async def handler(head: bytes, reader: Reader, writer: Writer) -> None:
        writer.write(_ok())
        await writer.drain()

    async with _serving(handler, tmp_path) as (gateway, upstream):
        answer = await _raw_call(
            gateway.url, f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
        )
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert upstream.heads == []


@pytest.mark.parametrize(
    ("path", "upstream_path"),
    [
        ("/proxy/raw/a%5Cb", b"/a%5Cb"),
        ("/proxy/raw/..a/b..", b"/..a/b.."),
        ("/proxy/raw/a;b/c", b"/a;b/c"),
        ("/proxy/raw/%25/x", b"/%25/x"),
    ],
)
async def test_paths_that_only_look_like_dot_segments_pass(
    tmp_path: Path, path: str, upstream_path: bytes
) -> None:
    async def handler(head: bytes, reader: Reader, writer: Writer) -> None:
        writer.write(_ok())
        await writer.drain()

    async with _serving(handler, tmp_path) as (gateway, upstream):
        answer = await _raw_call(
            gateway.url, f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
        )
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert upstream.heads[0].startswith(b"GET " + upstream_path + b" HTTP/1.1")
