"""One small app, built on plain Flask or on BridgeFlask, for behaviour that must not differ.

Each view reports what it saw (in its answer, a header, or ``records`` for
what a teardown saw), so a test can serve the same app under a threaded
WSGI server and under Fanout and compare.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from flask import (
    Flask,
    Response,
    copy_current_request_context,
    g,
    jsonify,
    request,
    stream_with_context,
)

#: A request-scoped value a view binds (what request-scoped logging or tracing does).
request_tag: ContextVar[str] = ContextVar("request_tag", default="unset")


def build(app_class: type[Flask], records: dict[str, Any]) -> Flask:
    """The app, on ``app_class``; teardowns write what they saw into ``records``."""
    app = app_class(__name__)
    local = threading.local()

    @app.before_request
    def bind_thread() -> None:
        # A hook binding per-request state to its thread (scoped_session does).
        local.path = request.path
        g.hook_thread = threading.get_ident()

    @app.after_request
    def report_tag(response: Response) -> Response:
        response.headers["X-Tag-After"] = request_tag.get()
        response.headers["X-Local-After"] = getattr(local, "path", "missing")
        return response

    @app.teardown_request
    def record(_: BaseException | None) -> None:
        key = request.args.get("key")
        if key:
            records[key] = {
                "tag": request_tag.get(),
                "local": getattr(local, "path", "missing"),
                "same_thread": threading.get_ident() == g.hook_thread,
            }
        # Cleaned up where it was set, as scoped_session.remove() must be.
        local.__dict__.pop("path", None)

    @app.get("/tag")
    def tag() -> Response:
        request_tag.set(f"view:{request.args['key']}")
        return jsonify(tag=request_tag.get())

    @app.get("/tag/stream")
    def tag_stream() -> Response:
        request_tag.set("view:stream")

        def chunks() -> Iterator[str]:
            yield request_tag.get()
            yield f"|{request.path}"

        return Response(stream_with_context(chunks()), mimetype="text/plain")

    @app.get("/local")
    def local_view() -> Response:
        return jsonify(
            local=getattr(local, "path", "missing"),
            same_thread=threading.get_ident() == g.hook_thread,
        )

    @app.post("/body/thread")
    def body_in_thread() -> Response:
        read: list[bytes] = []

        @copy_current_request_context
        def reader() -> None:
            read.append(request.get_data())

        worker = threading.Thread(target=reader)
        worker.start()
        worker.join()
        return Response(read[0] if read else b"(nothing read)", mimetype="text/plain")

    @app.post("/body/to-thread")
    async def body_to_thread() -> Response:
        data = await asyncio.to_thread(request.get_data)
        return Response(data, mimetype="text/plain")

    return app
