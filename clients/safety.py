"""Destination safety (SSRF guard): only allowed addresses are ever connected to.

Two checks, because aiohttp has two paths to a socket:

* Names go through the connector's resolver. ``GuardedResolver`` wraps the real
  resolver and drops every forbidden address from its answer; aiohttp then
  connects to exactly the addresses returned (it never resolves again), so the
  address checked is the address connected to, and DNS rebinding between a
  check and the connect is impossible.
* IP-literal hosts never reach the resolver: ``TCPConnector._resolve_host``
  returns them as they are (``helpers.is_ip_address``). ``check_literal_host``
  judges them; ``guard_middleware`` calls it for every request and every
  redirect hop, so a caller cannot forget.

An upstream explicitly marked internal in config is exempt from both checks, by
host name. Given ``origins`` (the configured upstreams' base URLs), the
middleware also refuses every request whose origin (scheme, host and port) is
not one of them, internal or not: the raw session reaches configured upstreams
only, never another port of an internal host. Usage::

    guard = session_guard(internal_hosts, origins=base_urls)
    connector = aiohttp.TCPConnector(resolver=guard.resolver, ...)
    session = aiohttp.ClientSession(connector=connector, middlewares=guard.middlewares, ...)
    ...
    await session.close()
    await guard.resolver.close()  # the connector does not close a resolver it was given
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

__all__ = [
    "BlockedAddressError",
    "GuardedResolver",
    "SessionGuard",
    "blocked_cause",
    "check_literal_host",
    "forbidden_reason",
    "guard_middleware",
    "origin_of",
    "session_guard",
]

_v4 = ipaddress.IPv4Network
_v6 = ipaddress.IPv6Network

# Instance metadata services: a request to these from a server hands out its
# cloud credentials. Exact addresses, checked before their broader ranges so the
# reason says what the address really is.
_METADATA: Final = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, DigitalOcean...
        ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata / credentials
        ipaddress.ip_address("169.254.170.23"),  # AWS EKS Pod Identity agent
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
        ipaddress.ip_address("192.0.0.192"),  # Oracle Cloud (classic)
        # Azure WireServer: a public-looking address, but only the Azure fabric
        # answers on it, and it hands out VM configuration.
        ipaddress.ip_address("168.63.129.16"),
        ipaddress.ip_address("fd00:ec2::254"),  # AWS IMDS over IPv6
        ipaddress.ip_address("fd00:ec2::23"),  # AWS EKS Pod Identity over IPv6
    }
)

# First match wins, so narrow ranges come before the ranges containing them.
_V4_RANGES: Final[tuple[tuple[ipaddress.IPv4Network, str], ...]] = (
    (_v4("0.0.0.0/32"), "unspecified"),
    (_v4("0.0.0.0/8"), "this network"),  # Linux connects 0.x.y.z to the local host
    (_v4("127.0.0.0/8"), "loopback"),
    (_v4("10.0.0.0/8"), "private"),
    (_v4("172.16.0.0/12"), "private"),
    (_v4("192.168.0.0/16"), "private"),
    (_v4("100.64.0.0/10"), "carrier-grade NAT"),
    (_v4("169.254.0.0/16"), "link-local"),
    (_v4("192.0.0.0/24"), "reserved"),  # IETF protocol assignments
    (_v4("192.0.2.0/24"), "documentation"),
    (_v4("198.51.100.0/24"), "documentation"),
    (_v4("203.0.113.0/24"), "documentation"),
    (_v4("192.88.99.0/24"), "reserved"),  # deprecated 6to4 relay anycast
    (_v4("198.18.0.0/15"), "benchmarking"),
    (_v4("224.0.0.0/4"), "multicast"),
    (_v4("255.255.255.255/32"), "broadcast"),
    (_v4("240.0.0.0/4"), "reserved"),
)

_MAPPED: Final = _v6("::ffff:0:0/96")
_COMPATIBLE: Final = _v6("::/96")
_NAT64: Final = _v6("64:ff9b::/96")
_SIX_TO_FOUR: Final = _v6("2002::/16")
_TEREDO: Final = _v6("2001::/32")

_V6_RANGES: Final[tuple[tuple[ipaddress.IPv6Network, str], ...]] = (
    (_v6("::/128"), "unspecified"),
    (_v6("::1/128"), "loopback"),
    (_v6("64:ff9b:1::/48"), "local-use NAT64"),  # RFC 8215: translates to anything
    (_v6("100::/64"), "reserved"),  # discard-only
    (_v6("2001:2::/48"), "benchmarking"),
    (_v6("2001:db8::/32"), "documentation"),
    (_v6("3fff::/20"), "documentation"),
    (_v6("fc00::/7"), "private"),  # unique local
    (_v6("fe80::/10"), "link-local"),
    (_v6("fec0::/10"), "site-local"),
    (_v6("ff00::/8"), "multicast"),
    (_v6("::/8"), "reserved"),
)


def _ipv4_reason(address: ipaddress.IPv4Address) -> str | None:
    for network, reason in _V4_RANGES:
        if address in network:
            return reason
    # Safety net for special-purpose ranges not listed above.
    return None if address.is_global else "not globally routable"


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address:
    """The IPv4 address in the low 32 bits (mapped, compatible and NAT64 forms)."""
    return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)


def _ipv6_reason(address: ipaddress.IPv6Address) -> str | None:
    if address in _MAPPED:
        # Never on the wire: a socket connects it to the embedded IPv4 address.
        # Refused even when that one is public; a resolver has no reason to answer it.
        inner = forbidden_reason(_embedded_ipv4(address))
        return f"IPv4-mapped {inner}" if inner else "IPv4-mapped"
    if address in _NAT64:
        # A NAT64 gateway connects to the embedded IPv4 address: judge that one.
        inner = forbidden_reason(_embedded_ipv4(address))
        return f"NAT64 {inner}" if inner else None
    if address.sixtofour is not None:
        inner = forbidden_reason(address.sixtofour)
        return f"6to4 {inner}" if inner else None
    if address in _TEREDO:
        # The real destination is hidden in an obfuscated field and reached
        # through a relay; nothing the gateway calls should need it.
        return "Teredo"
    if address in _COMPATIBLE and int(address) > 1:
        # Deprecated ::a.b.c.d form (:: and ::1 excepted); some stacks still
        # route it to a.b.c.d. Refused whatever a.b.c.d is.
        inner = forbidden_reason(_embedded_ipv4(address))
        return f"IPv4-compatible {inner}" if inner else "IPv4-compatible"
    for network, reason in _V6_RANGES:
        if address in network:
            return reason
    return None if address.is_global else "not globally routable"


def forbidden_reason(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """None if the address may be contacted, else a short reason ("loopback", "private"...)."""
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        # Judge without the zone: fe80::1%eth0 is fe80::1 (and equality counts the zone).
        address = ipaddress.IPv6Address(int(address))
    if address in _METADATA:
        return "cloud metadata"
    if isinstance(address, ipaddress.IPv6Address):
        return _ipv6_reason(address)
    return _ipv4_reason(address)


class BlockedAddressError(OSError):
    """Raised by the resolver: every address of a host is forbidden."""

    def __init__(self, host: str, reason: str, addresses: Iterable[str] = ()) -> None:
        # errno and strerror, because aiohttp's ClientConnectorError shows strerror.
        super().__init__(errno.EACCES, f"{host}: forbidden destination ({reason})")
        self.host = host
        self.reason = reason
        self.addresses = tuple(addresses)

    # OSError's own __reduce__ would rebuild from (errno, strerror).
    def __reduce__(self) -> tuple[type[BlockedAddressError], tuple[str, str, tuple[str, ...]]]:
        return (type(self), (self.host, self.reason, self.addresses))


def _normalize_host(host: str) -> str:
    """The form hosts are compared in: lower case, no brackets, no trailing dot."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host.rstrip(".")


