"""A hand-written fan-out view over the bundled demo upstream (see demo/)."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from flask import Blueprint, Response, abort, current_app, jsonify

from clients.upstream import UpstreamReply, call_all, call_upstream
from handlers.request_ids import HEADER, current_request_id
from handlers.resources import http_session

blueprint = Blueprint("demo", __name__, url_prefix="/demo")


@blueprint.get("/dashboard/<int:user_id>")
async def dashboard(user_id: int) -> Response:
    """Fetch a user, their orders and recommendations at once and merge them."""
    base = current_app.config["DEMO_UPSTREAM_URL"]
    deadline = current_app.config["UPSTREAM_TIMEOUT_SECONDS"]
    session = http_session()
    headers = {HEADER: current_request_id()}

    def fetch(path: str) -> Coroutine[Any, Any, UpstreamReply]:
        return call_upstream(
            session, "demo", "GET", f"{base}{path}", deadline=deadline, headers=headers
        )

    replies: list[UpstreamReply] = await call_all(
        fetch(f"/users/{user_id}"),
        fetch(f"/orders?user={user_id}"),
        fetch(f"/recommendations/{user_id}"),
    )
    user, orders, recommendations = replies
    if user.status == 404:
        abort(404, description=f"There is no user {user_id}.")
    return jsonify(
        user=user.raise_for_status().json(),
        orders=orders.raise_for_status().json(),
        recommendations=recommendations.raise_for_status().json(),
    )
