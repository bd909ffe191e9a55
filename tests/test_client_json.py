"""Parsing JSON a client sent (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from fanout.core.client_json import MAX_DEPTH, InvalidJSON, parse_client_json


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("document", "value"),
    [
        ("[" * MAX_DEPTH + "]" * MAX_DEPTH, _nested(MAX_DEPTH)),
        (b"\xef\xbb\xbf{}", {}),  # a UTF-8 byte order mark is read past
        ('{"a": 1, "a": 2}', {"a": 2}),  # duplicate names: the last wins, as everywhere in Python
        ("1e400", float("inf")),  # a number, rounded: not the constant Infinity
        ('"\\ud800"', "\ud800"),
    ],
)
def test_json_is_read(document: str | bytes, value: Any) -> None:
    assert parse_client_json(document) == value


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ("[" * 100_000 + "]" * 100_000, "deeper than 64"),
        ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "deeper than 64"),
        ('{"a": ' * 65 + "1" + "}" * 65, "deeper than 64"),
        ("NaN", "NaN"),
        ('{"x": [-Infinity]}', "-Infinity"),
        (b"\xff\xfe\x00", "decode"),
        ("9" * 5000, "4300 digits"),
        ("{", "Expecting"),
    ],
)
def test_what_is_not_json_we_accept_is_refused(document: str | bytes, reason: str) -> None:
    with pytest.raises(InvalidJSON, match=reason):
        parse_client_json(document)


def test_the_depth_is_the_callers_choice() -> None:
    assert parse_client_json("[1, 2]", max_depth=1) == [1, 2]
    with pytest.raises(InvalidJSON):
        parse_client_json("[[1]]", max_depth=1)
    assert parse_client_json("3", max_depth=0) == 3
