"""A Flask subclass whose async views run on the server's loop via the greenlet bridge."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterator,
)
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit

from flask import Flask, Request, Response, request
from flask.ctx import RequestContext
from flask.globals import request_ctx
from flask.typing import ResponseReturnValue
from flask.views import MethodView
from werkzeug.exceptions import BadRequest, HTTPException, RequestEntityTooLarge
from werkzeug.routing import RequestRedirect

from fanout.bridge.body import RequestBody
from fanout.bridge.greenlets import MissingBridgeError, in_bridge_greenlet, run_coroutine
from fanout.bridge.http import AT_EXCHANGE_END, RECEIVED_AT, SEND_IDLE
from fanout.bridge.pool import wait_in_pool
from fanout.bridge.serving import SERVING_LOOP, run_from_worker, serving_state

T = TypeVar("T")
LifespanHook = Callable[[Flask], AsyncIterator[None]]

#: Where a served request keeps the request context routed to choose where it runs.
_ROUTED_CONTEXT = "bridge.routed_context"

#: The app setting (Flask config) that refuses a declared Content-Length over
#: MAX_CONTENT_LENGTH with 413 before the view runs (True), or only when the
#: body is read, as plain Flask does (False).
EARLY_413_SETTING = "REFUSE_OVERSIZED_BODY_EARLY"


def iterate_async(source: AsyncIterable[T]) -> Iterator[T]:
    """Iterate an async iterable from sync code in a bridge greenlet (e.g. a streamed body).

    Also works in a plain def view's worker thread (each item is awaited on
    the server loop).
    """
    return LoopIterator(source)


class LoopIterator(Iterator[T]):
    """Items awaited on the server loop, one by one, from sync code."""

    def __init__(self, source: AsyncIterable[T]) -> None:
        self._items = _iterate(source)

    def __iter__(self) -> LoopIterator[T]:
        return self

    def __next__(self) -> T:
        return next(self._items)

    def close(self) -> None:
        """Close the async iterator (its ``aclose``), if iteration started."""
        self._items.close()


def _iterate(source: AsyncIterable[T]) -> Generator[T, None, None]:
    iterator = aiter(source)
    try:
        while True:
            try:
                item = _wait(anext(iterator))
            except StopAsyncIteration:
                return
            yield item
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            _wait(aclose())


def _wait(awaitable: Awaitable[T]) -> T:
    if in_bridge_greenlet():
        return run_coroutine(awaitable)
    return run_from_worker(_awaited(awaitable))


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


def request_body_chunks() -> AsyncIterator[bytes]:
    """Return the current request's body as an async iterator of chunks, as they arrive.

    For streaming the body on (the proxy): call it in the request; the
    iterator may then be consumed by any task on the loop. Nothing else may
    read the body as well.
    """
    stream = request.environ["wsgi.input"]
    if isinstance(stream, RequestBody):
        return stream.iter_chunks()
    # Outside the served stack (the test client): a plain in-memory stream.
    return _chunks_of(request.stream)


def call_when_exchange_ends(callback: Callable[[], object]) -> None:
    """Call ``callback`` once the current request's exchange is over, however it ended.

    For what a streamed response holds (an upstream connection): the
    response's own ``call_on_close`` is never reached when something fails
    between the view and the response's start (a hook, a header the server
    refuses), nor is the response closed then. Outside the served stack
    (Flask's test client) nothing is registered: that caller closes the
    response it gets.
    """
    callbacks: list[Callable[[], object]] | None = request.environ.get(AT_EXCHANGE_END)
    if callbacks is not None:
        callbacks.append(callback)


def limit_send_idle(seconds: float) -> None:
    """Fail the current exchange when the client takes no part of its response for ``seconds``.

    For a response that holds something scarce while it streams (an
    upstream connection): a client that stops reading would otherwise hold
    it for as long as it stays connected. No effect outside the served stack.
    """
    request.environ[SEND_IDLE] = seconds


def request_received_at() -> float:
    """The ``time.perf_counter()`` at which the current request arrived.

    Earlier than the first hook for a plain def view's request that waited
    for a thread; outside the served stack, now.
    """
    received: float | None = request.environ.get(RECEIVED_AT)
    return received if received is not None else time.perf_counter()


def request_body_over_limit() -> bool:
    """Tell whether the current request's body went over MAX_CONTENT_LENGTH while streamed."""
    stream = request.environ["wsgi.input"]
    return isinstance(stream, RequestBody) and stream.over_limit


async def _chunks_of(stream: IO[bytes]) -> AsyncIterator[bytes]:
    while chunk := stream.read(65536):
        yield chunk


def _call_in_worker(
    loop: asyncio.AbstractEventLoop, view: Callable[..., Any], view_args: dict[str, Any]
) -> Any:
    SERVING_LOOP.set(loop)
    return view(**view_args)


def relative_redirect(redirect: RequestRedirect) -> Response:
    """Answer a routing redirect (merged slashes, a trailing slash) with a relative Location.

    Werkzeug builds an absolute URL from the request's Host header, which the
    client chose: behind a proxy that passes Host through, the redirect would
    send the next client wherever the attacker named (and its HTML body
    repeats the URL). The path and query alone point back to this server.
    """
    parts = urlsplit(redirect.new_url)
    # One leading slash and no backslash after it: browsers read "//host"
    # and "/\\host" as another origin.
    path = "/" + parts.path.lstrip("/")
    if path.startswith("/\\"):
        path = "/%5C" + path[2:]
    location = f"{path}?{parts.query}" if parts.query else path
    return Response(status=redirect.code, headers={"Location": location})


def check_request_target(scope: dict[str, Any], method: str) -> None:
    """Refuse (400) a request target that is not an absolute path (RFC 9112 3.2).

    Hypercorn passes the target on as the path: ``GET healthz`` was routed
    like ``/healthz``, which a front proxy's path rules would not have
    matched, and ``GET http://host/x`` (absolute-form, meant for proxies)
    only ever 404ed. Only ``OPTIONS *`` may go without a leading slash.
    """
    raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
    if raw.startswith(b"/") or (raw == b"*" and method == "OPTIONS"):
        return
    raise BadRequest("The request target must be a path starting with '/'.")


class BridgeRequest(Request):
    """Flask's request, whose per-request ``max_content_length`` also bounds the bridged body."""

    @property
    def max_content_length(self) -> int | None:
        """The most body bytes this request accepts (Flask 3.1: settable per request)."""
        limit: int | None = super().max_content_length
        return limit

    @max_content_length.setter
    def max_content_length(self, value: int | None) -> None:
        self._max_content_length = value
        stream = self.environ.get("wsgi.input")
        if isinstance(stream, RequestBody):
            # The body enforces the limit itself as it arrives (413 before it
            # is all taken in); None falls back to the app's setting here too.
            stream.limit = self.max_content_length


class RoutedRequestContext(RequestContext):
    """A request context whose URL was matched before it was pushed: push does not match again."""

    def match_request(self) -> None:
        """Match the URL, unless that was done already (by ``BridgeFlask.serves_in_pool``)."""
        if self.request.url_rule is None and self.request.routing_exception is None:
            super().match_request()


class BridgeFlask(Flask):
    """Flask served by :class:`bridge.ASGIBridge`.

    - ``async def`` views, hooks and handlers are awaited on the server's
      loop: the request's greenlet switches to its asyncio task and back, so
      tasks they create outlive the request and loop-bound resources (one
      ``aiohttp.ClientSession``) can be shared.
    - A request whose view is a plain ``def`` runs all of its Flask work
      (hooks, view, after-request, teardown, the streamed body) in one
      thread of the bridge's pool, in one copy of the context, as a threaded
      WSGI server would: a blocking view never stalls the loop. Other
      requests run their sync hooks and handlers inline, in the greenlet.
    - Outside the served stack (``app.test_client()``, a CLI command) no
      greenlet drives the request: async views then fall back to Flask's
      default, a private event loop per call (asgiref), and sync views run
      inline. Loop-bound resources opened by the lifespan are absent there.
    """

    request_class = BridgeRequest

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Async generator functions entered at lifespan startup, left at shutdown.
        self.lifespan_hooks: list[Callable[[Flask], AbstractAsyncContextManager[None]]] = []

    def while_serving(self, hook: LifespanHook) -> LifespanHook:
        """Register an async generator ``hook(app)`` run around serving.

        The code before its ``yield`` runs at lifespan startup (in
        registration order), the code after it at shutdown (in reverse order).
        """
        self.lifespan_hooks.append(asynccontextmanager(hook))
        return hook

    def async_to_sync(self, func: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
        """Return a sync callable that awaits ``func`` on the right loop."""
        fallback = super().async_to_sync

        def call(*args: Any, **kwargs: Any) -> Any:
            if in_bridge_greenlet():
                return run_coroutine(func(*args, **kwargs))
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                if SERVING_LOOP.get(None) is not None:
                    # A sync view in the pool called async code: run it on the server loop.
                    return run_from_worker(func(*args, **kwargs))
                return fallback(func)(*args, **kwargs)
            # Checked before SERVING_LOOP: a task started from a worker thread
            # inherits it, and waiting for the loop on the loop would deadlock.
            raise MissingBridgeError(
                f"{func.__qualname__} is async and was called from sync code running "
                "inside a coroutine; await it there instead (only a request's greenlet "
                "or a sync view's worker thread can wait for async code)"
            )

        return call

    def preprocess_request(self) -> ResponseReturnValue | None:
        """Run the before-request hooks, then refuse an odd target or a body over the limit.

        After the hooks on purpose: a hook may set ``request.max_content_length``
        for its route (Flask 3.1), and a hook's own answer (401, 429) comes
        first. Werkzeug refuses such a body only when it is read (a hook that
        reads it gets that 413); checking here answers 413 for every route,
        from the Content-Length alone, before any of the body is taken in.
        """
        answer = super().preprocess_request()
        scope = request.environ.get("asgi.scope")
        if answer is None and scope is not None:
            check_request_target(scope, request.method)
        if answer is None and self.config.get(EARLY_413_SETTING, True):
            limit = request.max_content_length
            length = request.content_length
            if limit is not None and length is not None and length > limit:
                raise RequestEntityTooLarge(
                    f"The request body ({length} bytes) is larger than the limit of {limit} bytes."
                )
        return answer

    def serves_in_pool(self, environ: dict[str, Any]) -> bool:
        """Route a served request; tell whether its view is a plain def (run in the pool).

        The routed context is kept for :meth:`request_context`, so the URL is
        matched once, as Flask does, only earlier.
        """
        context = RoutedRequestContext(self, environ)
        environ[_ROUTED_CONTEXT] = context
        if context.url_adapter is None:
            return False  # a routing error already: answered inline
        context.match_request()
        rule = context.request.url_rule
        if rule is None:
            return False
        method = context.request.method
        if method == "OPTIONS" and getattr(rule, "provide_automatic_options", False):
            return False
        view = self.view_functions.get(rule.endpoint)
        return view is not None and not _is_async_view(view, method)

    def request_context(self, environ: dict[str, Any]) -> RequestContext:
        """The request context for ``environ`` (the one routed by serves_in_pool, if any)."""
        routed: RequestContext | None = environ.pop(_ROUTED_CONTEXT, None)
        return routed if routed is not None else super().request_context(environ)

    def handle_http_exception(self, e: HTTPException) -> HTTPException | ResponseReturnValue:
        """Handle an HTTP error; a routing redirect gets a relative Location."""
        if isinstance(e, RequestRedirect):
            return relative_redirect(e)
        return super().handle_http_exception(e)

    def dispatch_request(self) -> ResponseReturnValue:
        """Match the request and call its view: async inline, sync in the pool."""
        req = request_ctx.request
        if req.routing_exception is not None:
            self.raise_routing_exception(req)
        rule = req.url_rule
        assert rule is not None
        if getattr(rule, "provide_automatic_options", False) and req.method == "OPTIONS":
            return self.make_default_options_response()
        view = self.view_functions[rule.endpoint]
        view_args: dict[str, Any] = req.view_args or {}
        if _is_async_view(view, req.method):
            result: ResponseReturnValue = self.ensure_sync(view)(**view_args)
            return result
        return self._run_sync_view(view, view_args)

    def _run_sync_view(
        self, view: Callable[..., Any], view_args: dict[str, Any]
    ) -> ResponseReturnValue:
        state = serving_state(self)
        if state is None or not in_bridge_greenlet():
            # Not served, or already in the pool thread running this request.
            inline: ResponseReturnValue = view(**view_args)
            return inline
        # A def view reached in the greenlet although routing chose the
        # greenlet (a hook changed the route): still keep it off the loop,
        # in a copy of the context.
        context = contextvars.copy_context()
        result: ResponseReturnValue = wait_in_pool(
            state, functools.partial(context.run, _call_in_worker, state.loop, view, view_args)
        )
        return result

    def make_response(self, rv: ResponseReturnValue) -> Response:
        """Also accept an async generator as a streamed body."""
        value: Any = rv
        if isinstance(rv, tuple) and rv and inspect.isasyncgen(rv[0]):
            value = (iterate_async(rv[0]), *rv[1:])
        elif inspect.isasyncgen(rv):
            value = iterate_async(rv)
        return super().make_response(value)


def _is_async_view(view: Callable[..., Any], method: str) -> bool:
    if inspect.iscoroutinefunction(view):
        return True
    view_class = getattr(view, "view_class", None)
    if view_class is None:
        return False
    if issubclass(view_class, MethodView):
        method = method.lower()
        handler = getattr(view_class, method, None)
        if handler is None and method == "head":
            handler = getattr(view_class, "get", None)
        return handler is not None and inspect.iscoroutinefunction(handler)
    return inspect.iscoroutinefunction(view_class.dispatch_request)
