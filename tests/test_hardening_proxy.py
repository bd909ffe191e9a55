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


def _config(
    upstream_url: str,
    *,
    max_connections: int = 2,
    timeout: float = 1.0,
    min_upload_rate: int | None = None,
) -> str:
    server = "" if min_upload_rate is None else f"[server]\nmin_upload_rate = {min_upload_rate}\n"
    return f"""{server}
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
    """Send raw request bytes to the gateway; its answer, read until it closes the connection."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    answer = b""
    try:
        async with asyncio.timeout(read_for):
            while chunk := await reader.read(65536):
                answer += chunk
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


async def _upload_slowly(
    gateway: Gateway, size: int, chunk: int, pause: float, *, read_for: float = 20.0
) -> bytes:
    """POST ``size`` bytes to the proxy, ``chunk`` bytes every ``pause`` seconds; the answer."""
    host, port = gateway.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = b"POST /proxy/raw/up HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size
    writer.write(head)

    async def trickle() -> None:
        for _ in range(size // chunk):
            writer.write(b"x" * chunk)
            await writer.drain()
            await asyncio.sleep(pause)

    sender = asyncio.create_task(trickle())
    try:
        async with asyncio.timeout(read_for):
            return await reader.readuntil(b"\r\n\r\n")
    finally:
        sender.cancel()
        writer.close()


async def test_a_trickled_upload_ends_the_call_and_frees_the_slot(tmp_path: Path) -> None:
    # One byte every 0.1 s never leaves the upstream idle for its 0.5 s
    # timeout, yet 1,000 bytes would hold its only slot for 100 s: below
    # [server] min_upload_rate (500 bytes/s by default) the call ends.
    async with _serving(_echo_body, tmp_path, max_connections=1, timeout=0.5) as (gateway, _):
        answer = await _upload_slowly(gateway, 1000, 1, 0.1)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        async with gateway.client.post("/proxy/raw/up", data=b"x" * 10) as response:
            assert response.status == 200, await response.text()
            assert await response.read() == b"10"


async def test_an_upload_at_a_fair_rate_is_passed_whole(tmp_path: Path) -> None:
    # 1 KiB every 0.2 s (5 KiB/s) with pauses shorter than the timeout: served.
    async with _serving(_echo_body, tmp_path, max_connections=1, timeout=0.5) as (gateway, _):
        answer = await _upload_slowly(gateway, 8 * 1024, 1024, 0.2)
        assert answer.startswith(b"HTTP/1.1 200"), answer


async def test_the_minimum_upload_rate_can_be_turned_off(tmp_path: Path) -> None:
    async with _serving(
        _echo_body, tmp_path, max_connections=1, timeout=0.5, min_upload_rate=0
    ) as (gateway, _):
        answer = await _upload_slowly(gateway, 20, 1, 0.1)
        assert answer.startswith(b"HTTP/1.1 200"), answer


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


# --- further probes: hostile upstreams ----------------------------------------


def _scripted(answers: dict[bytes, bytes], default: bytes | None = None) -> Handler:
    """Answer each request path with its raw bytes (then close if it ends without a body)."""

    async def handler(head: bytes, reader: Reader, writer: Writer) -> None:
        path = head.split(b" ", 2)[1]
        writer.write(answers.get(path, default if default is not None else _ok()))
        await writer.drain()

    return handler


#: Upstream answers aiohttp refuses to parse: each must be a 502, freeing the slot.
MALFORMED = {
    b"/cr-in-value": b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 2\r\n\r\nok",
    b"/nul-in-value": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    b"/space-in-name": b"HTTP/1.1 200 OK\r\nX A: b\r\nContent-Length: 2\r\n\r\nok",
    b"/conflicting-length": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\nok"
    ),
    b"/equal-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    b"/length-and-chunked": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n"
    ),
    b"/huge-header": b"HTTP/1.1 200 OK\r\nX-A: " + b"a" * 100_000 + b"\r\n\r\n",
    b"/many-headers": b"HTTP/1.1 200 OK\r\n" + b"X-A: a\r\n" * 20_000 + b"\r\n",
    b"/bad-status": b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
    b"/not-http": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
}


@pytest.mark.parametrize("path", sorted(MALFORMED), ids=lambda p: p.decode())
async def test_malformed_upstream_answers_are_502_and_free_the_slot(
    tmp_path: Path, path: bytes
) -> None:
    async with _serving(_scripted(MALFORMED), tmp_path, max_connections=1) as (gateway, _):
        for _ in range(2):
            async with gateway.client.get(f"/proxy/raw{path.decode()}") as response:
                assert response.status == 502, await response.text()
                assert response.content_type == "application/problem+json"
        async with gateway.client.get("/proxy/raw/good") as response:
            assert response.status == 200, await response.text()


