"""API keys: with keys configured, every route but the probes needs a Bearer key."""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from flask import Flask, Response, g, request

from handlers.errors import problem_response

#: Routes open without a key: probes, metrics, and the API description
#: (clients read it before they have a key; it holds no secrets).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})


def _key_name(keys: Mapping[str, str], offered: str) -> str | None:
    found: str | None = None
    offered_bytes = offered.encode()
    for name, key in keys.items():
        # Compare with every key, in constant time, so timing tells nothing.
        if hmac.compare_digest(key.encode(), offered_bytes):
            found = name
    return found


def install_auth(app: Flask, keys: Mapping[str, str]) -> None:
    """Require ``Authorization: Bearer <key>`` when keys are configured (none: open)."""
    if not keys:
        return

    def authenticate() -> Response | None:
        if request.path in OPEN_PATHS:
            return None
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        name = _key_name(keys, token.strip()) if scheme.lower() == "bearer" else None
        if name is None:
            return problem_response(
                401,
                detail="A valid API key is required: Authorization: Bearer <key>.",
                headers={"WWW-Authenticate": 'Bearer realm="fanout"'},
            )
        g.api_key_name = name
        return None

    app.before_request(authenticate)
