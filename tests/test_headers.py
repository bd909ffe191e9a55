"""Hop-by-hop stripping, X-Forwarded-For and the trusted client address."""

from __future__ import annotations

import pytest

from fanout.core.headers import HOP_BY_HOP, client_address, forwarded_for, strip_hop_by_hop


def test_hop_by_hop_set() -> None:
    assert (
        frozenset(
            {
                "connection",
                "keep-alive",
                "proxy-connection",
                "proxy-authenticate",
                "proxy-authorization",
                "te",
                "trailer",
                "transfer-encoding",
                "upgrade",
            }
        )
        == HOP_BY_HOP
    )
    assert all(name == name.lower() for name in HOP_BY_HOP)


@pytest.mark.parametrize("name", sorted(HOP_BY_HOP))
def test_each_hop_by_hop_header_is_dropped_in_any_case(name: str) -> None:
    headers = [(name, "x"), (name.upper(), "y"), (name.title(), "z"), ("Accept", "*/*")]
    assert strip_hop_by_hop(headers) == [("Accept", "*/*")]


def test_order_and_repeats_are_kept() -> None:
    headers = [
        ("Set-Cookie", "a=1"),
        ("Transfer-Encoding", "chunked"),
        ("Content-Type", "text/plain"),
        ("Set-Cookie", "b=2"),
        ("Via", "1.1 edge"),
    ]
    assert strip_hop_by_hop(headers) == [
        ("Set-Cookie", "a=1"),
        ("Content-Type", "text/plain"),
        ("Set-Cookie", "b=2"),
        ("Via", "1.1 edge"),
    ]


def test_headers_named_by_connection_are_dropped() -> None:
    headers = [
        ("X-Before", "1"),
        ("Connection", "close, X-Before ,  x-after"),
        ("X-After", "2"),
        ("X-Kept", "3"),
    ]
    assert strip_hop_by_hop(headers) == [("X-Kept", "3")]


def test_every_connection_header_counts() -> None:
    headers = [
        ("connection", "X-A"),
        ("CONNECTION", "x-b,,"),
        ("X-A", "1"),
        ("X-B", "2"),
        ("X-C", "3"),
    ]
    assert strip_hop_by_hop(headers) == [("X-C", "3")]


def test_strip_accepts_any_iterable_and_empty() -> None:
    assert strip_hop_by_hop(iter([("Accept", "a"), ("Upgrade", "h2c")])) == [("Accept", "a")]
    assert strip_hop_by_hop([]) == []


def test_strip_does_not_touch_values() -> None:
    headers = [("X-Note", "connection, upgrade"), ("Über", "ä")]
    assert strip_hop_by_hop(headers) == headers


@pytest.mark.parametrize(
    ("existing", "client", "trusted", "expected"),
    [
        pytest.param(None, "10.0.0.1", 0, "10.0.0.1", id="none"),
        pytest.param("6.6.6.6", "10.0.0.1", 0, "10.0.0.1", id="untrusted-ignored"),
        pytest.param(None, "10.0.0.1", 1, "10.0.0.1", id="trusted-but-none"),
        pytest.param("", "10.0.0.1", 2, "10.0.0.1", id="trusted-but-empty"),
        pytest.param("1.1.1.1", "10.0.0.1", 1, "1.1.1.1, 10.0.0.1", id="one-proxy"),
        pytest.param(
            "6.6.6.6, 1.1.1.1", "10.0.0.1", 1, "1.1.1.1, 10.0.0.1", id="forged-prefix-dropped"
        ),
        pytest.param(
            "6.6.6.6, 1.1.1.1, 2.2.2.2",
            "10.0.0.1",
            2,
            "1.1.1.1, 2.2.2.2, 10.0.0.1",
            id="two-proxies",
        ),
        pytest.param(
            "1.1.1.1", "10.0.0.1", 5, "1.1.1.1, 10.0.0.1", id="fewer-entries-than-trusted"
        ),
        pytest.param(
            " 1.1.1.1 ,, ,2.2.2.2,", " 10.0.0.1 ", 3, "1.1.1.1, 2.2.2.2, 10.0.0.1", id="messy"
        ),
        pytest.param("2001:db8::1", "::1", 1, "2001:db8::1, ::1", id="ipv6"),
        pytest.param("1.1.1.1", "", 1, "1.1.1.1", id="no-client-address"),
    ],
)
def test_forwarded_for(existing: str | None, client: str, trusted: int, expected: str) -> None:
    assert forwarded_for(existing, client, trusted) == expected


@pytest.mark.parametrize(
    ("existing", "peer", "trusted", "expected"),
    [
        pytest.param(None, "10.0.0.1", 0, "10.0.0.1", id="no-proxies"),
        pytest.param("6.6.6.6", "10.0.0.1", 0, "10.0.0.1", id="forged-ignored"),
        pytest.param("6.6.6.6, 1.1.1.1", "10.0.0.1", 1, "1.1.1.1", id="one-proxy"),
        pytest.param("6.6.6.6, 1.1.1.1, 2.2.2.2", "10.0.0.1", 2, "1.1.1.1", id="two-proxies"),
        pytest.param("1.1.1.1", "10.0.0.1", 3, "1.1.1.1", id="shorter-list-leftmost"),
        pytest.param(None, "10.0.0.1", 1, "10.0.0.1", id="missing-header"),
        pytest.param(" , ", "10.0.0.1", 1, "10.0.0.1", id="empty-entries"),
        pytest.param(" 6.6.6.6 ,  1.1.1.1 ", "10.0.0.1", 1, "1.1.1.1", id="spaces"),
    ],
)
def test_client_address(existing: str | None, peer: str, trusted: int, expected: str) -> None:
    assert client_address(existing, peer, trusted) == expected


def test_client_address_matches_what_forwarded_for_sends() -> None:
    # A trusted proxy in front of us sends on what forwarded_for built for it.
    sent_by_front = forwarded_for("6.6.6.6", "1.1.1.1", 0)
    assert client_address(sent_by_front, "10.0.0.9", 1) == "1.1.1.1"


def test_negative_trusted_proxies_is_an_error() -> None:
    with pytest.raises(ValueError):
        forwarded_for(None, "10.0.0.1", -1)
    with pytest.raises(ValueError):
        client_address(None, "10.0.0.1", -1)
