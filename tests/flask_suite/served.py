"""Serve the test client's WSGI calls through ``ASGIBridge`` on a real event loop.

The test client calls a WSGI app; here that call becomes an ASGI ``http``
scope served by ``fanout.bridge.ASGIBridge`` on an asyncio loop running in
a background thread (the "server"), and the ASGI response messages become
the WSGI answer again. Only what a server receives crosses over: the method,
target, headers, body, client and server addresses. What a test client can
hand a WSGI app in its environ and a server cannot (an ``errors_stream``,
Flask's ``with client:`` context preservation, exceptions propagated back to
the caller) stays behind, as it would under Hypercorn.

Each app gets its ASGI lifespan started before its first request and shut
down at the end of the test.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, TypeVar
from urllib.parse import quote

from flask import Flask

from fanout.bridge import ASGIBridge, BridgeFlask

logger = logging.getLogger(__name__)

T = TypeVar("T")
Message = dict[str, Any]
StartResponse = Callable[..., object]

#: The most seconds one request or lifespan step may take: a deadlocked
#: exchange fails its test instead of hanging the run.
EXCHANGE_TIMEOUT = 20.0

#: How often a caller waiting for the loop checks that it still runs.
POLL_SECONDS = 0.05


class ServerError(RuntimeError):
    """The served exchange could not produce a response (or a lifespan step failed)."""


class ServerThread:
    """An asyncio event loop running in a daemon thread: the server of the served run."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="flask-suite-server", daemon=True)
        #: What ended the loop, if something raised out of it (the server died).
        self.died_of: BaseException | None = None

    def start(self) -> None:
        """Start the loop's thread."""
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        except BaseException as exc:  # noqa: BLE001 - kept and reported by every later call
            # asyncio re-raises KeyboardInterrupt and SystemExit out of the loop:
            # a server process would end here. Its requests fail from now on.
            self.died_of = exc

    @property
    def alive(self) -> bool:
        """True while the loop runs."""
        return self._thread.is_alive()

    def call(self, make: Callable[[], Any], timeout: float = EXCHANGE_TIMEOUT) -> Any:
        """Run the coroutine ``make()`` returns on the loop; wait for its result here."""
        if threading.current_thread() is self._thread:
            # A view calling the test client: waiting here would block the loop for good.
            raise ServerError("the test client was called from inside a served request")
        self._check_alive()
        future = asyncio.run_coroutine_threadsafe(make(), self.loop)
        deadline = time.monotonic() + timeout
        while True:
            try:
                return future.result(POLL_SECONDS)
            except FutureTimeout:
                # A loop that died never finishes the future: look again.
                self._check_alive()
                if time.monotonic() > deadline:
                    future.cancel()
                    raise ServerError(f"no answer from the served app within {timeout} s") from None

    def _check_alive(self) -> None:
        if not self.alive:
            raise ServerError(f"the server loop died of {self.died_of!r}") from self.died_of

    def stop(self) -> None:
        """Cancel what is left on the loop, stop it, join the thread and close the loop."""
        if self.alive:
            self.call(self._finish)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
        else:
            # A loop that died still holds its tasks: finish them here, or
            # each one is reported (and logged) whenever the GC collects it.
            self.loop.run_until_complete(self._finish())
        self.loop.close()

    async def _finish(self) -> None:
        current = asyncio.current_task()
        left = [task for task in asyncio.all_tasks() if task is not current]
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)
        await self.loop.shutdown_asyncgens()
        await self.loop.shutdown_default_executor()


class Lifespan:
    """One app's ASGI lifespan, driven like a server does: startup, then shutdown."""

    def __init__(self, bridge: ASGIBridge) -> None:
        self._bridge = bridge
        self._inbox: asyncio.Queue[Message] | None = None
        self._outbox: asyncio.Queue[Message] | None = None
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        """Send ``lifespan.startup``; fail unless the app answers complete."""
        self._inbox, self._outbox = asyncio.Queue(), asyncio.Queue()
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
        self._task = asyncio.get_running_loop().create_task(
            self._bridge(scope, self._inbox.get, self._outbox.put)
        )
        await self._step("lifespan.startup")

    async def shutdown(self) -> None:
        """Send ``lifespan.shutdown``; fail unless the app answers complete."""
        await self._step("lifespan.shutdown")
        assert self._task is not None
        await self._task

    async def _step(self, kind: str) -> None:
        assert self._inbox is not None and self._outbox is not None
        await self._inbox.put({"type": kind})
        answer = await self._outbox.get()
        if answer["type"] != f"{kind}.complete":
            raise ServerError(f"{kind}: {answer}")


@dataclass
class Answer:
    """What the served app sent back for one request."""

    status: int | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)


class Exchange:
    """One request served through the bridge: the ASGI receive and send of a fast client."""

    def __init__(self, body: bytes) -> None:
        self._body: bytes | None = body
        self._done = asyncio.Event()
        self.answer = Answer()

    async def receive(self) -> Message:
        """The whole body in one message, then (once answered) a disconnect."""
        if self._body is not None:
            body, self._body = self._body, None
            return {"type": "http.request", "body": body, "more_body": False}
        await self._done.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        """Take one response message."""
        if message["type"] == "http.response.start":
            self.answer.status = message["status"]
            self.answer.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            self.answer.chunks.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                self._done.set()

    async def serve(self, bridge: ASGIBridge, scope: Message) -> Answer:
        """Run the bridge for this request; return what it answered."""
        try:
            await bridge(scope, self.receive, self.send)
        finally:
            self._done.set()
        return self.answer


