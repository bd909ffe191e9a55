"""Which headers the proxy sends upstream and back (pure)."""

from __future__ import annotations

import pytest

from fanout.core.proxy_headers import ClientSide, client_response_headers, upstream_request_headers

CLIENT = ClientSide(address="203.0.113.9", scheme="https", host="gw.example", request_id="r1")


def _up(headers: list[tuple[str, str]], **kwargs: object) -> dict[str, list[str]]:
    options: dict[str, object] = {"forward": (), "trusted_proxies": 0}
    options.update(kwargs)
    sent = upstream_request_headers(headers, client=CLIENT, **options)  # type: ignore[arg-type]
    result: dict[str, list[str]] = {}
    for name, value in sent:
        result.setdefault(name.lower(), []).append(value)
    return result


def test_credentials_hop_by_hop_and_client_forwarding_claims_are_dropped() -> None:
    sent = _up(
        [
            ("Authorization", "Bearer x"),
            ("Cookie", "a=1"),
            ("Connection", "keep-alive, X-Secret"),
            ("X-Secret", "s"),
            ("TE", "trailers"),
            ("Host", "gw.example"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-Proto", "http"),
            ("X-Request-ID", "spoofed"),
            ("Accept", "a/b"),
            ("Accept", "c/d"),
        ]
    )
    assert sent == {
        "accept": ["a/b", "c/d"],
        "x-forwarded-for": ["203.0.113.9"],
        "x-forwarded-proto": ["https"],
        "x-forwarded-host": ["gw.example"],
        "x-request-id": ["r1"],
        "via": ["1.1 fanout"],
    }


#: Client headers claiming an address, a scheme or a URL, as a client may forge them.
CLIENT_CLAIMS = [
    ("Forwarded", "for=6.6.6.6;proto=https;host=admin.example"),
    ("X-Real-IP", "6.6.6.6"),
    ("True-Client-IP", "6.6.6.6"),
    ("X-Client-IP", "6.6.6.6"),
    ("X-Cluster-Client-IP", "6.6.6.6"),
    ("X-Originating-IP", "6.6.6.6"),
    ("X-Remote-IP", "6.6.6.6"),
    ("X-Remote-Addr", "6.6.6.6"),
    ("CF-Connecting-IP", "6.6.6.6"),
    ("Fastly-Client-IP", "6.6.6.6"),
    ("X-Forwarded-Port", "443"),
    ("X-Forwarded-Prefix", "/admin"),
    ("X-Forwarded-Server", "admin.example"),
    ("X-Forwarded-Scheme", "https"),
    ("X-Forwarded-Ssl", "on"),
    ("Front-End-Https", "on"),
    ("X-Original-URL", "/admin"),
    ("X-Original-URI", "/admin"),
    ("X-Rewrite-URL", "/admin"),
    ("X-Host", "admin.example"),
    ("Proxy", "http://6.6.6.6:8080"),
    ("Expect", "100-continue"),
]


@pytest.mark.parametrize("trusted", [0, 2])
def test_client_address_and_url_claims_are_dropped(trusted: int) -> None:
    sent = _up([*CLIENT_CLAIMS, ("Accept", "a/b")], trusted_proxies=trusted)
    assert sorted(sent) == [
        "accept",
        "via",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-request-id",
    ]
    assert sent["x-forwarded-for"] == ["203.0.113.9"]


@pytest.mark.parametrize(
    ("values", "trusted", "expected"),
    [
        ([], 0, "1.1 fanout"),
        (["1.0 evil"], 0, "1.1 fanout"),  # no trusted proxy: the client's own is dropped
        (["1.0 evil, 1.1 lb"], 1, "1.1 lb, 1.1 fanout"),
        (["1.0 evil", "1.1 lb"], 1, "1.1 lb, 1.1 fanout"),  # repeated headers too
        (["1.1 lb"], 3, "1.1 lb, 1.1 fanout"),
    ],
)
def test_via_keeps_trusted_hops_and_adds_the_gateway(
    values: list[str], trusted: int, expected: str
) -> None:
    sent = _up([("Via", value) for value in values], trusted_proxies=trusted)
    assert sent["via"] == [expected]


def test_via_names_the_protocol_the_request_came_in_with() -> None:
    client = ClientSide(
        address="203.0.113.9", scheme="https", host="gw", request_id="r", http_version="2"
    )
    sent = upstream_request_headers([], client=client, forward=(), trusted_proxies=0)
    assert ("Via", "2 fanout") in sent


def test_configured_credentials_pass() -> None:
    sent = _up([("Authorization", "Bearer x"), ("cookie", "a=1")], forward=("Authorization",))
    assert sent["authorization"] == ["Bearer x"]
    assert "cookie" not in sent


def test_trusted_proxies_keep_their_forwarding_entries() -> None:
    sent = _up(
        [("X-Forwarded-For", "1.1.1.1, 10.0.0.2"), ("X-Forwarded-Proto", "https")],
        trusted_proxies=1,
    )
    assert sent["x-forwarded-for"] == ["10.0.0.2, 203.0.113.9"]
    assert sent["x-forwarded-proto"] == ["https"]


@pytest.mark.parametrize(
    ("values", "trusted", "expected"),
    [
        # The client's own claim, left of what our one trusted proxy appended.
        (["https, http"], 1, "http"),
        (["https", "http"], 1, "http"),  # the same, as repeated headers
        (["evil, https, http"], 2, "https"),
        (["HTTPS"], 1, "https"),
        (["http"], 3, "http"),  # fewer entries than proxies: the leftmost is theirs
        (["javascript"], 1, "https"),  # not a scheme we pass on: ours instead
        ([" , "], 1, "https"),
        (["http"], 0, "https"),  # no trusted proxy: never the client's claim
    ],
)
def test_forwarded_proto_is_taken_from_the_right_trusted_proxies_deep(
    values: list[str], trusted: int, expected: str
) -> None:
    sent = _up([("X-Forwarded-Proto", value) for value in values], trusted_proxies=trusted)
    assert sent["x-forwarded-proto"] == [expected]


def test_response_headers_lose_hop_by_hop_server_owned_and_cookies() -> None:
    upstream = [
        ("Content-Type", "application/json"),
        ("Connection", "X-Hop"),
        ("X-Hop", "1"),
        ("Transfer-Encoding", "chunked"),
        ("Date", "Mon, 23 Nov 2026 16:00:00 GMT"),
        ("Server", "upstream/1.0"),
        ("Set-Cookie", "a=1"),
        ("Cache-Control", "max-age=5"),
    ]
    assert client_response_headers(upstream, pass_cookies=False) == [
        ("Content-Type", "application/json"),
        ("Cache-Control", "max-age=5"),
    ]
    assert ("Set-Cookie", "a=1") in client_response_headers(upstream, pass_cookies=True)
