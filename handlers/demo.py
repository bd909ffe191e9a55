"""A hand-written fan-out view over the bundled demo upstream (see fanout/demo/).

The example of ``clients.upstream``: each call gets the ``demo`` upstream's
policies from the gateway file (timeout, retries, circuit breaker, metrics).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, abort, jsonify

from clients import UpstreamError, gather, upstream

blueprint = Blueprint("demo", __name__, url_prefix="/demo")


@blueprint.get("/dashboard/<int:user_id>")
async def dashboard(user_id: int) -> Response:
    """Fetch a user, their orders and recommendations at once and merge them."""
    demo = upstream("demo")
    replies = await gather(
        {
            "user": demo.get(f"/users/{user_id}"),
            "orders": demo.get(f"/orders?user={user_id}"),
            "recommendations": demo.get(f"/recommendations/{user_id}"),
        }
    )
    answer: dict[str, Any] = {}
    for name, reply in replies.items():
        if isinstance(reply, UpstreamError):
            # The error handler answers it as a 502/503/504 problem naming the upstream.
            raise reply
        if name == "user" and reply.status == 404:
            abort(404, description=f"There is no user {user_id}.")
        answer[name] = reply.raise_for_status().json()
    return jsonify(answer)
