"""Destination safety: forbidden addresses are refused, and nothing ever connects to them.

The integration tests use a real listener on loopback that counts accepted TCP
connections; "blocked" means the request failed with a BlockedAddressError and
the listener counted zero connections, not merely that an error came back.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import pickle
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from clients.safety import (
    BlockedAddressError,
    GuardedResolver,
    blocked_cause,
    check_literal_host,
    forbidden_reason,
    session_guard,
)

# --- forbidden_reason -------------------------------------------------------

FORBIDDEN: list[tuple[str, str]] = [
    # unspecified, "this network"
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("0.1.2.3", "this network"),
    ("0.255.255.255", "this network"),
    # loopback
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("127.1.2.3", "loopback"),
    ("::1", "loopback"),
    # private
    ("10.0.0.1", "private"),
    ("10.255.255.255", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.0.1", "private"),
    ("192.168.255.255", "private"),
    ("fc00::1", "private"),
    ("fd12:3456:789a::1", "private"),
    # carrier-grade NAT
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.255", "carrier-grade NAT"),
    # link-local
    ("169.254.0.1", "link-local"),
    ("169.254.255.255", "link-local"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("febf::1", "link-local"),
    # cloud metadata (checked before the ranges holding them)
    ("169.254.169.254", "cloud metadata"),
    ("169.254.170.2", "cloud metadata"),
    ("fd00:ec2::254", "cloud metadata"),
    ("fd00:ec2::254%eth0", "cloud metadata"),
    ("100.100.100.200", "cloud metadata"),
    ("168.63.129.16", "cloud metadata"),
    # multicast, broadcast, reserved
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("ff02::1", "multicast"),
    ("ff05::1:3", "multicast"),
    ("255.255.255.255", "broadcast"),
    ("240.0.0.1", "reserved"),
    ("250.1.2.3", "reserved"),
    ("192.0.0.8", "reserved"),
    ("192.88.99.1", "reserved"),
    ("100::1", "reserved"),
    # documentation, benchmarking
    ("192.0.2.1", "documentation"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("2001:db8::1", "documentation"),
    ("3fff::1", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("198.19.255.255", "benchmarking"),
    ("2001:2::1", "benchmarking"),
    # IPv4-mapped: the embedded address is what a socket connects to
    ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
    ("::ffff:7f00:1", "IPv4-mapped loopback"),
    ("::ffff:10.1.2.3", "IPv4-mapped private"),
    ("::ffff:169.254.169.254", "IPv4-mapped cloud metadata"),
    ("::ffff:0.0.0.0", "IPv4-mapped unspecified"),
    ("::ffff:8.8.8.8", "IPv4-mapped"),  # refused even when public
    # IPv4-compatible (deprecated)
    ("::127.0.0.1", "IPv4-compatible loopback"),
    ("::10.0.0.1", "IPv4-compatible private"),
    ("::8.8.8.8", "IPv4-compatible"),
    # NAT64 and 6to4 embedding a forbidden IPv4
    ("64:ff9b::127.0.0.1", "NAT64 loopback"),
    ("64:ff9b::a9fe:a9fe", "NAT64 cloud metadata"),
    ("64:ff9b::192.168.1.1", "NAT64 private"),
    ("64:ff9b:1::1", "local-use NAT64"),
    ("2002:7f00:1::", "6to4 loopback"),
    ("2002:a00:1::1", "6to4 private"),
    ("2002:a9fe:a9fe::1", "6to4 cloud metadata"),
    # Teredo, site-local
    ("2001::1", "Teredo"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ("fec0::1", "site-local"),
    ("feff::1", "site-local"),
]

ALLOWED: list[str] = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "151.101.1.69",
    "100.63.255.255",  # just below carrier-grade NAT
    "100.128.0.0",  # just above it
    "172.15.255.255",  # just below 172.16/12
    "172.32.0.0",  # just above it
    "169.253.255.255",
    "198.17.255.255",
    "198.20.0.0",
    "223.255.255.255",
    "2606:4700:4700::1111",
    "2001:4860:4860::8888",
    "2a00:1450:4001:80b::200e",
    "64:ff9b::808:808",  # NAT64 of 8.8.8.8
    "2002:808:808::1",  # 6to4 of 8.8.8.8
]


@pytest.mark.parametrize(("text", "reason"), FORBIDDEN)
def test_forbidden_addresses_have_their_reason(text: str, reason: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(text)) == reason


@pytest.mark.parametrize("text", ALLOWED)
def test_public_addresses_are_allowed(text: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(text)) is None


# --- check_literal_host -------------------------------------------------------

FORBIDDEN_LITERALS: list[tuple[str, str]] = [
    ("127.0.0.1", "loopback"),
    ("127.0.0.1.", "loopback"),  # trailing dot
    ("127.1", "loopback"),  # legacy short form, as inet_aton / getaddrinfo read it
    ("2130706433", "loopback"),  # one 32-bit number
    ("0x7f000001", "loopback"),  # hex
    ("0x7f.1", "loopback"),
    ("0177.0.0.1", "loopback"),  # octal
    ("017700000001", "loopback"),
    ("0", "unspecified"),
    ("0.0.0.0", "unspecified"),
    ("10.0.0.1", "private"),
    ("169.254.169.254", "cloud metadata"),
    ("[::1]", "loopback"),
    ("::1", "loopback"),
    ("[0:0:0:0:0:0:0:1]", "loopback"),
    ("[::]", "unspecified"),
    ("[::ffff:127.0.0.1]", "IPv4-mapped loopback"),
    ("::ffff:7f00:1", "IPv4-mapped loopback"),
    ("[fe80::1%eth0]", "link-local"),
    ("fe80::1%25eth0", "link-local"),  # zone id percent-encoded, as yarl's raw_host has it
    ("[fd00:ec2::254]", "cloud metadata"),
    ("[::1:2:3:4:5:6:7:8:9]", "malformed IP literal"),
]


@pytest.mark.parametrize(("host", "reason"), FORBIDDEN_LITERALS)
def test_forbidden_literal_hosts_raise(host: str, reason: str) -> None:
    with pytest.raises(BlockedAddressError) as info:
        check_literal_host(host, internal=False)
    assert info.value.host == host
    assert info.value.reason == reason


@pytest.mark.parametrize(
    "host",
    [
        "8.8.8.8",
        "[2606:4700:4700::1111]",
        "example.com",
        "localhost",
        "rebind.example",
        "1.2.3.4.5",
    ],
)
def test_public_literals_and_names_pass_the_literal_check(host: str) -> None:
    # Names are the resolver's business, not this check's.
    check_literal_host(host, internal=False)


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]", "10.0.0.1", "2130706433"])
def test_internal_literals_pass(host: str) -> None:
    check_literal_host(host, internal=True)


# --- GuardedResolver.resolve with a fake inner resolver -----------------------


def _answer(host: str, address: str, port: int) -> ResolveResult:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return ResolveResult(
        hostname=host,
        host=address,
        port=port,
        family=family,
        proto=0,
        flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
    )


class FakeDNS(AbstractResolver):
    """Answers the names it knows with fixed addresses; asks ``fallback`` for the rest.

    Answering a public-looking name with 127.0.0.1 is what a rebinding DNS server does.
    """

    def __init__(
        self, answers: dict[str, list[str]], fallback: AbstractResolver | None = None
    ) -> None:
        self.answers = answers
        self.fallback = fallback
        self.closed = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host in self.answers:
            return [_answer(host, address, port) for address in self.answers[host]]
        if self.fallback is not None:
            return await self.fallback.resolve(host, port, family)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async def close(self) -> None:
        self.closed = True
        if self.fallback is not None:
            await self.fallback.close()


async def test_all_forbidden_answers_raise() -> None:
    resolver = GuardedResolver(inner=FakeDNS({"evil.example": ["127.0.0.1", "10.0.0.1"]}))
    with pytest.raises(BlockedAddressError) as info:
        await resolver.resolve("evil.example", 80)
    assert info.value.host == "evil.example"
    assert info.value.reason == "loopback, private"
    assert info.value.addresses == ("127.0.0.1", "10.0.0.1")
    await resolver.close()


async def test_mixed_answers_keep_only_the_allowed_addresses() -> None:
    answers = ["10.0.0.1", "93.184.216.34", "::1", "2606:4700:4700::1111", "169.254.169.254"]
    resolver = GuardedResolver(inner=FakeDNS({"mixed.example": answers}))
    results = await resolver.resolve("mixed.example", 443)
    assert [result["host"] for result in results] == ["93.184.216.34", "2606:4700:4700::1111"]
    assert all(result["port"] == 443 for result in results)
    await resolver.close()


async def test_answers_that_are_not_addresses_are_dropped() -> None:
    # aiohttp passes result["host"] to the socket; a name there would be resolved again.
    inner = FakeDNS({"sneaky.example": ["internal.corp", "2130706433", "010.0.0.1"]})
    resolver = GuardedResolver(inner=inner)
    with pytest.raises(BlockedAddressError) as info:
        await resolver.resolve("sneaky.example", 80)
    assert info.value.reason == "not an IP address"
    await resolver.close()


async def test_internal_hosts_get_their_answers_unchanged() -> None:
    inner = FakeDNS({"Cache.Internal.": ["10.0.0.7", "127.0.0.1"]})
    resolver = GuardedResolver(frozenset({"cache.internal"}), inner=inner)
    results = await resolver.resolve("Cache.Internal.", 6379)
    assert [result["host"] for result in results] == ["10.0.0.7", "127.0.0.1"]
    assert resolver.is_internal("CACHE.internal")
    assert not resolver.is_internal("cache.internal.evil.example")
    await resolver.close()
    assert inner.closed


async def test_metadata_names_are_blocked_after_resolution() -> None:
    inner = FakeDNS({"metadata.google.internal": ["169.254.169.254"]})
    resolver = GuardedResolver(inner=inner)
    with pytest.raises(BlockedAddressError) as info:
        await resolver.resolve("metadata.google.internal", 80)
    assert info.value.reason == "cloud metadata"
    await resolver.close()


# --- blocked_cause ------------------------------------------------------------


def test_blocked_cause_finds_the_error_through_causes() -> None:
    blocked = BlockedAddressError("h", "loopback")
    assert blocked_cause(blocked) is blocked
    try:
        try:
            raise blocked
        except OSError as exc:
            raise aiohttp.ClientOSError(*exc.args) from exc
    except aiohttp.ClientOSError as wrapped:
        assert blocked_cause(wrapped) is blocked
    group = BaseExceptionGroup("many", [ValueError("x"), blocked])
    assert blocked_cause(group) is blocked
    assert blocked_cause(ValueError("x")) is None


def test_blocked_cause_survives_cycles() -> None:
    first, second = ValueError("a"), ValueError("b")
    first.__context__, second.__context__ = second, first
    assert blocked_cause(first) is None


def test_blocked_address_error_pickles() -> None:
    error = BlockedAddressError("evil.example", "private", ["10.0.0.1"])
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.host, copy.reason, copy.addresses) == ("evil.example", "private", ("10.0.0.1",))
    assert "forbidden destination (private)" in str(copy)


# --- integration: a real listener that counts connections ---------------------


@dataclass
class Listener:
    """TCP listeners on 127.0.0.1 (and ::1 when there is one) sharing one counter."""

    port: int = 0
    port6: int | None = None
    response: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    accepted: int = 0
    handlers: set[asyncio.Task[None]] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                await reader.readuntil(b"\r\n\r\n")
            writer.write(self.response)
            await writer.drain()
        except ConnectionError:
            pass  # the client went away: the connection still counts
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@asynccontextmanager
async def listening(response: bytes | None = None) -> AsyncIterator[Listener]:
    """Run a counting listener for the duration of the block."""
    listener = Listener() if response is None else Listener(response=response)
    servers = [await asyncio.start_server(listener.handle, "127.0.0.1", 0)]
    listener.port = servers[0].sockets[0].getsockname()[1]
    try:
        # Same port on ::1 when free, so "localhost" means one port whatever it resolves to.
        for port in (listener.port, 0):
            with contextlib.suppress(OSError):
                servers.append(await asyncio.start_server(listener.handle, "::1", port))
                listener.port6 = servers[-1].sockets[0].getsockname()[1]
                break
        yield listener
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()
        if listener.handlers:
            await asyncio.gather(*listener.handlers, return_exceptions=True)


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    async with listening() as state:
        yield state


@asynccontextmanager
async def guarded_client(
    resolver: GuardedResolver, middlewares: Sequence[aiohttp.ClientMiddlewareType] = ()
) -> AsyncIterator[aiohttp.ClientSession]:
    """A session like the gateway's, its connector resolving through ``resolver``."""
    # No DNS cache: each request must go through the resolver under test.
    connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False)
    session = aiohttp.ClientSession(
        connector=connector,
        middlewares=middlewares,
        trust_env=False,
        timeout=aiohttp.ClientTimeout(total=5),
    )
    try:
        yield session
    finally:
        await session.close()
        # The connector does not close a resolver it was given.
        await resolver.close()


