"""``[cors]``: which browser origins may call the gateway (flask-cors), preflights answered first.

flask-cors adds the CORS fields to every response (an after-request hook,
which the bridge runs as Flask does). A preflight (``OPTIONS`` with
``Origin`` and ``Access-Control-Request-Method``) is answered here, before
auth and rate limits: browsers send it without credentials, and it must
cost no rate-limit budget. The proxy's upstreams never see one.
"""

from __future__ import annotations

from flask import Response, request
from flask_cors import CORS

from fanout.bridge import BridgeFlask
from fanout.core.config import CorsConfig


def _preflight() -> Response | None:
    if (
        request.method == "OPTIONS"
        and "Origin" in request.headers
        and "Access-Control-Request-Method" in request.headers
    ):
        # Empty; flask-cors adds the Access-Control-* fields (or none, for
        # an origin not allowed: the browser then refuses the real request).
        answer = Response(status=204)
        del answer.headers["Content-Type"]  # Werkzeug's default; a 204 has no content
        return answer
    return None


def install_cors(app: BridgeFlask, config: CorsConfig | None) -> None:
    """Serve CORS as ``config`` says (nothing without a ``[cors]`` table).

    Install before auth and rate limits, so that a preflight skips both.
    """
    if config is None:
        return
    CORS(
        app,
        origins=list(config.allow_origins),
        methods=list(config.allow_methods),
        allow_headers=list(config.allow_headers),
        expose_headers=list(config.expose_headers),
        supports_credentials=config.allow_credentials,
        max_age=config.max_age,
        # "*" stays "*" (never the caller's origin reflected) when it is allowed.
        send_wildcard="*" in config.allow_origins,
    )
    app.before_request(_preflight)
