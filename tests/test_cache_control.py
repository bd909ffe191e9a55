"""The response-cache TTL from Cache-Control and the configured TTL."""

from __future__ import annotations

import pytest

from clients.cache import ResponseCache
from fanout.core.cache_control import response_ttl


@pytest.mark.parametrize(
    ("header", "configured", "expected"),
    [
        pytest.param(None, 60, 60.0, id="no-header"),
        pytest.param("", 60, 60.0, id="empty-header"),
        pytest.param("public", 60, 60.0, id="no-age"),
        pytest.param("max-age=30", 60, 30.0, id="max-age-lowers"),
        pytest.param("max-age=300", 60, 60.0, id="max-age-never-raises"),
        pytest.param("max-age=0", 60, 0.0, id="max-age-zero"),
        pytest.param("s-maxage=10, max-age=30", 60, 10.0, id="s-maxage-wins"),
        pytest.param("max-age=10, s-maxage=30", 60, 30.0, id="s-maxage-wins-even-if-longer"),
        pytest.param("s-maxage=120", 60, 60.0, id="s-maxage-capped"),
        pytest.param("public, max-age=30, must-revalidate", 60, 30.0, id="among-others"),
        pytest.param("MAX-AGE=30", 60, 30.0, id="upper-case"),
        pytest.param("  max-age = 30 ,public", 60, 30.0, id="spaces"),
        pytest.param('max-age="30"', 60, 30.0, id="quoted-value"),
        pytest.param("max-age=30, max-age=5", 60, 30.0, id="first-occurrence-counts"),
        pytest.param("max-age=007", 60, 7.0, id="leading-zeros"),
        pytest.param("max-age=" + "9" * 5000, 60, 60.0, id="huge-age"),
        pytest.param("max-age=99999999999", 1e12, 2.0**31, id="age-capped-at-2-31"),
        pytest.param("max-age=30", 12.5, 12.5, id="fractional-configured"),
    ],
)
def test_ttl(header: str | None, configured: float, expected: float) -> None:
    ttl = response_ttl(header, configured)
    assert ttl == expected
    assert isinstance(ttl, float)


@pytest.mark.parametrize(
    "header",
    [
        "no-store",
        "no-cache",
        "private",
        "No-Store",
        "PRIVATE",
        "public, max-age=30, no-store",
        "max-age=30,private",
        'no-cache="Set-Cookie"',
        'private="Set-Cookie, X-Id", max-age=30',
        " no-cache ",
    ],
)
def test_no_cache_directives_forbid_caching(header: str) -> None:
    assert response_ttl(header, 60) == 0.0


@pytest.mark.parametrize("configured", [0, 0.0, -5])
def test_zero_configured_ttl_turns_caching_off(configured: float) -> None:
    assert response_ttl("max-age=30", configured) == 0.0
    assert response_ttl(None, configured) == 0.0


@pytest.mark.parametrize(
    "header",
    [
        "max-age=abc",
        "max-age=-5",
        "max-age=1.5",
        "max-age=+5",
        "max-age=",
        "max-age",
        "max-age=²",
        "max-age=3 0",
        'max-age="30',
        ",,,;;==",
        "=30",
        '"unterminated, max-age=5',
        "\x00\xff garbage",
    ],
)
def test_garbage_ages_are_ignored(header: str) -> None:
    assert response_ttl(header, 60) == 60.0


def test_garbage_s_maxage_falls_back_to_max_age() -> None:
    assert response_ttl("s-maxage=soon, max-age=20", 60) == 20.0


def test_comma_inside_quotes_does_not_split() -> None:
    assert response_ttl('community="a, no-store", max-age=10', 60) == 10.0
    assert response_ttl(r'ext="a \" , no-store", max-age=10', 60) == 10.0


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_cache_entries_expire_after_their_ttl() -> None:
    clock = FakeClock()
    cache: ResponseCache[str] = ResponseCache(clock=clock)
    cache.put("k", "v", 10.0)
    cache.put("never", "v", 0.0)
    assert cache.get("k") == "v" and cache.get("never") is None
    clock.now += 10.0
    assert cache.get("k") is None and len(cache) == 0


def test_each_reader_gets_entries_no_older_than_its_max_age() -> None:
    clock = FakeClock()
    cache: ResponseCache[str] = ResponseCache(clock=clock)
    cache.put("k", "v", 60.0)  # stored by a reader allowing 60 s
    clock.now += 4.9
    assert cache.get("k", max_age=5.0) == "v"
    clock.now += 0.1
    assert cache.get("k", max_age=5.0) is None  # too old for a 5 s reader...
    assert cache.get("k", max_age=60.0) == "v"  # ...not for the one that stored it
    assert cache.get("k") == "v"


def test_the_least_recently_used_entry_goes_first() -> None:
    cache: ResponseCache[int] = ResponseCache(max_entries=2, clock=FakeClock())
    cache.put("a", 1, 10.0)
    cache.put("b", 2, 10.0)
    assert cache.get("a") == 1
    cache.put("c", 3, 10.0)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
