"""Refuse Hypercorn's cleartext HTTP/2 upgrade (``Upgrade: h2c``) unless allowed.

Hypercorn answers an HTTP/1.1 request carrying ``Upgrade: h2c`` (and no
body) with 101 Switching Protocols and speaks HTTP/2 on the connection from
then on, before the app sees the request. Behind a front proxy that passes
the header on, that is "h2c smuggling": the proxy then tunnels raw HTTP/2
streams that its own routing and access rules never look at.

Hypercorn 0.18 has no setting for it, so :func:`refuse_h2c_upgrades` wraps
its HTTP/1.1 protocol's upgrade check: such a request is then served as the
plain HTTP/1.1 request it also is (RFC 9110 7.8: a server may ignore
``Upgrade``). Setting ``allow_h2c_upgrade = true`` in ``hypercorn.toml``
(a key of Fanout's own, which Hypercorn keeps on its config) restores
Hypercorn's behaviour. HTTP/2 over TLS (ALPN) and a client that opens with
the HTTP/2 preface are not upgrades and stay served.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from hypercorn.protocol.h11 import H11Protocol

if TYPE_CHECKING:
    # Hypercorn's own dependency: only its types are needed here.
    import h11

    _CheckProtocol = Callable[[H11Protocol, h11.Request], Awaitable[None]]

#: The hypercorn.toml key that lets Hypercorn switch to h2c again.
ALLOW_H2C_UPGRADE = "allow_h2c_upgrade"

_WRAPPED = "_fanout_refuses_h2c"


def asks_for_h2c(request: h11.Request) -> bool:
    """Tell whether the request proposes an upgrade to cleartext HTTP/2."""
    return any(
        # h11 gives names lower-cased; Hypercorn compares the stripped value.
        name == b"upgrade" and value.strip().lower() == b"h2c"
        for name, value in request.headers
    )


def refuse_h2c_upgrades() -> None:
    """Make Hypercorn ignore ``Upgrade: h2c`` unless its config allows it (idempotent)."""
    original: Any = getattr(H11Protocol, "_check_protocol", None)
    if original is None:
        # Refuse to serve rather than silently allow the upgrade again.
        raise RuntimeError(
            "hypercorn.protocol.h11.H11Protocol._check_protocol is gone: "
            "review bridge/h2c.py for this Hypercorn version"
        )
    if getattr(original, _WRAPPED, False):
        return
    check: _CheckProtocol = original

    async def check_protocol(self: H11Protocol, event: h11.Request) -> None:
        if asks_for_h2c(event) and getattr(self.config, ALLOW_H2C_UPGRADE, False) is not True:
            return
        await check(self, event)

    setattr(check_protocol, _WRAPPED, True)
    H11Protocol._check_protocol = check_protocol  # type: ignore[method-assign]
