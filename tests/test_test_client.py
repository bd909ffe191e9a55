"""Outside the served stack, Flask's test client still runs the app."""

from __future__ import annotations

import asyncio

from flask import g, request

from app import create_app
from fanout.bridge import BridgeFlask


def _app_with_views() -> BridgeFlask:
    app = create_app()

    @app.post("/async-echo")
    async def async_echo() -> dict[str, object]:
        g.seen = request.get_json()
        await asyncio.sleep(0)
        return {"echo": g.seen, "path": request.path}

    @app.get("/sync")
    def sync_view() -> dict[str, str]:
        return {"kind": "sync"}

    return app


def test_async_view_runs_on_a_private_loop_under_the_test_client() -> None:
    client = _app_with_views().test_client()
    response = client.post("/async-echo", json={"n": 1})
    assert response.status_code == 200
    assert response.get_json() == {"echo": {"n": 1}, "path": "/async-echo"}
    assert client.get("/sync").get_json() == {"kind": "sync"}


def test_errors_are_problem_json_under_the_test_client() -> None:
    client = _app_with_views().test_client()
    response = client.get("/missing")
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"
    assert response.headers["X-Request-ID"]
    too_big = client.post("/async-echo", data=b"x" * (1_048_576 + 1))
    assert too_big.status_code == 413
    assert too_big.mimetype == "application/problem+json"