def _parse_address(host: str) -> IPAddress | None:
    """Parse a resolver answer; None if it is not a plain IP address."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


class GuardedResolver(AbstractResolver):
    """Resolve through an inner resolver, then drop forbidden addresses unless host is internal."""

    def __init__(
        self,
        internal_hosts: frozenset[str] = frozenset(),
        inner: AbstractResolver | None = None,
    ) -> None:
        self._internal = frozenset(_normalize_host(host) for host in internal_hosts)
        # Created on first use: aiohttp's resolvers need the running loop.
        self._inner = inner

    @property
    def internal_hosts(self) -> frozenset[str]:
        """The normalized host names exempt from the check."""
        return self._internal

    def is_internal(self, host: str) -> bool:
        """Whether host is marked internal in config (case and trailing dot ignored)."""
        return _normalize_host(host) in self._internal

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve host; keep only the addresses that may be contacted."""
        if self._inner is None:
            self._inner = aiohttp.DefaultResolver()
        results = await self._inner.resolve(host, port, family)
        if self.is_internal(host) or not results:
            return results
        allowed: list[ResolveResult] = []
        reasons: list[str] = []
        refused: list[str] = []
        for result in results:
            address = _parse_address(result["host"])
            # aiohttp hands result["host"] to the socket as is; anything that is
            # not a plain address could be resolved again, behind our back.
            reason = "not an IP address" if address is None else forbidden_reason(address)
            if reason is None:
                allowed.append(result)
            else:
                refused.append(result["host"])
                if reason not in reasons:
                    reasons.append(reason)
        if not allowed:
            raise BlockedAddressError(host, ", ".join(reasons), refused)
        return allowed

    async def close(self) -> None:
        """Close the inner resolver (given or created)."""
        if self._inner is not None:
            await self._inner.close()