async def rebinding_dns(url: str = "") -> FakeDNS:
    """Real DNS for everything but rebind.example, which answers 127.0.0.1."""
    dns = FakeDNS({"rebind.example": ["127.0.0.1"]}, fallback=aiohttp.ThreadedResolver())
    host = URL(url).raw_host if url else None
    if host and host.endswith(".."):
        host = host.rstrip(".") + "."  # what aiohttp asks the resolver for
    if host and host.rstrip(".") == "localhost" and host.endswith("."):
        try:
            await asyncio.get_running_loop().getaddrinfo(host, None)
        except socket.gaierror:
            # glibc with only /etc/hosts does not answer "localhost." at all (the
            # request would fail without a connection, but proves nothing);
            # resolvers that do answer it (systemd-resolved, musl) give loopback.
            dns.answers[host] = ["127.0.0.1"]
    return dns


async def assert_blocked(session: aiohttp.ClientSession, url: str, listener: Listener) -> None:
    """The request fails with a BlockedAddressError and the listener saw no connection."""
    with pytest.raises(aiohttp.ClientError) as info:
        async with session.get(url) as response:
            await response.read()
    assert isinstance(blocked_cause(info.value), BlockedAddressError), repr(info.value)
    await asyncio.sleep(0.05)  # an accept in flight would land now
    assert listener.accepted == 0


