"""Checking a client-chosen upstream path and query (pure)."""

from __future__ import annotations

import pytest

from fanout.core.request_target import MAX_TARGET_LENGTH, check_origin_form


@pytest.mark.parametrize(
    "target",
    [
        "/",
        "/users/7",
        "/users/7?q=a/b?c&d=%20",
        "/a%2Fb/c",
        "/a%5Cb",  # a backslash inside a name is no separator on its own
        "/~user/-._!$&'()*+,;=:@",
        "/a/...",
        "/a/..b",
        "/x?path=../..",  # dot segments mean nothing in a query
        "/" + "a" * (MAX_TARGET_LENGTH - 1),
    ],
)
def test_plain_paths_pass(target: str) -> None:
    check_origin_form(target)


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("", "single"),
        ("users", "single"),
        ("//host/x", "single"),
        ("/a b", "RFC 3986"),
        ("/a\tb", "RFC 3986"),
        ("/a\x00", "RFC 3986"),
        ("/a\r\nX: 1", "RFC 3986"),
        ("/a#f", "RFC 3986"),
        ("/a\\..\\b", "RFC 3986"),
        ("/日本", "RFC 3986"),
        ("/%zz", "RFC 3986"),
        ("/%2", "RFC 3986"),
        ("/x?a b", "RFC 3986"),
        ("/..", "segments"),
        ("/a/./b", "segments"),
        ("/a/%2e%2E/b", "segments"),
        ("/a/.%2e", "segments"),
        ("/a%2F..%2Fb", "segments"),
        ("/a/..%5Cb", "segments"),
        ("/a%00b", "control"),
        ("/a%0d%0ab", "control"),
        ("/" + "a" * MAX_TARGET_LENGTH, "at most"),
    ],
)
def test_anything_else_is_refused(target: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        check_origin_form(target)
