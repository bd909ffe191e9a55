"""The proxy through the real stack: streaming, header rules, limits, SSRF."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from fanout.core.config import ConfigError
from tests.fault_upstream import FaultUpstream
from tests.gateway_serving import Gateway, gateway_serving
from tests.test_safety import SSRF_FORMS, Listener, form_url, listening


def _config(upstream_url: str, forbidden_port: int, refused_port: int) -> str:
    return f"""
[server]
max_body_bytes = 1048576

[upstreams.api]
base_url = "{upstream_url}"
internal = true
timeout = 2.0

[upstreams.trusting]
base_url = "{upstream_url}"
internal = true
forward_headers = ["Authorization", "Cookie"]

[upstreams.fragile]
base_url = "{upstream_url}"
internal = true
circuit_breaker = {{ failures = 2, reset_after = 30.0 }}

[upstreams.hangup]
# The counting listener on 127.0.0.1: it accepts, then closes without a word.
base_url = "http://127.0.0.1:{forbidden_port}"
internal = true

[upstreams.refused]
# A port bound but not listening: every connect is refused.
base_url = "http://127.0.0.1:{refused_port}"
internal = true

[upstreams.outside]
base_url = "http://127.0.0.3:{forbidden_port}"

[upstreams.outside_by_name]
base_url = "http://localhost:{forbidden_port}"
"""


@pytest.fixture
async def listener() -> AsyncIterator[tuple[int, list[int]]]:
    """Listeners on 127.0.0.1 and 127.0.0.3 (one port) that count accepted connections."""
    accepted: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        writer.close()

    first = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = first.sockets[0].getsockname()[1]
    second = await asyncio.start_server(on_connect, "127.0.0.3", port)
    try:
        yield port, accepted
    finally:
        for server in (first, second):
            server.close()
            await server.wait_closed()


@pytest.fixture
async def gateway(
    fault: FaultUpstream, listener: tuple[int, list[int]], refused_port: int, tmp_path: Path
) -> AsyncIterator[Gateway]:
    """The gateway with proxied upstreams."""
    config = _config(fault.url, listener[0], refused_port)
    async with gateway_serving(config, tmp_path) as served:
        yield served


async def _echo(gateway: Gateway, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
    method = kwargs.pop("method", "GET")
    async with gateway.client.request(method, path, **kwargs) as response:
        return response.status, response.headers, await response.json()


async def test_request_reaches_the_upstream_with_path_query_and_body(gateway: Gateway) -> None:
    status, _, seen = await _echo(
        gateway, "/proxy/api/echo/a%2Fb/c?x=1&y=%20", method="POST", data=b"hello"
    )
    assert status == 200
    assert seen["method"] == "POST"
    # The path and query exactly as the client encoded them (%2F stays %2F).
    assert seen["raw_path"] == "/echo/a%2Fb/c?x=1&y=%20"
    assert seen["body_length"] == 5 and seen["body_head"] == "hello"


async def test_headers_are_sanitised_on_the_way_up(gateway: Gateway, fault: FaultUpstream) -> None:
    _, _, seen = await _echo(
        gateway,
        "/proxy/api/echo/h",
        headers={
            "Authorization": "Bearer client-secret",
            "Cookie": "session=abc",
            "Connection": "X-Private",
            "X-Private": "do-not-forward",
            "X-Forwarded-For": "6.6.6.6",
            "X-Request-ID": "req-42",
            "Accept": "application/json",
        },
    )
    headers = {name.lower(): value for name, value in seen["headers"].items()}
    assert "authorization" not in headers and "cookie" not in headers
    assert "x-private" not in headers
    assert headers["host"] == fault.url.removeprefix("http://")
    # No trusted proxies: the client's own X-Forwarded-For is not believed.
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-request-id"] == "req-42"
    assert headers["accept"] == "application/json"


async def test_credentials_pass_only_where_configured(gateway: Gateway) -> None:
    _, response_headers, seen = await _echo(
        gateway,
        "/proxy/trusting/echo/h",
        headers={"Authorization": "Bearer token", "Cookie": "session=abc"},
    )
    headers = {name.lower(): value for name, value in seen["headers"].items()}
    assert headers["authorization"] == "Bearer token"
    assert headers["cookie"] == "session=abc"
    assert response_headers["Set-Cookie"] == "upstream=1"


async def test_hop_by_hop_and_cookies_are_stripped_on_the_way_back(gateway: Gateway) -> None:
    _, headers, _ = await _echo(gateway, "/proxy/api/echo/h")
    assert "X-Hop" not in headers  # named in the upstream's Connection header
    assert "Keep-Alive" not in headers
    assert "Set-Cookie" not in headers  # Cookie is not forwarded to this upstream
    # Date and Server come once, from the front server, not also from upstream.
    assert len(headers.getall("Date")) == 1
    assert headers.getall("Server") == ["hypercorn-h11"]


async def test_unknown_upstream_is_404_problem(gateway: Gateway) -> None:
    async with gateway.client.get("/proxy/nope/x") as response:
        assert response.status == 404
        assert response.content_type == "application/problem+json"
        assert "nope" in (await response.json())["detail"]


async def test_response_is_streamed_not_buffered(gateway: Gateway) -> None:
    arrivals: list[float] = []
    async with gateway.client.get("/proxy/api/stream?chunks=3&ms=300") as response:
        assert response.status == 200
        async for _ in response.content.iter_any():
            arrivals.append(time.monotonic())
    assert len(arrivals) >= 2
    assert arrivals[-1] - arrivals[0] > 0.4


async def test_request_body_is_streamed_up(gateway: Gateway, fault: FaultUpstream) -> None:
    last_chunk_sent_at: float | None = None

    async def upload() -> AsyncIterator[bytes]:
        nonlocal last_chunk_sent_at
        for _ in range(9):
            yield b"z" * 65536
        # The last chunk waits until the upstream has the first: a proxy that
        # buffered the body would never pass it on before it is all there.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await fault.upload_started.wait()
        last_chunk_sent_at = time.monotonic()
        yield b"z" * 65536

    status, _, seen = await _echo(gateway, "/proxy/api/upload", method="PUT", data=upload())
    assert status == 200
    assert seen["body_length"] == 10 * 65536
    assert fault.first_chunk_at is not None and last_chunk_sent_at is not None
    assert fault.first_chunk_at < last_chunk_sent_at  # streamed, not buffered


async def _raw_upload(url: str, head: str, chunks: list[bytes]) -> bytes:
    # A raw socket: aiohttp's client stops reading once it cannot write, and
    # the point here is that the gateway answers before taking everything.
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head.encode())
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
    except ConnectionError:
        pass  # the gateway answered and closed while we were still sending
    answer = await reader.read(65536)
    writer.close()
    return answer


async def test_body_over_the_limit_is_413(gateway: Gateway, fault: FaultUpstream) -> None:
    declared = await _raw_upload(
        gateway.url,
        "POST /proxy/api/echo/big HTTP/1.1\r\nHost: t\r\nContent-Length: 1048577\r\n\r\n",
        [],
    )
    assert declared.startswith(b"HTTP/1.1 413")
    assert b"application/problem+json" in declared
    chunk = b"y" * 65536
    framed = [f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"] * 40
    streamed = await _raw_upload(
        gateway.url,
        "POST /proxy/api/echo/big HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
        framed,
    )
    assert streamed.startswith(b"HTTP/1.1 413"), streamed[:200]
    assert b"application/problem+json" in streamed
    assert fault.hits["/echo/big"] <= 1  # the upstream never got a complete body


async def test_an_oversized_streamed_upload_does_not_leave_its_request_hanging(
    fault: FaultUpstream, listener: tuple[int, list[int]], refused_port: int, tmp_path: Path
) -> None:
    chunk = b"y" * 65536
    framed = [f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"] * 40
    serving = gateway_serving(_config(fault.url, listener[0], refused_port), tmp_path)
    gateway = await serving.__aenter__()
    try:
        answer = await _raw_upload(
            gateway.url,
            "POST /proxy/api/echo/big HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
            framed,
        )
        assert answer.startswith(b"HTTP/1.1 413")
    finally:
        started = time.monotonic()
        await serving.__aexit__(None, None, None)
    # The request finished with its answer: shutdown did not wait out the
    # server's 5 s grace period for it.
    assert time.monotonic() - started < 3.0


async def test_compressed_bodies_pass_through_untouched(gateway: Gateway, gzip_bomb: bytes) -> None:
    async with (
        aiohttp.ClientSession(auto_decompress=False) as raw,
        raw.get(f"{gateway.url}/proxy/api/bomb") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Encoding"] == "gzip"
        assert int(response.headers["Content-Length"]) == len(gzip_bomb)
        assert await response.read() == gzip_bomb


async def test_head_and_upstream_errors_pass_through(gateway: Gateway) -> None:
    async with gateway.client.head("/proxy/api/json") as response:
        assert response.status == 200
        assert await response.read() == b""
    async with gateway.client.get("/proxy/api/json?status=418") as response:
        assert response.status == 418


async def test_dead_and_slow_upstreams_are_502_and_504(
    gateway: Gateway, listener: tuple[int, list[int]]
) -> None:
    for upstream, cause in [
        ("refused", "refused is unavailable: connection refused"),
        ("hangup", "hangup is unavailable: "),  # "it closed the connection" or a reset
    ]:
        async with gateway.client.get(f"/proxy/{upstream}/x") as response:
            assert response.status == 502
            problem = await response.json()
        assert (problem["title"], problem["upstream"]) == ("Bad Gateway", upstream)
        assert problem["detail"].startswith(cause), problem
    # The hangup listener was reached (aiohttp itself resends an idempotent
    # request once when the server disconnects).
    assert 1 <= len(listener[1]) <= 2
    async with gateway.client.get("/proxy/api/never") as response:
        assert response.status == 504
        problem = await response.json()
    assert (problem["title"], problem["upstream"]) == ("Gateway Timeout", "api")


@pytest.mark.parametrize("upstream", ["outside", "outside_by_name"])
async def test_forbidden_addresses_are_refused_without_a_connection(
    gateway: Gateway, listener: tuple[int, list[int]], upstream: str
) -> None:
    _, accepted = listener
    async with gateway.client.get(f"/proxy/{upstream}/anything") as response:
        assert response.status == 502
        problem = await response.json()
    assert problem["title"] == "Blocked Destination"
    assert "loopback" in problem["detail"]
    assert accepted == []


async def test_the_proxy_cannot_be_steered_to_another_host(
    gateway: Gateway, listener: tuple[int, list[int]], fault: FaultUpstream
) -> None:
    # The target is the counting listener on 127.0.0.1, a host marked internal
    # (the fault upstream's): the address guard would let a connection through,
    # so only the proxy's path handling keeps it away.
    port, accepted = listener
    target = f"127.0.0.1:{port}"
    cases = [
        # (path, the gateway's answer, and what the configured upstream saw)
        (f"/proxy/api/@{target}/x", 404, f"/@{target}/x"),  # a path on the upstream
        (f"/proxy/api//{target}/x", 308, None),  # merged: back to this gateway
        (f"/proxy/api/..%2f..%2f{target}/x", 400, None),
        (f"/proxy/api%2F@{target}/x", 404, None),  # would make the host userinfo
    ]
    for path, expected, upstream_path in cases:
        url = URL(gateway.url + path, encoded=True)
        async with (
            aiohttp.ClientSession() as raw,
            raw.get(url, allow_redirects=False) as response,
        ):
            assert response.status == expected, (path, await response.text())
            if expected == 308:
                # Relative (path only): it can only lead back to this gateway.
                assert response.headers["Location"] == f"/proxy/api/{target}/x"
            elif upstream_path is None:
                assert response.content_type == "application/problem+json", path
        if upstream_path is not None:
            assert fault.hits[upstream_path] == 1  # reached as a path, on the upstream
    await asyncio.sleep(0.05)  # an accept in flight would land now
    assert accepted == []


@pytest.mark.parametrize(
    "raw_path",
    [
        "/proxy/api%2F@{host}:{port}/steal",
        "/proxy/api%2f@{host}:{port}/steal",
        "/proxy/api@{host}:{port}/steal",
        "/proxy/api%2F%2F{host}:{port}/steal",
        "/proxy/api/..%2F..%2Fsteal",
        "/proxy/api/%2e%2e/steal",
    ],
)
@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.3"], ids=["internal host", "loopback"])
async def test_path_tricks_never_reach_another_host(
    gateway: Gateway,
    listener: tuple[int, list[int]],
    fault: FaultUpstream,
    raw_path: str,
    host: str,
) -> None:
    # 127.0.0.1 is internal (the guard would not stop a connection there);
    # 127.0.0.3 is not. Both have a counting listener on the port.
    port, accepted = listener
    url = URL(gateway.url + raw_path.format(host=host, port=port), encoded=True)
    async with (
        aiohttp.ClientSession() as raw,
        raw.get(url, allow_redirects=False) as response,
    ):
        # Refused (400/404 problem), or Werkzeug's redirect merging "//".
        assert response.status in (308, 400, 404), await response.text()
        if response.status != 308:
            assert response.content_type == "application/problem+json"
    await asyncio.sleep(0.05)
    assert accepted == []  # the other host was never contacted
    assert fault.hits["/steal"] == 0


async def test_oversized_uploads_do_not_open_the_upstreams_circuit(gateway: Gateway) -> None:
    chunk = b"y" * 65536
    framed = [f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"] * 40
    head = "POST /proxy/fragile/echo/big HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    for _ in range(3):
        assert (await _raw_upload(gateway.url, head, framed)).startswith(b"HTTP/1.1 413")
    # The client's oversized bodies were not held against the upstream.
    async with gateway.client.get("/proxy/fragile/json") as response:
        assert response.status == 200


async def test_a_client_abandoning_a_download_frees_the_upstream_connection(
    gateway: Gateway, fault: FaultUpstream
) -> None:
    async with gateway.client.get("/proxy/api/huge?mb=50") as response:
        assert response.status == 200
        await response.content.readexactly(200_000)
    # Leaving the block without reading the rest drops our connection.
    for _ in range(1000):  # a generous budget: the machine is shared
        if fault.in_flight == 0:
            break
        await asyncio.sleep(0.02)
    assert fault.in_flight == 0  # the proxy closed its upstream call too


async def test_proxied_calls_are_counted_like_every_upstream_call(gateway: Gateway) -> None:
    async with gateway.client.get("/proxy/api/json") as response:
        assert response.status == 200
        await response.read()
    async with gateway.client.get("/metrics") as response:
        text = await response.text()
    assert 'fanout_upstream_calls_total{outcome="ok",upstream="api"} 1.0' in text


# --- every SSRF form, as a configured (not internal) upstream ----------------

#: Forms the config loader refuses: the gateway does not even start.
REFUSED_BY_CONFIG = {
    "userinfo confusion": "must not contain user info",
    "fragment confusion": "without query or fragment",
}


@pytest.fixture
async def ssrf_listener() -> AsyncIterator[Listener]:
    """Counting listeners on 127.0.0.1 and ::1, where the SSRF forms lead."""
    async with listening() as state:
        yield state


async def _resolves(host: str) -> bool:
    try:
        await asyncio.get_running_loop().getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):  # UnicodeError: an empty label ("localhost..")
        return False
    return True


# DNS rebinding needs a name that resolves to loopback through the gateway's
# own resolver, which a test cannot inject into the served app:
# tests/test_safety.py tries it on a guarded session with a fake resolver.
GATEWAY_SSRF_FORMS = [form for form in SSRF_FORMS if form[0] != "DNS rebinding"]


@pytest.mark.parametrize(
    ("form", "template"), GATEWAY_SSRF_FORMS, ids=[f[0] for f in GATEWAY_SSRF_FORMS]
)
async def test_every_ssrf_form_is_refused_through_the_proxy(
    form: str, template: str, ssrf_listener: Listener, tmp_path: Path
) -> None:
    url = form_url(template, ssrf_listener).rstrip("/")
    config = f'[upstreams.target]\nbase_url = "{url}"\n'
    if form in REFUSED_BY_CONFIG:
        with pytest.raises(ConfigError, match=REFUSED_BY_CONFIG[form]):
            async with gateway_serving(config, tmp_path):
                pass
    else:
        async with (
            gateway_serving(config, tmp_path) as gateway,
            gateway.client.get("/proxy/target/x") as response,
        ):
            status, problem = response.status, await response.json()
        assert status == 502, problem
        host = URL(url).raw_host or ""
        if host.startswith("[") or _literal(host) or await _resolves(host):
            assert problem["title"] == "Blocked Destination", problem
            assert "forbidden destination" in problem["detail"]
        else:
            # This machine's resolver has no answer for the name (glibc and
            # "localhost."): no address, so nothing to connect to either.
            assert problem["title"] == "Bad Gateway", problem
            assert problem["detail"] == "target is unavailable: its host name did not resolve"
    await asyncio.sleep(0.05)  # an accept in flight would land now
    assert ssrf_listener.accepted == 0


def _literal(host: str) -> bool:
    try:
        socket.inet_aton(host.rstrip("."))
    except OSError:
        return ":" in host
    return True


async def test_an_aggregate_endpoint_cannot_reach_a_forbidden_address(
    ssrf_listener: Listener, tmp_path: Path
) -> None:
    config = f"""
[upstreams.by_name]
base_url = "http://localhost:{ssrf_listener.port}"

[upstreams.by_number]
base_url = "http://2130706433:{ssrf_listener.port}"

[[endpoints]]
path = "/steal"
  [[endpoints.backends]]
  upstream = "by_name"
  path = "/x"
  group = "a"
  [[endpoints.backends]]
  upstream = "by_number"
  path = "/x"
  group = "b"
"""
    async with (
        gateway_serving(config, tmp_path) as gateway,
        gateway.client.get("/steal") as response,
    ):
        status, problem = response.status, await response.json()
    assert status == 502
    assert problem["detail"] == "every backend failed: a, b"
    for label in ("a", "b"):
        error = problem["errors"][label]
        assert error["title"] == "Blocked Destination"
        assert "forbidden destination (loopback)" in error["detail"]
    await asyncio.sleep(0.05)
    assert ssrf_listener.accepted == 0
