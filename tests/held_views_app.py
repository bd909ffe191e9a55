"""The gateway with views that hold a worker, for tests that serve it in real processes.

``python -m hypercorn -c hypercorn.toml tests.held_views_app:app``. The views:
  GET /test/pid           this worker's pid
  GET /test/hold          a plain def view (the thread pool) that returns once the
                          file named by HELD_RELEASE_FILE exists
  GET /test/stall?seconds=N  an async view that blocks the worker's loop N seconds
  GET /test/exit          a view that raises SystemExit (as a library calling sys.exit() does)
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from flask import Blueprint, Response, jsonify, request

from app import create_served_app
from fanout.bridge import ASGIBridge, BridgeFlask

RELEASE_ENV = "HELD_RELEASE_FILE"
#: A held view gives up after this long, so that a failed test leaves no thread behind.
HOLD_LIMIT_SECONDS = 60.0

blueprint = Blueprint("held", __name__, url_prefix="/test")


@blueprint.get("/pid")
async def pid() -> Response:
    """Answer this worker's pid."""
    return jsonify(pid=os.getpid())


@blueprint.get("/hold")
def hold() -> Response:
    """Block a thread of the pool until the release file exists."""
    release = Path(os.environ[RELEASE_ENV])
    deadline = time.monotonic() + HOLD_LIMIT_SECONDS
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return jsonify(pid=os.getpid())


@blueprint.get("/stall")
async def stall() -> Response:
    """Block the worker's event loop (deliberately: what a blocking hook would do)."""
    time.sleep(float(request.args.get("seconds", "1")))  # noqa: ASYNC251 - the point
    return jsonify(pid=os.getpid())


@blueprint.get("/exit")
async def exit_view() -> Response:
    """Raise SystemExit, as a library that calls sys.exit() would."""
    raise SystemExit(3)


def _create() -> BridgeFlask:
    served = create_served_app()
    served.register_blueprint(blueprint)
    return served


app = ASGIBridge(_create)
