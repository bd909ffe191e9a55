"""Problem details (RFC 9457) for every error the gateway answers."""

from __future__ import annotations

import json
import logging
import math
from http import HTTPStatus
from typing import Any

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from clients.errors import (
    BlockedDestination,
    CircuitOpen,
    UploadStalled,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeout,
)

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


def problem_response(
    status: int,
    *,
    title: str | None = None,
    detail: str | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> Response:
    """Build an ``application/problem+json`` response."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
    }
    if detail:
        body["detail"] = detail
    body.update(extensions)
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)
    if headers:
        response.headers.update(headers)
    return response


def _http_exception(error: HTTPException) -> Response:
    status = error.code or 500
    # Keep headers such as Allow (405) or Retry-After (503), not the HTML type.
    headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
    return problem_response(status, title=error.name, detail=error.description, headers=headers)


def upstream_status(error: UpstreamError) -> tuple[int, str]:
    """The status and title that answer an upstream failure."""
    if isinstance(error, UploadStalled):
        # The client's body stopped coming (RFC 9110 15.5.9), not the upstream's doing.
        return 408, "Request Timeout"
    if isinstance(error, UpstreamTimeout):
        return 504, "Gateway Timeout"
    if isinstance(error, CircuitOpen):
        return 503, "Upstream Circuit Open"
    if isinstance(error, BlockedDestination):
        return 502, "Blocked Destination"
    if isinstance(error, UpstreamStatusError):
        return 502, "Upstream Error Status"
    return 502, "Bad Gateway"


def _upstream_error(error: UpstreamError) -> Response:
    status, title = upstream_status(error)
    headers = None
    if isinstance(error, CircuitOpen):
        # When the circuit will next let a call through (whole seconds, at
        # least 1), rather than inviting clients back every second meanwhile.
        headers = {"Retry-After": str(max(1, math.ceil(error.retry_after)))}
    if isinstance(error, UploadStalled):
        # The rest of the body may never come: do not wait for it to reuse
        # the connection (RFC 9110 15.5.9).
        headers = {"Connection": "close"}
    extensions: dict[str, Any] = {"upstream": error.upstream}
    if isinstance(error, UpstreamStatusError):
        extensions["upstream_status"] = error.status
    return problem_response(status, title=title, detail=str(error), headers=headers, **extensions)


def _unexpected(error: Exception) -> Response:
    logger.exception("unhandled error in a view", exc_info=error)
    return problem_response(500, detail="The server failed to handle the request.")


def install_error_handlers(app: Flask) -> None:
    """Make every error the app answers a problem+json response, never HTML."""
    app.register_error_handler(HTTPException, _http_exception)
    app.register_error_handler(UpstreamError, _upstream_error)
    app.register_error_handler(Exception, _unexpected)