# Every way to say "this machine" we could think of. {port} is the 127.0.0.1
# listener, {port6} the ::1 one.
SSRF_FORMS: list[tuple[str, str]] = [
    ("name", "http://localhost:{port}/"),
    ("name, upper case", "http://LOCALHOST:{port}/"),
    ("name, trailing dot", "http://localhost.:{port}/"),
    ("name, two trailing dots", "http://localhost..:{port}/"),
    ("DNS rebinding", "http://rebind.example:{port}/"),
    ("literal", "http://127.0.0.1:{port}/"),
    ("literal, trailing dot", "http://127.0.0.1.:{port}/"),
    ("short form", "http://127.1:{port}/"),
    ("decimal", "http://2130706433:{port}/"),
    ("hex", "http://0x7f000001:{port}/"),
    ("octal", "http://0177.0.0.1:{port}/"),
    ("unspecified", "http://0.0.0.0:{port}/"),  # Linux connects 0.0.0.0 to the local host
    ("unspecified, short", "http://0:{port}/"),
    ("userinfo confusion", "http://8.8.8.8@127.0.0.1:{port}/"),
    ("fragment confusion", "http://127.0.0.1:{port}/#@8.8.8.8/"),
    ("IPv4-mapped", "http://[::ffff:127.0.0.1]:{port}/"),
    ("IPv4-compatible", "http://[::127.0.0.1]:{port}/"),
    ("IPv6 loopback", "http://[::1]:{port6}/"),
    ("IPv6 loopback, long", "http://[0:0:0:0:0:0:0:1]:{port6}/"),
    ("IPv6 unspecified", "http://[::]:{port6}/"),
]

