"""Which headers the proxy sends upstream and back to the client (pure)."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from fanout.core.headers import client_address, forwarded_for, strip_hop_by_hop

#: Client headers never passed on as sent: the proxy sets its own values.
_REPLACED = frozenset(
    {"host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id", "via"}
)
#: Client claims about the client or the URL it asked for, which upstreams
#: (or their frameworks) may believe: nothing from the client vouches for
#: them, and the address the gateway believes is in X-Forwarded-For (its
#: rightmost trusted entries plus the peer). ``Proxy`` is httpoxy (CGI
#: upstreams take it for HTTP_PROXY); ``Forwarded`` (RFC 7239) is dropped,
#: not rebuilt: X-Forwarded-For/-Proto/-Host say the same.
_CLIENT_CLAIMS = frozenset(
    {
        "forwarded",
        "x-real-ip",
        "true-client-ip",
        "x-client-ip",
        "x-cluster-client-ip",
        "x-originating-ip",
        "x-remote-ip",
        "x-remote-addr",
        "cf-connecting-ip",
        "fastly-client-ip",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-server",
        "x-forwarded-scheme",
        "x-forwarded-ssl",
        "front-end-https",
        "x-original-url",
        "x-original-uri",
        "x-rewrite-url",
        "x-host",
        "proxy",
    }
)
#: Client headers this hop answers itself: Hypercorn already sent the client its
#: ``100 Continue``, and an upstream that never sends one (RFC 9110 10.1.1
#: allows it) would leave the upload waiting for it.
_THIS_HOP = frozenset({"expect"})
_NOT_PASSED = _REPLACED | _CLIENT_CLAIMS | _THIS_HOP
#: Upstream response headers the serving front end sets itself (else they
#: would reach the client twice).
_SERVER_OWNED = frozenset({"date", "server"})
#: The only X-Forwarded-Proto values passed on; anything else is replaced by ours.
_SCHEMES = frozenset({"http", "https"})
#: Credentials, passed on only when the upstream's forward_headers names them.
_CREDENTIALS = frozenset({"cookie", "authorization"})


@dataclass(frozen=True)
class ClientSide:
    """What the proxy knows of the client's request."""

    address: str
    scheme: str
    host: str
    request_id: str
    #: The HTTP version the request came in with ("1.1", "2"), for Via.
    http_version: str = "1.1"


def upstream_request_headers(
    headers: Iterable[tuple[str, str]],
    *,
    client: ClientSide,
    forward: Collection[str],
    trusted_proxies: int,
) -> list[tuple[str, str]]:
    """The headers to send upstream for a client's request."""
    allowed = {name.lower() for name in forward}
    kept: list[tuple[str, str]] = []
    seen_for: list[str] = []
    seen_proto: list[str] = []
    seen_via: list[str] = []
    for name, value in strip_hop_by_hop(headers):
        lower = name.lower()
        if lower == "x-forwarded-for":
            seen_for.append(value)
        elif lower == "x-forwarded-proto":
            seen_proto.append(value)
        elif lower == "via":
            seen_via.append(value)
        if lower in _NOT_PASSED or (lower in _CREDENTIALS and lower not in allowed):
            continue
        kept.append((name, value))
    existing_for = ", ".join(seen_for) or None
    # The client's own X-Forwarded-* are believed only behind trusted proxies,
    # and only as deep as they go: the scheme is the entry the outermost trusted
    # proxy added, taken from the right as for X-Forwarded-For (the leftmost
    # entries are whatever the client sent).
    proto = client_address(", ".join(seen_proto), client.scheme, trusted_proxies).lower()
    if proto not in _SCHEMES:
        proto = client.scheme
    kept += [
        ("X-Forwarded-For", forwarded_for(existing_for, client.address, trusted_proxies)),
        ("X-Forwarded-Proto", proto),
        ("X-Forwarded-Host", client.host),
        # RFC 9110 7.6.3: a gateway adds itself to Via; the client's own
        # entries are believed as deep as its X-Forwarded-For entries.
        (
            "Via",
            forwarded_for(
                ", ".join(seen_via) or None, f"{client.http_version} fanout", trusted_proxies
            ),
        ),
        ("X-Request-ID", client.request_id),
    ]
    return kept


def client_response_headers(
    headers: Iterable[tuple[str, str]], *, pass_cookies: bool
) -> list[tuple[str, str]]:
    """The upstream's response headers as passed back to the client."""
    return [
        (name, value)
        for name, value in strip_hop_by_hop(headers)
        if name.lower() not in _SERVER_OWNED and (pass_cookies or name.lower() != "set-cookie")
    ]
