"""How long the gateway's shared response cache may keep an upstream answer."""

from __future__ import annotations

import re

# Any of these forbids a shared cache from reusing the answer. Their field-name forms
# (no-cache="Set-Cookie", private="X") are treated the same: the gateway caches whole
# answers, so it cannot drop just the named fields.
_NO_CACHE_DIRECTIVES = frozenset({"no-store", "no-cache", "private"})

# delta-seconds is plain ASCII digits (RFC 9111 1.2.2); str.isdigit() would accept "²".
_DELTA_SECONDS = re.compile(r"[0-9]+")

# RFC 9111 1.2.2: a larger delta-seconds is read as 2**31.
_MAX_DELTA_SECONDS = 2**31


def response_ttl(cache_control: str | None, configured_ttl: float) -> float:
    """Return the seconds an answer with this Cache-Control header may be cached.

    0 when caching is off (``configured_ttl`` <= 0) or the header says no-store, no-cache
    or private. Otherwise ``configured_ttl``, lowered to s-maxage when present and valid,
    else to max-age (s-maxage wins: the gateway is a shared cache). A malformed age is
    ignored; for a repeated directive the first occurrence counts.
    """
    if configured_ttl <= 0:
        return 0.0
    directives = _parse(cache_control or "")
    if _NO_CACHE_DIRECTIVES & directives.keys():
        return 0.0
    for name in ("s-maxage", "max-age"):
        age = _delta_seconds(directives.get(name))
        if age is not None:
            return float(min(configured_ttl, age))
    return float(configured_ttl)


def _parse(header: str) -> dict[str, str | None]:
    directives: dict[str, str | None] = {}
    for item in _split_outside_quotes(header):
        name, sep, value = item.partition("=")
        name = name.strip().lower()
        if not name or name in directives:
            continue
        directives[name] = _unquote(value.strip()) if sep else None
    return directives


def _split_outside_quotes(header: str) -> list[str]:
    # A quoted value may hold commas (private="Set-Cookie, X-Id"), so a plain split is wrong.
    items: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in header:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            items.append("".join(current))
            current = []
            continue
        current.append(char)
    items.append("".join(current))
    return items


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _delta_seconds(value: str | None) -> int | None:
    if value is None or not _DELTA_SECONDS.fullmatch(value):
        return None
    # Compare by length first: int() refuses strings over 4300 digits.
    if len(value.lstrip("0")) > len(str(_MAX_DELTA_SECONDS)):
        return _MAX_DELTA_SECONDS
    return min(int(value), _MAX_DELTA_SECONDS)