# The forms whose host is a name: only these reach the resolver.
NAME_FORMS = [form for form in SSRF_FORMS if form[0].startswith(("name", "DNS", "hex"))]
LITERAL_FORMS = [form for form in SSRF_FORMS if form not in NAME_FORMS]


def form_url(template: str, listener: Listener) -> str:
    if "{port6}" in template and listener.port6 is None:
        pytest.skip("this machine has no IPv6 loopback (::1): the [::1] forms cannot be tried")
    return template.format(port=listener.port, port6=listener.port6)


@pytest.mark.parametrize(("form", "template"), SSRF_FORMS, ids=[f[0] for f in SSRF_FORMS])
async def test_full_guard_blocks_every_ssrf_form(
    form: str, template: str, listener: Listener
) -> None:
    # The session as the gateway should build it: guarded resolver + literal middleware.
    url = form_url(template, listener)
    guard = session_guard(inner=await rebinding_dns(url))
    async with guarded_client(guard.resolver, guard.middlewares) as session:
        await assert_blocked(session, url, listener)


@pytest.mark.parametrize(("form", "template"), NAME_FORMS, ids=[f[0] for f in NAME_FORMS])
async def test_resolver_alone_blocks_names(form: str, template: str, listener: Listener) -> None:
    # TCPConnector(resolver=GuardedResolver()) with nothing else: names are
    # checked after resolution, and the checked address is the one connected to.
    url = form_url(template, listener)
    async with guarded_client(GuardedResolver(inner=await rebinding_dns(url))) as session:
        await assert_blocked(session, url, listener)


