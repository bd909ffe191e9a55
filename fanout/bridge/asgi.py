"""The ASGI callable that serves a Flask app through the greenlet bridge."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask

from fanout.bridge.http import HttpExchange, Message, Receive, Send
from fanout.bridge.lifespan import attach_state, serve_lifespan
from fanout.bridge.refusals import ambiguous_framing, answer_ambiguous_framing, answer_unavailable


class ASGIBridge:
    """Serve a Flask app (or the app a factory builds) to an ASGI server.

    Given a factory, the app is built at lifespan startup, so a broken
    configuration is reported as ``lifespan.startup.failed`` with its reason
    (or on the first request, for a server that runs no lifespan).
    """

    def __init__(self, app: Flask | Callable[[], Flask]) -> None:
        self._app = app if isinstance(app, Flask) else None
        self._factory = None if isinstance(app, Flask) else app

    @property
    def flask_app(self) -> Flask:
        """The served Flask app, built by the factory on first use."""
        if self._app is None:
            assert self._factory is not None
            self._app = self._factory()
        return self._app

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope."""
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await serve_lifespan(lambda: self.flask_app, receive, send)
        elif kind == "websocket":
            # Not supported: closing before accept makes the server answer 403.
            await receive()
            await send({"type": "websocket.close", "code": 1008})

    async def _http(self, scope: Message, receive: Receive, send: Send) -> None:
        app = self.flask_app
        state = attach_state(app)
        if state is None:
            # After lifespan shutdown (a connection outliving the server's
            # grace period): the app's resources are closed, it cannot serve.
            await answer_unavailable(receive, send)
            return
        if ambiguous_framing(scope):
            await answer_ambiguous_framing(receive, send)
            return
        state.exchanges += 1
        try:
            await HttpExchange(app, scope, receive, send).serve()
        finally:
            state.exchanges -= 1
