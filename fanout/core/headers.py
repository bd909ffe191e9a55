"""Header rules of the proxy: hop-by-hop stripping and X-Forwarded-For."""

from __future__ import annotations

from collections.abc import Iterable

#: Headers meaningful for one connection only (RFC 9110 7.6.1, plus legacy ones still
#: sent in the wild); a proxy must not forward them. Lower-case.
HOP_BY_HOP: frozenset[str] = frozenset(
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


def strip_hop_by_hop(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop hop-by-hop headers and those a Connection header names; keep order and repeats."""
    headers = list(headers)
    dropped = set(HOP_BY_HOP)
    for name, value in headers:
        if name.lower() == "connection":
            dropped.update(_split_list(value.lower()))
    return [(name, value) for name, value in headers if name.lower() not in dropped]


def forwarded_for(existing: str | None, client_addr: str, trusted_proxies: int) -> str:
    """Return the X-Forwarded-For value to send upstream for a request from ``client_addr``.

    Only the last ``trusted_proxies`` entries of the existing value were added by proxies
    we trust; anything left of them could be forged by the client, so it is dropped.
    """
    _check_trusted(trusted_proxies)
    kept = _split_list(existing or "")[-trusted_proxies:] if trusted_proxies else []
    if client_addr.strip():
        kept.append(client_addr.strip())
    return ", ".join(kept)


def client_address(existing_xff: str | None, peer_addr: str, trusted_proxies: int) -> str:
    """Return the original client's address, trusting only our own ``trusted_proxies``.

    With none, it is the peer's address. Otherwise it is the entry the outermost trusted
    proxy added, ``trusted_proxies`` from the right of X-Forwarded-For (the leftmost entry
    when the list is shorter, the peer's address when it is empty).
    """
    _check_trusted(trusted_proxies)
    if not trusted_proxies:
        return peer_addr
    entries = _split_list(existing_xff or "")
    if not entries:
        return peer_addr
    return entries[-min(trusted_proxies, len(entries))]


def _split_list(value: str) -> list[str]:
    return [item for item in (part.strip() for part in value.split(",")) if item]


def _check_trusted(trusted_proxies: int) -> None:
    if trusted_proxies < 0:
        raise ValueError(f"trusted_proxies must be >= 0, got {trusted_proxies}")