def _literal_address(host: str) -> IPAddress | None:
    """The address an IP-literal host denotes, as the OS would read it; None for names.

    Raises ValueError for a host that looks like an IPv6 literal but is not one.
    """
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        # Zone id, raw ("%eth0") or percent-encoded in a URL ("%25eth0").
        return ipaddress.IPv6Address(host.split("%", 1)[0])
    candidate = host.rstrip(".")
    if not candidate:
        return None
    try:
        # inet_aton, not ipaddress: getaddrinfo and aiohttp's socket calls accept
        # the legacy forms too (127.1, 2130706433, 0x7f000001, 0177.0.0.1).
        return ipaddress.IPv4Address(socket.inet_aton(candidate))
    except (OSError, ValueError):
        return None


def check_literal_host(host: str, *, internal: bool) -> None:
    """Raise BlockedAddressError if host is an IP literal that is forbidden (and not internal)."""
    if internal:
        return
    try:
        address = _literal_address(host)
    except ValueError:
        # aiohttp would pass it to the socket as an IPv6 address; do not guess.
        raise BlockedAddressError(host, "malformed IP literal") from None
    if address is None:
        return
    reason = forbidden_reason(address)
    if reason is not None:
        raise BlockedAddressError(host, reason, [str(address)])


Origin = tuple[str, str, int | None]

#: Why a request to an address outside the configured origins is refused.
NOT_CONFIGURED = "not a configured upstream's origin"


def origin_of(url: str | URL) -> Origin:
    """The (scheme, host, port) of a URL, as origins are compared (default ports filled in)."""
    parsed = url if isinstance(url, URL) else URL(url)
    return (parsed.scheme.lower(), _normalize_host(parsed.raw_host or ""), parsed.port)


def guard_middleware(
    internal_hosts: Iterable[str] = (), origins: Iterable[str] | None = None
) -> aiohttp.ClientMiddlewareType:
    """A client middleware refusing forbidden IP-literal hosts, on each request and redirect.

    With ``origins`` (base URLs), any request to another origin is refused
    too, whatever its address: internal hosts are exempt from the address
    check only on their configured origins.
    """
    internal = frozenset(_normalize_host(host) for host in internal_hosts)
    allowed = None if origins is None else frozenset(origin_of(origin) for origin in origins)

    async def middleware(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        host = request.url.raw_host or ""
        if allowed is not None and origin_of(request.url) not in allowed:
            raise BlockedAddressError(host, NOT_CONFIGURED)
        check_literal_host(host, internal=_normalize_host(host) in internal)
        return await handler(request)

    return middleware


@dataclass(frozen=True)
class SessionGuard:
    """Both halves of the guard, for one ClientSession."""

    resolver: GuardedResolver
    middleware: aiohttp.ClientMiddlewareType

    @property
    def middlewares(self) -> tuple[aiohttp.ClientMiddlewareType, ...]:
        """For ``ClientSession(middlewares=...)``."""
        return (self.middleware,)


def session_guard(
    internal_hosts: Iterable[str] = (),
    inner: AbstractResolver | None = None,
    *,
    origins: Iterable[str] | None = None,
) -> SessionGuard:
    """Build the resolver and the middleware guarding a session; internal_hosts are exempt.

    ``origins``: the only origins the session may call (None: any allowed address).
    """
    hosts = frozenset(internal_hosts)
    return SessionGuard(GuardedResolver(hosts, inner), guard_middleware(hosts, origins))


def blocked_cause(error: BaseException) -> BlockedAddressError | None:
    """Find a BlockedAddressError in an aiohttp exception's causes (aiohttp wraps it)."""
    # aiohttp raises ClientConnectorDNSError(key, exc) from exc for a resolver
    # error, and ClientOSError(*exc.args) from exc for an OSError raised by a
    # middleware: follow os_error, __cause__ and __context__ (and exception
    # groups), guarding against cycles.
    pending: list[BaseException] = [error]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, BlockedAddressError):
            return current
        if isinstance(current, aiohttp.ClientConnectorError):
            pending.append(current.os_error)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        if current.__context__ is not None:
            pending.append(current.__context__)
        if current.__cause__ is not None:
            pending.append(current.__cause__)
    return None