@pytest.mark.parametrize(("form", "template"), LITERAL_FORMS, ids=[f[0] for f in LITERAL_FORMS])
async def test_literal_forms_fail_the_literal_check(
    form: str, template: str, listener: Listener
) -> None:
    # What a client calls before a request, for the hosts aiohttp never resolves.
    host = URL(form_url(template, listener)).raw_host
    assert host is not None
    with pytest.raises(BlockedAddressError):
        check_literal_host(host, internal=False)
    assert listener.accepted == 0


async def test_literal_hosts_skip_the_resolver(listener: Listener) -> None:
    # Why check_literal_host and the middleware exist: aiohttp hands an IP
    # literal straight to the socket (TCPConnector._resolve_host), so the
    # resolver alone lets it through. If this ever fails, aiohttp changed.
    url = f"http://127.0.0.1:{listener.port}/"
    async with guarded_client(GuardedResolver()) as session, session.get(url) as response:
        assert await response.read() == b"ok"
    assert listener.accepted == 1


@pytest.mark.parametrize("with_middleware", [False, True], ids=["resolver", "full guard"])
async def test_internal_host_is_reachable(listener: Listener, with_middleware: bool) -> None:
    # Proves the internal flag works, and that the counter does count.
    guard = session_guard(["localhost"])
    middlewares = guard.middlewares if with_middleware else ()
    url = f"http://localhost:{listener.port}/"
    async with (
        guarded_client(guard.resolver, middlewares) as session,
        session.get(url) as response,
    ):
        assert response.status == 200
        assert await response.read() == b"ok"
    assert listener.accepted == 1


async def test_internal_literal_is_reachable(listener: Listener) -> None:
    guard = session_guard(["127.0.0.1"])
    url = f"http://127.0.0.1:{listener.port}/"
    async with (
        guarded_client(guard.resolver, guard.middlewares) as session,
        session.get(url) as response,
    ):
        assert await response.read() == b"ok"
    assert listener.accepted == 1


@pytest.mark.parametrize("target", ["127.0.0.1", "rebind.example", "2130706433"])
async def test_redirects_to_forbidden_destinations_are_blocked(
    listener: Listener, target: str
) -> None:
    # An allowed upstream answers with a redirect to loopback: the next hop is
    # checked like the first one (middleware per hop, resolver per name).
    location = f"http://{target}:{listener.port}/".encode()
    redirect = b"HTTP/1.1 302 Found\r\nLocation: " + location
    redirect += b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    async with listening(redirect) as upstream:
        # The redirecting upstream is marked internal so that it can live on loopback.
        inner = FakeDNS({"upstream.internal": ["127.0.0.1"], "rebind.example": ["127.0.0.1"]})
        guard = session_guard(["upstream.internal"], inner=inner)
        async with guarded_client(guard.resolver, guard.middlewares) as session:
            with pytest.raises(aiohttp.ClientError) as info:
                url = f"http://upstream.internal:{upstream.port}/"
                async with session.get(url) as response:
                    await response.read()
    assert isinstance(blocked_cause(info.value), BlockedAddressError), repr(info.value)
    assert upstream.accepted == 1
    assert listener.accepted == 0
