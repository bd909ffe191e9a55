"""One HTTP request through the bridge: Flask's WSGI call in a greenlet on the loop.

Or, for a request whose view is a plain ``def``, in one thread of the
bridge's pool (the greenlet waits for it), so that everything Flask runs for
it shares one thread and one context, as under a threaded WSGI server.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from concurrent.futures import Future
from types import TracebackType
from typing import Any

from flask import Flask
from greenlet import GreenletExit

from fanout.bridge.body import RequestBody
from fanout.bridge.environ import build_environ
from fanout.bridge.greenlets import await_only, in_bridge_greenlet, run_in_greenlet
from fanout.bridge.pool import submit
from fanout.bridge.serving import SERVING_LOOP, serving_state, wait_on_loop

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


class ExchangeAbandoned(Exception):
    """The request was cancelled (the client left) while its Flask work ran in a thread."""


def must_propagate(error: BaseException) -> bool:
    """Tell whether an error raised by app code must leave the request (cancellation).

    Anything else, SystemExit and KeyboardInterrupt included, is contained
    to the request it was raised in: let out, it would stop the event loop
    and with it every request of the worker.
    """
    return isinstance(error, asyncio.CancelledError | GreenletExit)


#: The environ key of the callbacks to run once the exchange is over (see
#: ``bridge.call_when_exchange_ends``).
AT_EXCHANGE_END = "bridge.at_exchange_end"

#: The environ key of the ``time.perf_counter()`` at which the request
#: arrived: a def view's request may wait for a thread before Flask sees it.
RECEIVED_AT = "bridge.received_at"

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
        self._loop = asyncio.get_running_loop()
        self._received_at = time.perf_counter()
        # The app's limit; a request may change its own (BridgeRequest).
        self._body = RequestBody(receive, app.config.get("MAX_CONTENT_LENGTH"), self._loop)
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
        #: The pool thread's run of this exchange's Flask work (plain def views).
        self._worker: Future[None] | None = None
        #: Set once the request was cancelled while its worker still runs.
        self._abandoned = False
        #: The last body chunk a worker left for the greenlet to send.
        self._deferred: bytes | None = None

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
            worker = self._worker
            if worker is not None and not worker.done():
                # Cancelled while a thread runs the Flask work (threads cannot
                # be interrupted): its next send fails, and what the exchange
                # holds is freed once that thread is done with it.
                self._abandoned = True
                loop = self._loop
                worker.add_done_callback(
                    lambda _: loop.is_closed() or loop.call_soon_threadsafe(self._run_end_callbacks)
                )
            else:
                self._run_end_callbacks()

    def _run_end_callbacks(self) -> None:
        # However the exchange ended (answered, failed before the response
        # started, cancelled by a disconnect): these free what a streamed
        # response would have freed when closed, had it been reached.
        for callback in self._at_end:
            try:
                callback()
            except BaseException as error:
                if must_propagate(error):
                    raise
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

    # Everything below runs in the request's greenlet, or in the pool thread
    # that runs a plain def view's request (see _run).

    def _run(self) -> None:
        environ = build_environ(self._scope, self._body)
        environ[AT_EXCHANGE_END] = self._at_end
        environ[RECEIVED_AT] = self._received_at
        self._environ = environ
        state = serving_state(self._app)
        if state is None or not _serves_in_pool(self._app, environ):
            self._respond(environ)
            return
        # A plain def view: hooks, view, after-request, teardown and the
        # response body all run in one pool thread, in one copy of this
        # context (a contextvar or thread-local set in one is seen by the
        # others), and the loop serves other requests meanwhile.
        context = contextvars.copy_context()
        self._worker = submit(
            state, functools.partial(context.run, self._respond_in_worker, environ)
        )
        await_only(asyncio.wrap_future(self._worker, loop=self._loop))
        if self._deferred is not None:
            self._send_chunk(self._deferred, final=True)

    def _respond_in_worker(self, environ: dict[str, Any]) -> None:
        # Async code the view calls (Flask's async_to_sync, iterate_async) runs on the server loop.
        SERVING_LOOP.set(self._loop)
        self._respond(environ)

    def _respond(self, environ: dict[str, Any]) -> None:
        try:
            app_iter = self._app(environ, self._start_response)
        except BaseException as error:
            if must_propagate(error):
                raise
            # Flask turns a view's Exception into a response itself: this is
            # one it lets through (SystemExit from a view, an error in WSGI
            # middleware). Contained: 500 without details.
            logger.exception("unhandled error in the app; answering 500")
            self._send_failure()
            return
        try:
            self._send_iterable(app_iter)
        except ExchangeAbandoned:
            logger.info("client gone; stopped producing the response")
        except BaseException as error:
            if must_propagate(error):
                raise
            logger.exception("error while producing the response body")
            if self._started:
                # The server aborts the connection: the body is truncated.
                # Never the error itself: SystemExit would stop the worker.
                raise RuntimeError("the response body failed after it started") from error
            self._send_failure()
        finally:
            self._close(app_iter)

    def _close(self, app_iter: Iterable[bytes]) -> None:
        close = getattr(app_iter, "close", None)
        if close is None:
            return
        try:
            close()
        except BaseException as error:
            if must_propagate(error):
                raise
            logger.exception("closing the response failed")

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
        if in_bridge_greenlet():
            # Set before switching to the loop: a final send arms no watch timer.
            self._finishing = final
            await_only(self._deliver(chunk, final))
        elif final:
            # In the pool thread: the greenlet sends the last message once
            # the thread is done, so a buffered answer costs one hand-off to
            # the pool and back.
            self._deferred = chunk
        else:
            self._from_worker(self._deliver(chunk, final))

    def _from_worker(self, work: Coroutine[Any, Any, None]) -> None:
        if self._abandoned:
            work.close()
            raise ExchangeAbandoned
        wait_on_loop(work, self._loop)

    async def _deliver(self, chunk: bytes, final: bool) -> None:
        body: Message = {"type": "http.response.body", "body": chunk, "more_body": not final}
        if final and not self._body.complete:
            # The app answered without reading all of the body. Hypercorn
            # stops reading the connection once its queue of body chunks is
            # full, and then never sends this answer: drain the rest while
            # sending, dropping it.
            self._body.discard()
            if self._watcher is None:
                self._watcher = self._loop.create_task(self._watch_disconnect())
        if self._started:
            await self._send_within(body)
        else:
            self._started = True
            start: Message = {
                "type": "http.response.start",
                "status": self._status,
                "headers": self._headers,
            }
            await self._send_within(start, body)
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


def _serves_in_pool(app: Flask, environ: dict[str, Any]) -> bool:
    # BridgeFlask knows (it routes the request); any other app runs inline.
    decide: Callable[[dict[str, Any]], bool] | None = getattr(app, "serves_in_pool", None)
    return decide is not None and decide(environ)
