"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio

from flask import Blueprint, Response, current_app, jsonify

from fanout.bridge import is_ready
from fanout.jobs.store import StoreUnavailable
from handlers.errors import problem_response
from handlers.resources import JOB_REGISTRY_KEY, SESSION_KEY

blueprint = Blueprint("health", __name__)


async def _store_answers() -> bool:
    registry = current_app.extensions.get(JOB_REGISTRY_KEY)
    if registry is None:
        return False
    try:
        async with asyncio.timeout(2.0):
            await registry.store.ping()
    except (StoreUnavailable, TimeoutError):
        return False
    return True


@blueprint.get("/healthz")
async def healthz() -> Response:
    """Answer 200 while the process can serve requests at all."""
    return jsonify(status="ok")


@blueprint.get("/readyz")
async def readyz() -> Response:
    """Answer 200 once lifespan startup completed and the session is open, else 503."""
    session = current_app.extensions.get(SESSION_KEY)
    checks = {
        "lifespan": is_ready(current_app),
        "http_session": session is not None and not session.closed,
        "job_store": await _store_answers(),
    }
    if all(checks.values()):
        return jsonify(status="ready", checks=checks)
    failing = ", ".join(name for name, ok in checks.items() if not ok)
    return problem_response(
        503, detail=f"not ready: {failing}", checks=checks, headers={"Retry-After": "1"}
    )
