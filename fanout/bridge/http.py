"""One HTTP request through the bridge: Flask's WSGI call in a greenlet on the loop."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any

from flask import Flask

from fanout.bridge.body import RequestBody
from fanout.bridge.environ import build_environ
from fanout.bridge.greenlets import await_only, run_in_greenlet

logger = logging.getLogger(__name__)

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]

_FAILURE_BODY = json.dumps(
    {
        "type": "about:blank",
        "title": "Internal Server Error",
        "status": 500,
        "detail": "The server failed to handle the request.",
    }
).encode()


_UNAVAILABLE_BODY = json.dumps(
    {
        "type": "about:blank",
        "title": "Service Unavailable",
        "status": 503,
        "detail": "The server is shutting down.",
    }
).encode()


_AMBIGUOUS_FRAMING_BODY = json.dumps(
    {
        "type": "about:blank",
        "title": "Bad Request",
        "status": 400,
        "detail": "Content-Length and Transfer-Encoding together: the body's length is ambiguous.",
    }
).encode()


async def answer_unavailable(receive: Receive, send: Send) -> None:
    """Answer 503 problem+json without running the app, and close the connection."""
    # Another instance, or this one restarted, can take it.
    await _answer_and_close(receive, send, 503, _UNAVAILABLE_BODY, [(b"retry-after", b"1")])


def ambiguous_framing(scope: Message) -> bool:
    """Tell whether a request has both Content-Length and Transfer-Encoding.

    RFC 9112 6.1: such a request may be an attempt at request smuggling; the
    server may refuse it and must close the connection after answering. An
    app reading the body by one framing while a proxy behind it trusts the
    other would pass a different request on (Hypercorn/h11 accept it, with
    Transfer-Encoding winning).
    """
    names = {name.lower() for name, _ in scope.get("headers", ())}
    return b"content-length" in names and b"transfer-encoding" in names


async def answer_ambiguous_framing(receive: Receive, send: Send) -> None:
    """Answer 400 problem+json without running the app, and close the connection."""
    await _answer_and_close(receive, send, 400, _AMBIGUOUS_FRAMING_BODY, [])


async def _answer_and_close(
    receive: Receive, send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]]
) -> None:
    # Take the request body in meanwhile: Hypercorn stops reading once its
    # queue of body chunks is full, and would then never send the answer.
    drain = asyncio.get_running_loop().create_task(_drain(receive))
    try:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
    finally:
        drain.cancel()


async def _drain(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


#: The environ key of the callbacks to run once the exchange is over (see
#: ``bridge.call_when_exchange_ends``).
AT_EXCHANGE_END = "bridge.at_exchange_end"

#: The environ key of the most seconds each response message may wait for
#: the client to take it (see ``bridge.limit_send_idle``).
SEND_IDLE = "bridge.send_idle_seconds"

#: How long the app must have been waiting (for anything but its own body or
#: its final send) before a watcher listens for the client going away. Most
#: requests are done sooner, and a watcher task per request was about 8% of
#: the fan-out benchmark's server CPU; a client that leaves is noticed this
#: much later at most.
WATCH_AFTER_SECONDS = 0.25


class HttpExchange:
    """Serve one ASGI HTTP request with a WSGI app, in a greenlet driven by this task.

    The response is sent as the app produces it: a buffered Flask response
    (its Content-Length known) goes out as one start + one final body
    message, a generator response chunk by chunk. Once the app has been
    waiting for something for ``WATCH_AFTER_SECONDS``, a watcher takes over
    ``receive`` (feeding the body to its reader) and on ``http.disconnect``
    cancels this task, so a client that goes away cancels the view's
    coroutine and its upstream calls.
    """

    def __init__(self, app: Flask, scope: Message, receive: Receive, send: Send) -> None:
        self._app = app
        self._scope = scope
        self._send = send
        # The app's limit; a request may change its own (BridgeRequest).
        self._body = RequestBody(receive, app.config.get("MAX_CONTENT_LENGTH"))
        self._status = 500
        self._headers: list[tuple[bytes, bytes]] = []
        self._length: int | None = None
        self._started = False
        self._finishing = False
        self._sent = 0
        self._watcher: asyncio.Task[None] | None = None
        self._watch_timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None
        self._at_end: list[Callable[[], object]] = []
        self._environ: dict[str, Any] = {}

    async def serve(self) -> None:
        """Run the app for this request and send its response."""
        self._task = asyncio.current_task()
        try:
            await run_in_greenlet(self._run, before_await=self._before_await)
        finally:
            if self._watch_timer is not None:
                self._watch_timer.cancel()
            if self._watcher is not None:
                self._watcher.cancel()
            self._run_end_callbacks()

    def _run_end_callbacks(self) -> None:
        # However the exchange ended (answered, failed before the response
        # started, cancelled by a disconnect): these free what a streamed
        # response would have freed when closed, had it been reached.
        for callback in self._at_end:
            try:
                callback()
            except Exception:
                logger.exception("a callback at the end of the exchange failed")

    def _before_await(self) -> None:
        # The first time the app waits, arm a timer (cheap, unlike a task):
        # only a request still waiting when it fires gets a watcher.
        if self._watch_timer is None and self._watcher is None and not self._finishing:
            self._arm_watch_timer()

    def _arm_watch_timer(self) -> None:
        self._watch_timer = asyncio.get_running_loop().call_later(
            WATCH_AFTER_SECONDS, self._start_watching
        )

    def _start_watching(self) -> None:
        if self._watcher is not None or self._finishing:
            return
        if self._body.reading:
            # The app is receiving its body itself right now (the watcher
            # would be a second receiver): look again a little later.
            self._arm_watch_timer()
            return
        self._watcher = asyncio.get_running_loop().create_task(self._watch_disconnect())

    async def _watch_disconnect(self) -> None:
        await self._body.pump()
        if self._finishing:
            # Heard once the final chunk is on its way: that is Hypercorn
            # closing the stream after the response, not the client leaving,
            # and the app may still be closing its iterable (async work too).
            return
        assert self._task is not None
        logger.info(
            "client disconnected; cancelling its request",
            extra={"path": self._scope.get("path")},
        )
        self._task.cancel()

    # Everything below runs in the request's greenlet.

    def _run(self) -> None:
        environ = build_environ(self._scope, self._body)
        environ[AT_EXCHANGE_END] = self._at_end
        self._environ = environ
        try:
            app_iter = self._app(environ, self._start_response)
        except Exception:
            # Flask turns view errors into responses itself; this is an error
            # outside it (WSGI middleware). Answer 500 without details.
            logger.exception("unhandled error in the WSGI app")
            self._send_failure()
            return
        try:
            self._send_iterable(app_iter)
        except Exception:
            logger.exception("error while producing the response body")
            if self._started:
                raise  # the server aborts the connection: the body is truncated
            self._send_failure()
        finally:
            close = getattr(app_iter, "close", None)
            if close is not None:
                close()

    def _start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: ExcInfo | None = None,
        /,
    ) -> Callable[[bytes], object]:
        if exc_info is not None and exc_info[1] is not None and self._started:
            raise exc_info[1].with_traceback(exc_info[2])
        self._status = int(status[:3])
        self._headers = []
        self._length = None
        for name, value in headers:
            lower = name.lower()
            if lower == "content-length":
                self._length = int(value)
            self._headers.append((lower.encode("latin-1"), value.encode("latin-1")))
        return self._write

    def _write(self, chunk: bytes) -> None:
        # The legacy WSGI write() callable.
        if chunk:
            self._send_chunk(chunk, final=False)

    def _send_iterable(self, app_iter: Iterable[bytes]) -> None:
        for chunk in app_iter:
            if not chunk:
                continue
            self._sent += len(chunk)
            final = self._length is not None and self._sent >= self._length
            self._send_chunk(chunk, final)
            if final:
                return
        self._send_chunk(b"", final=True)

    def _send_chunk(self, chunk: bytes, final: bool) -> None:
        body: Message = {"type": "http.response.body", "body": chunk, "more_body": not final}
        self._finishing = final
        if final and not self._body.complete:
            # The app answered without reading all of the body. Hypercorn
            # stops reading the connection once its queue of body chunks is
            # full, and then never sends this answer: drain the rest while
            # sending, dropping it.
            self._body.discard()
            if self._watcher is None:
                self._watcher = asyncio.get_running_loop().create_task(self._watch_disconnect())
        if self._started:
            await_only(self._send_within(body))
        else:
            self._started = True
            start: Message = {
                "type": "http.response.start",
                "status": self._status,
                "headers": self._headers,
            }
            # One switch to the loop for both messages of a buffered response.
            await_only(self._send_within(start, body))
        if final and self._watcher is not None:
            # The response is out: nothing is left for a disconnect to cancel,
            # and the body is drained (the server took the last message).
            self._watcher.cancel()

    async def _send_within(self, *messages: Message) -> None:
        # A client that stops reading stalls the send once the buffers are
        # full, and the server has no write timeout: past the app's limit the
        # exchange fails (the server then drops the connection).
        seconds: float | None = self._environ.get(SEND_IDLE)
        for message in messages:
            if seconds is None:
                await self._send(message)  # no timer on the common path
                continue
            async with asyncio.timeout(seconds):
                await self._send(message)

    def _send_failure(self) -> None:
        self._status = 500
        self._headers = [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(_FAILURE_BODY)).encode()),
        ]
        self._send_chunk(_FAILURE_BODY, final=True)