def scope_of(environ: dict[str, Any]) -> Message:
    """The ASGI http scope a server would give for the request ``environ`` describes."""
    root_path = _text(environ.get("SCRIPT_NAME", ""))
    path = root_path + _text(environ.get("PATH_INFO", ""))
    raw_uri: str = environ.get("RAW_URI") or quote(path)
    headers = [
        (name[5:].lower().replace("_", "-").encode("latin-1"), str(value).encode("latin-1"))
        for name, value in environ.items()
        if name.startswith("HTTP_")
    ]
    for name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(name):
            headers.append((name.lower().replace("_", "-").encode(), environ[name].encode()))
    client = None
    if environ.get("REMOTE_ADDR"):
        client = (environ["REMOTE_ADDR"], int(environ.get("REMOTE_PORT") or 0))
    protocol: str = environ.get("SERVER_PROTOCOL", "HTTP/1.1")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": protocol.removeprefix("HTTP/"),
        "method": environ["REQUEST_METHOD"],
        "scheme": environ.get("wsgi.url_scheme", "http"),
        "path": path,
        "raw_path": raw_uri.split("?", 1)[0].encode("latin-1"),
        "query_string": environ.get("QUERY_STRING", "").encode("latin-1"),
        "root_path": root_path,
        "headers": headers,
        "client": client,
        "server": (environ.get("SERVER_NAME", "localhost"), int(environ.get("SERVER_PORT", 80))),
    }


def _text(wsgi_string: str) -> str:
    # WSGI carries the path's bytes as latin-1; ASGI carries them decoded as UTF-8.
    return wsgi_string.encode("latin-1").decode("utf-8", "replace")


def request_body(environ: dict[str, Any]) -> bytes:
    """Read the whole request body the test client put in ``wsgi.input``, leaving it unread.

    The client still holds its body after sending it (a real one re-sends it
    on a 307 or 308 redirect; Werkzeug's re-reads this very stream), so the
    stream is put back where it was once the server's copy is taken.
    """
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    start = stream.tell() if stream.seekable() else None
    length = environ.get("CONTENT_LENGTH")
    data: bytes = stream.read(int(length)) if length else stream.read()
    if start is not None:
        stream.seek(start)
    return data


class ServedApps:
    """Each app's bridge, its lifespan started before its first request, stopped at test end.

    A server whose loop died (an exception escaped into it) is replaced by a
    new one at the end of the test, so one such test fails alone.
    """

    def __init__(self) -> None:
        self._server = ServerThread()
        self._server.start()
        self._served: list[tuple[Flask, ASGIBridge, Lifespan]] = []
        #: What was served, for the run's report: requests, apps, apps not BridgeFlask.
        self.counts = {"requests": 0, "apps": 0, "apps_not_bridge_flask": 0}

    def bridge_for(self, app: Flask) -> ASGIBridge:
        """The app's bridge, its lifespan started on first use."""
        for served, bridge, _ in self._served:
            if served is app:
                return bridge
        bridge = ASGIBridge(app)
        lifespan = Lifespan(bridge)
        self._server.call(lifespan.startup)
        self._served.append((app, bridge, lifespan))
        self.counts["apps"] += 1
        self.counts["apps_not_bridge_flask"] += not isinstance(app, BridgeFlask)
        return bridge

    def end_test(self) -> BaseException | None:
        """Shut down the lifespan of every app served in the test.

        Return what killed the server's loop if it died during the test; it
        is then replaced by a new one.
        """
        served, self._served = self._served, []
        if not self._server.alive:
            died_of = self._server.died_of
            self._server.stop()
            self._server = ServerThread()
            self._server.start()
            return died_of
        for _, _, lifespan in served:
            self._server.call(lifespan.shutdown)
        return None

    def close(self) -> None:
        """Stop the server."""
        self._server.stop()

    def wsgi(self, app: Flask) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
        """A WSGI callable that serves each call through ``app``'s bridge."""

        def served(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
            bridge = self.bridge_for(app)
            scope, body = scope_of(environ), request_body(environ)
            self.counts["requests"] += 1
            answer: Answer = self._server.call(lambda: _exchange(bridge, scope, body))
            if answer.status is None:
                raise ServerError(f"{scope['method']} {scope['path']}: no response was started")
            start_response(_status_line(answer.status), _wsgi_headers(answer.headers))
            return _chunks(answer.chunks)

        return served


async def _exchange(bridge: ASGIBridge, scope: Message, body: bytes) -> Answer:
    return await Exchange(body).serve(bridge, scope)


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} UNKNOWN"


def _wsgi_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]


def _chunks(chunks: list[bytes]) -> Iterator[bytes]:
    yield from (chunk for chunk in chunks if chunk)