async def test_an_upstream_breaking_its_chunked_body_aborts_the_answer_and_frees_the_slot(
    tmp_path: Path,
) -> None:
    async def handler(head: bytes, reader: Reader, writer: Writer) -> None:
        if not head.startswith(b"GET /bad-chunk "):
            writer.write(_ok())
            return
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)  # the head is on its way to the client by now
        writer.write(b"zz\r\nnot a chunk\r\n")
        await writer.drain()

    async with _serving(handler, tmp_path, max_connections=1) as (gateway, _):
        for _ in range(2):
            answer = await _raw_call(
                gateway.url,
                b"GET /proxy/raw/bad-chunk HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            )
            # The head went out; the body is cut without its last chunk, so
            # the client cannot take the truncated body for a whole one.
            assert answer.startswith(b"HTTP/1.1 200"), answer
            assert not answer.endswith(b"0\r\n\r\n"), answer
        async with gateway.client.get("/proxy/raw/good") as response:
            assert response.status == 200


async def test_informational_answers_before_the_final_one(tmp_path: Path) -> None:
    answers = {
        b"/hints": b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" + _ok(),
        b"/processing": b"HTTP/1.1 102 Processing\r\n\r\n" + _ok(),
        b"/continue": b"HTTP/1.1 100 Continue\r\n\r\n" + _ok(),
    }
    async with _serving(_scripted(answers), tmp_path, max_connections=1) as (gateway, _):
        for path in answers:
            async with gateway.client.get(f"/proxy/raw{path.decode()}") as response:
                # Skipped (RFC 9110 15.2: a proxy may drop 1xx it does not
                # understand); the final answer comes through.
                assert response.status == 200, (path, await response.text())
                assert await response.read() == b"ok"
        async with gateway.client.get("/proxy/raw/good") as response:
            assert response.status == 200


# --- further probes: hostile clients ------------------------------------------


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "PROPFIND", "FOO"])
async def test_methods_the_proxy_does_not_serve_never_reach_the_upstream(
    tmp_path: Path, method: str
) -> None:
    async with _serving(_scripted({}), tmp_path) as (gateway, upstream):
        answer = await _raw_call(
            gateway.url,
            f"{method} /proxy/raw/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode(),
        )
    assert answer[:12] in (b"HTTP/1.1 405", b"HTTP/1.1 400"), answer
    assert upstream.heads == []


async def test_client_header_bytes_reach_the_upstream_unchanged(tmp_path: Path) -> None:
    async with _serving(_scripted({}), tmp_path) as (gateway, upstream):
        answer = await _raw_call(
            gateway.url,
            "GET /proxy/raw/x HTTP/1.1\r\nHost: t\r\nX-Name: 日本\r\n"
            "Connection: close\r\n\r\n".encode(),
        )
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert header(upstream.heads[0], b"x-name") == "日本".encode()


async def test_client_header_bytes_that_are_not_utf8_are_refused(tmp_path: Path) -> None:
    async with _serving(_scripted({}), tmp_path) as (gateway, upstream):
        answer = await _raw_call(
            gateway.url,
            b"GET /proxy/raw/x HTTP/1.1\r\nHost: t\r\nX-Name: caf\xe9\r\nConnection: close\r\n\r\n",
        )
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert upstream.heads == []


async def test_a_client_that_stops_reading_frees_the_upstream_slot(tmp_path: Path) -> None:
    async def handler(head: bytes, reader: Reader, writer: Writer) -> None:
        if not head.startswith(b"GET /huge "):
            writer.write(_ok())
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (64 * 2**20))
        for _ in range(64):
            writer.write(b"x" * 2**20)
            await writer.drain()

    async with _serving(handler, tmp_path, max_connections=1, timeout=0.5) as (gateway, _):
        host, port = gateway.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /proxy/raw/huge HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await reader.read(12)).startswith(b"HTTP/1.1 200")
        # Then never read again: the gateway's send stalls once buffers fill.
        status = None
        async with asyncio.timeout(20):
            while status != 200:
                await asyncio.sleep(0.25)
                async with gateway.client.get("/proxy/raw/good") as response:
                    status = response.status
        writer.close()


# --- HTTP/2 bodies, which need no Content-Length -----------------------------


async def _h2_call(url: str, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
    """One prior-knowledge HTTP/2 request (no Content-Length sent); its status and body."""
    import h2.config
    import h2.connection
    import h2.events

    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    stream = connection.get_next_available_stream_id()
    head = [(":method", method), (":path", path), (":scheme", "http"), (":authority", "t")]
    connection.send_headers(stream, head, end_stream=body is None)
    if body is not None:
        connection.send_data(stream, body, end_stream=True)
    writer.write(connection.data_to_send())
    status, data, ended = 0, b"", False
    try:
        async with asyncio.timeout(10):
            while not ended and (received := await reader.read(65536)):
                for event in connection.receive_data(received):
                    if isinstance(event, h2.events.ResponseReceived):
                        status = int(dict(event.headers)[b":status"])
                    elif isinstance(event, h2.events.DataReceived):
                        data += event.data
                        connection.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    elif isinstance(event, h2.events.StreamEnded):
                        ended = True
                writer.write(connection.data_to_send())
    finally:
        writer.close()
    return status, data


async def test_an_http2_body_without_content_length_is_proxied(tmp_path: Path) -> None:
    async with _serving(_echo_framing, tmp_path) as (gateway, upstream):
        status, data = await _h2_call(gateway.url, "POST", "/proxy/raw/up", b"hello")
        assert status == 200, data
        assert data.startswith(b"hello"), data
        # Without a body, nothing is framed as one.
        status, data = await _h2_call(gateway.url, "POST", "/proxy/raw/up", None)
        assert status == 200 and data == b"", data
        assert header(upstream.heads[-1], b"transfer-encoding") is None
