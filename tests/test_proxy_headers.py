"""Which headers the proxy sends upstream and back (pure)."""

from __future__ import annotations

import pytest

from core.proxy_headers import ClientSide, client_response_headers, upstream_request_headers

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
    }


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
