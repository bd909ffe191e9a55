"""Reading an upstream's Retry-After (pure)."""

from __future__ import annotations

import pytest

from fanout.core.retry import retry_after_seconds

NOW = 1_700_000_000.0  # 2023-11-14 22:13:20 GMT


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1", 1.0),
        (" 120 ", 120.0),
        ("Tue, 14 Nov 2023 22:13:30 GMT", 10.0),
        ("Tue, 14 Nov 2023 22:13:00 GMT", 0.0),  # already past
        (None, None),
        ("soon", None),
        ("-1", None),
        ("1.5", None),  # delay-seconds is a whole number
        ("Tue, 14 Nov 2023 22:13:30", None),  # no zone: not an HTTP-date
    ],
)
def test_retry_after_is_seconds_or_an_http_date(value: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(value, now=NOW) == seconds
