"""The client of one configured upstream: deadlines, retries, circuit breaker, limits."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from clients.errors import (
    BadUpstreamPayload,
    BlockedDestination,
    CircuitOpen,
    UploadStalled,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from clients.safety import BlockedAddressError, blocked_cause, check_literal_host
from clients.upstream import UpstreamReply, classify_failure, read_capped
from fanout.core.circuit import (
    CLIENT_BODY,
    CLIENT_PATH,
    GATEWAY_CALL,
    BlameRule,
    CircuitBreaker,
    CircuitState,
    FailureKind,
)
from fanout.core.config import UpstreamConfig
from fanout.core.outlier import Host, HostPool
from fanout.core.retry import (
    RETRY_AFTER_STATUSES,
    RETRYABLE_METHODS,
    RetryBudget,
    backoff_delay,
    is_retryable_status,
    retry_after_seconds,
)

logger = logging.getLogger(__name__)

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: Calls skip the shared session's SSRF middleware: this client only ever
#: calls its one configured origin, whose IP literal (if any) it judged once
#: when built; names are still judged after DNS by the session's resolver.
#: A middleware costs a coroutine layer and a chain build on every call.
_NO_MIDDLEWARES: tuple[aiohttp.ClientMiddlewareType, ...] = ()
Body = bytes | AsyncIterable[bytes] | None
Headers = Mapping[str, str] | Iterable[tuple[str, str]]
R = TypeVar("R")


class UpstreamObserver(Protocol):
    """Told of every upstream call (metrics)."""

    def observe_upstream(self, upstream: str, outcome: str, seconds: float) -> None:
        """One call: ok, error_status, timeout, error, circuit_open or blocked."""

    def observe_circuit(self, upstream: str, state: CircuitState) -> None:
        """The upstream's circuit state after a call."""

    def observe_host(self, upstream: str, host: str, outcome: str, ejected: bool) -> None:
        """One call on one host of a several-host upstream, and whether it is now ejected."""


class UpstreamClient:
    """Calls to one upstream over the shared session, under its configured policies.

    - Each try is bounded by the upstream's ``timeout`` (connect included,
      ``connect_timeout`` for the connection) and by the caller's deadline.
    - GET and HEAD are retried on connection errors, timeouts and 429/502/
      503/504, with full-jitter backoff, while the deadline and the retry
      budget allow; other methods are never retried.
    - A circuit breaker fails calls fast (CircuitOpen) after repeated failures;
      what counts depends on who chose the request (core.circuit.BlameRule).
    - At most ``max_connections`` calls are in flight; bodies over
      ``max_body_bytes`` (after decompression) are refused.
    - Redirects are followed only up to ``follow_redirects`` hops and only
      within the configured origin.
    """

    def __init__(
        self,
        config: UpstreamConfig,
        session: aiohttp.ClientSession,
        rng: random.Random,
        observer: UpstreamObserver | None = None,
    ) -> None:
        self.config = config
        self._observer = observer
        self._session = session
        self._rng = rng
        self.breaker = CircuitBreaker(
            config.circuit_breaker.failures, config.circuit_breaker.reset_after
        )
        self._budget = RetryBudget(ratio=config.retry_budget)
        self._slots = asyncio.Semaphore(config.max_connections)
        # Built once: aiohttp's timeout object is immutable.
        self._connect_timeout = aiohttp.ClientTimeout(sock_connect=config.connect_timeout)
        #: The circuit state last told to the observer (None: not yet told).
        self._reported_state: CircuitState | None = None
        #: Each host's origin (scheme, host, port), by base URL.
        self._origins = {url: _origin_of(url) for url in config.urls}
        #: Several hosts: balanced and ejected (None: the one base_url).
        self._hosts = (
            HostPool(config.urls, config.outlier_detection) if len(config.urls) > 1 else None
        )
        # Every call goes to a configured origin (url() and redirects keep to
        # it), so an IP-literal host is judged once here (see _NO_MIDDLEWARES).
        self._refused: str | None = None
        for url in config.urls:
            try:
                check_literal_host(urlsplit(url).hostname or "", internal=config.internal)
            except BlockedAddressError as exc:
                # The reason only: the host is the config's business, not a client's.
                self._refused = f"{self.name}: forbidden destination ({exc.reason})"

    @property
    def name(self) -> str:
        """The upstream's configured name."""
        return self.config.name

    def url(self, path_and_query: str, base_url: str | None = None) -> URL:
        """The absolute URL of an (already percent-encoded) path on this upstream.

        ``base_url``: one of the upstream's hosts (its first if None).

        Raises BlockedDestination if the result would leave the upstream's
        origin (a path starting with anything but "/" could turn the host
        into userinfo): only configured origins are ever contacted.
        """
        if not path_and_query.startswith("/") or path_and_query.startswith("//"):
            raise BlockedDestination(self.name, f"{self.name}: path must start with one '/'")
        base = base_url or self.config.base_url
        url = URL(base + path_and_query, encoded=True)
        if _origin_of_url(url) != self._origins[base] or url.user:
            raise BlockedDestination(self.name, f"{self.name}: path would leave the upstream")
        return url

    async def fetch(
        self,
        method: str,
        path_and_query: str,
        *,
        deadline: float,
        headers: Headers | None = None,
        body: bytes | None = None,
        path_from_client: bool = False,
    ) -> UpstreamReply:
        """Call the upstream and read its whole answer before ``deadline`` (loop time).

        ``path_from_client``: the path was chosen by the gateway's client (a
        batch job's), so only connection failures and timeouts count against
        the upstream's circuit, never the answer's status or payload.
        """
        rule = CLIENT_PATH if path_from_client else GATEWAY_CALL
        loop = asyncio.get_running_loop()
        retryable = method in RETRYABLE_METHODS
        attempts = 1 + (self.config.retries if retryable else 0)
        self._budget.record_request()
        # The latest outcome: an error answer or a failure; the caller gets it
        # when retries run out (or the budget or the deadline forbids more).
        outcome: UpstreamReply | UpstreamError | None = None
        for attempt in range(attempts):
            if attempt:
                # A 429 or 503 may say when to come back: that, if the deadline
                # leaves room for it (else no retry), rather than our backoff.
                asked = _asked_wait(outcome)
                pause = asked if asked is not None else backoff_delay(attempt - 1, rng=self._rng)
                if loop.time() + pause >= deadline or not self._budget.try_spend():
                    break
                await asyncio.sleep(pause)
            try:
                reply = await self._try_once(method, path_and_query, deadline, headers, body, rule)
            except (UpstreamTimeout, UpstreamUnavailable) as exc:
                outcome = exc
                continue
            if retryable and is_retryable_status(reply.status):
                outcome = reply
                continue
            return reply
        if isinstance(outcome, UpstreamReply):
            return outcome
        assert outcome is not None
        raise outcome

    async def _try_once(
        self,
        method: str,
        path_and_query: str,
        deadline: float,
        headers: Headers | None,
        body: bytes | None,
        rule: BlameRule,
    ) -> UpstreamReply:
        return await self._observed(
            method,
            self._try_once_unobserved(method, path_and_query, deadline, headers, body, rule),
            lambda reply: reply.status,
        )

    async def _observed(self, method: str, call: Awaitable[R], status_of: Callable[[R], int]) -> R:
        # Every call to the upstream, a fetch try or a proxied stream, is
        # logged and reported to the observer (metrics) once.
        started = time.perf_counter()
        outcome = "error"
        status: int | None = None
        cause: str | None = None
        try:
            result = await call
            status = status_of(result)
            outcome = "ok" if status < 500 else "error_status"
            return result
        except UpstreamError as exc:
            outcome = _outcome(exc)
            cause = _cause(exc)
            raise
        finally:
            seconds = time.perf_counter() - started
            # A line per successful call costs more than the rest of the
            # gateway's work for it (findCaller, a record, JSON): successes
            # are DEBUG, failures WARNING; the metrics count every call.
            level = logging.DEBUG if outcome == "ok" else logging.WARNING
            if logger.isEnabledFor(level):
                logger.log(
                    level,
                    "upstream call",
                    extra={
                        "upstream": self.name,
                        "method": method,
                        "outcome": outcome,
                        "status": status,
                        "duration_ms": round(seconds * 1000, 3),
                        # What went wrong, in full: for the operator (a
                        # client's problem detail only names the upstream).
                        "cause": cause,
                    },
                )
            if self._observer is not None:
                self._observer.observe_upstream(self.name, outcome, seconds)
                state = self.breaker.state
                if state is not self._reported_state:
                    # The gauge changes rarely; setting it per call was a
                    # labelled lookup for nothing.
                    self._observer.observe_circuit(self.name, state)
                    self._reported_state = state

    async def _try_once_unobserved(
        self,
        method: str,
        path_and_query: str,
        deadline: float,
        headers: Headers | None,
        body: bytes | None,
        rule: BlameRule,
    ) -> UpstreamReply:
        loop = asyncio.get_running_loop()
        if deadline - loop.time() <= 0:
            raise UpstreamTimeout(self.name, f"{self.name}: no time left before the deadline")
        trial = self._admit()
        host = self._hosts.pick() if self._hosts is not None else None
        try:
            url = self.url(path_and_query, host.base_url if host is not None else None)
            # Waiting for a free slot is this gateway's queue, not the upstream's fault.
            await self._acquire_slot(deadline - loop.time())
            budget = min(self.config.timeout, deadline - loop.time())
            if host is not None:
                host.outstanding += 1
            try:
                async with asyncio.timeout(budget):
                    reply = await self._request_following_redirects(method, url, headers, body)
            except BadUpstreamPayload:
                if rule.error_answers:
                    self._blame(host)
                raise
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                # Only the upstream's own timeouts count against it (connect_timeout
                # always is one), not a try cut short by the caller's deadline.
                full_try = budget >= self.config.timeout
                raise self._failure(
                    exc, seconds=budget, rule=rule, full_try=full_try, host=host
                ) from exc
            finally:
                self._slots.release()
                if host is not None:
                    host.outstanding -= 1
        except BaseException:
            if trial:
                self.breaker.abandon_trial()
            raise
        self._record_answer(reply.status, rule, trial=trial, host=host)
        return reply

    def _failure(
        self,
        exc: BaseException,
        *,
        seconds: float,
        rule: BlameRule,
        full_try: bool = True,
        host: Host | None = None,
    ) -> UpstreamError:
        """The upstream error a failed call raises; held against the breaker as ``rule`` says.

        ``full_try``: the call had the upstream's whole ``timeout`` (a timeout
        of a try cut short by its caller's deadline says nothing of the upstream).
        """
        if not isinstance(exc, TimeoutError):
            blocked = blocked_cause(exc)
            if blocked is not None:
                return BlockedDestination(
                    self.name, f"{self.name}: forbidden destination ({blocked.reason})"
                )
        error: UpstreamError
        kind: FailureKind | None
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            kind = FailureKind.CONNECT
            error = UpstreamTimeout(
                self.name,
                f"{self.name} did not accept a connection within "
                f"{self.config.connect_timeout:.3g}s",
            )
        elif isinstance(exc, TimeoutError):
            kind = FailureKind.TIMEOUT if full_try else None
            error = UpstreamTimeout(self.name, f"{self.name} did not answer within {seconds:.3g}s")
        else:
            kind, phrase = classify_failure(exc)
            error = UpstreamUnavailable(self.name, f"{self.name} {phrase}")
        if rule.blames(kind):
            self._blame(host)
        return error

    def _blame(self, host: Host | None) -> None:
        """A failure held against the upstream: its host's; its circuit's once no host is left."""
        if host is not None and self._hosts is not None:
            ejected = self._hosts.failed(host)
            self._observe_host(host, "failure", ejected=self._hosts.ejected(host))
            if ejected:
                logger.warning(
                    "upstream host ejected",
                    extra={"upstream": self.name, "host": host.base_url},
                )
            if not self._hosts.all_out():
                return  # another host still serves: the circuit stays as it is
        self.breaker.record_failure()

    def _credit(self, host: Host | None) -> None:
        if host is not None and self._hosts is not None:
            self._hosts.succeeded(host)
            self._observe_host(host, "success", ejected=False)
        self.breaker.record_success()

    def _observe_host(self, host: Host, outcome: str, *, ejected: bool) -> None:
        if self._observer is not None:
            self._observer.observe_host(self.name, host.base_url, outcome, ejected)

    def _record_answer(
        self, status: int, rule: BlameRule, *, trial: bool, host: Host | None = None
    ) -> None:
        if status < 500:
            self._credit(host)
        elif rule.error_answers:
            self._blame(host)
            if trial:
                self.breaker.abandon_trial()  # a no-op if _blame recorded it
        elif trial:
            # A 5xx to the client's own request says nothing of the upstream:
            # hand the trial on rather than keep the circuit shut.
            self.breaker.abandon_trial()

    async def _acquire_slot(self, seconds: float) -> None:
        if not self._slots.locked():
            # A slot is free: take it without arming a timer (the common case).
            await self._slots.acquire()
            return
        try:
            async with asyncio.timeout(max(seconds, 0)):
                await self._slots.acquire()
        except TimeoutError as exc:
            raise UpstreamTimeout(
                self.name,
                f"{self.name}: all {self.config.max_connections} connections stayed busy",
            ) from exc

    def _admit(self) -> bool:
        """Let the call through or raise CircuitOpen; True if it is the half-open trial.

        A forbidden IP-literal origin is refused first (BlockedDestination),
        before the breaker or the network is asked.
        """
        if self._refused is not None:
            raise BlockedDestination(self.name, self._refused)
        if not self.breaker.allow():
            wait = self.breaker.retry_after()
            raise CircuitOpen(self.name, f"{self.name}: circuit open, retry in {wait:.3g}s", wait)
        # A trial that then fails unrecorded (a slot wait or a try cut short by
        # the caller's deadline, a cancellation) is handed back with
        # breaker.abandon_trial(): the next call is the trial, not a fast
        # failure for another reset_after (a no-op once it was recorded).
        return self.breaker.state is CircuitState.HALF_OPEN

    async def _request_following_redirects(
        self, method: str, url: URL, headers: Headers | None, body: bytes | None
    ) -> UpstreamReply:
        for _hop in range(self.config.follow_redirects + 1):
            async with self._session.request(
                method,
                url,
                headers=self._headers(headers),
                data=body,
                allow_redirects=False,
                middlewares=_NO_MIDDLEWARES,
                timeout=self._connect_timeout,
            ) as response:
                location = response.headers.get("Location")
                if (
                    response.status not in REDIRECT_STATUSES
                    or location is None
                    or not self.config.follow_redirects
                ):
                    data = await read_capped(response, self.name, self.config.max_body_bytes)
                    return UpstreamReply(self.name, response.status, response.headers, data)
            url = self._checked_redirect(url, location)
            if response.status == 303:
                method, body = "GET", None
        raise BadUpstreamPayload(
            self.name, f"{self.name}: more than {self.config.follow_redirects} redirects"
        )

    def _checked_redirect(self, current: URL, location: str) -> URL:
        target = current.join(URL(location))
        if _origin_of_url(target) != _origin_of_url(current):
            # Only the configured origin may ever be contacted. Where the
            # upstream pointed is for the log, not for the client.
            raise BlockedDestination(
                self.name, f"{self.name}: redirect to another origin refused"
            ) from ValueError(f"redirect to {target.origin()}")
        return target

    def _headers(self, extra: Headers | None) -> Headers | None:
        if not self.config.headers:
            # aiohttp copies the headers into its own multidict anyway.
            return extra
        # A multidict keeps repeated client headers (the proxy); the
        # upstream's configured headers replace any of the same name.
        merged: CIMultiDict[str] = CIMultiDict(extra or ())
        for name, value in self.config.headers.items():
            merged[name] = value
        return merged

    async def open_stream(
        self,
        method: str,
        path_and_query: str,
        *,
        headers: Headers,
        body: Body,
        min_upload_rate: int = 0,
    ) -> UpstreamStream:
        """Send a request and return the response once its head arrived (body unread).

        For the proxy: the body is passed through as sent (no decompression);
        the caller closes the stream, which frees its connection slot. Without
        a request body, the head must arrive within ``timeout``. A streamed
        body must bring at least ``min_upload_rate`` bytes per second (and at
        least one byte) in each window of ``timeout`` seconds, else the call
        ends with UploadStalled; what fails while a body is being sent is
        held against the upstream only as BlameRule says (CLIENT_BODY).
        """
        return await self._observed(
            method,
            self._open_stream(method, path_and_query, headers, body, min_upload_rate),
            lambda stream: stream.response.status,
        )

    async def _open_stream(
        self,
        method: str,
        path_and_query: str,
        headers: Headers,
        body: Body,
        min_upload_rate: int,
    ) -> UpstreamStream:
        trial = self._admit()
        host = self._hosts.pick() if self._hosts is not None else None
        try:
            url = self.url(path_and_query, host.base_url if host is not None else None)
            await self._acquire_slot(self.config.timeout)
        except BaseException:
            if trial:
                self.breaker.abandon_trial()
            raise
        if host is not None:
            host.outstanding += 1

        def release() -> None:
            # The connection slot, and the host's count of calls outstanding.
            self._slots.release()
            if host is not None:
                host.outstanding -= 1

        upload = (
            _TrackedBody(body, window=self.config.timeout, min_rate=min_upload_rate)
            if body is not None and not isinstance(body, bytes)
            else None
        )
        # The client chose the path, and a body's length, pace and framing are
        # its own: only failures of the connection itself count (BlameRule).
        rule = CLIENT_PATH if body is None else CLIENT_BODY
        try:
            async with asyncio.timeout(self.config.timeout if upload is None else None):
                response = await self._session.request(
                    method,
                    url,
                    headers=self._headers(headers),
                    data=upload.chunks() if upload is not None else body,
                    allow_redirects=False,
                    middlewares=_NO_MIDDLEWARES,
                    auto_decompress=False,
                    timeout=aiohttp.ClientTimeout(
                        sock_connect=self.config.connect_timeout, sock_read=self.config.timeout
                    ),
                )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            release()
            if upload is not None and upload.stalled:
                # The client's doing, not the upstream's: never held against it.
                if trial:
                    self.breaker.abandon_trial()
                raise UploadStalled(
                    self.name,
                    f"The request body arrived too slowly (under {upload.needed} bytes "
                    f"in {self.config.timeout:.3g}s).",
                ) from exc
            error = self._failure(exc, seconds=self.config.timeout, rule=rule, host=host)
            if trial:
                self.breaker.abandon_trial()  # after _failure: a no-op if it recorded the failure
            raise error from exc
        except BaseException:
            release()
            if trial:
                self.breaker.abandon_trial()
            raise
        self._record_answer(response.status, rule, trial=trial, host=host)
        return UpstreamStream(response, release, idle=self.config.timeout)


def _origin_of(base_url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(base_url)
    return (parts.scheme, (parts.hostname or "").lower(), parts.port)


def _origin_of_url(url: URL) -> tuple[str, str, int | None]:
    return (url.scheme, (url.host or "").lower(), url.explicit_port)


def _asked_wait(outcome: UpstreamReply | UpstreamError | None) -> float | None:
    """The wait a 429 or 503 answer's Retry-After asks for, if any."""
    if not isinstance(outcome, UpstreamReply) or outcome.status not in RETRY_AFTER_STATUSES:
        return None
    return retry_after_seconds(outcome.headers.get("Retry-After"))


def _outcome(error: UpstreamError) -> str:
    """The metrics outcome of a failed call."""
    if isinstance(error, UpstreamTimeout):
        return "timeout"
    if isinstance(error, CircuitOpen):
        return "circuit_open"
    if isinstance(error, BlockedDestination):
        return "blocked"
    return "error"


def _cause(error: UpstreamError) -> str:
    """The failure as the log tells it: the underlying exception's own text, if any."""
    origin = error.__cause__
    if origin is None:
        return str(error)
    return f"{error} ({type(origin).__name__}: {origin})"


class _TrackedBody:
    """A request body passed through, remembering whether it stalled.

    Each window of ``window`` seconds must bring at least ``needed`` bytes
    (``min_rate`` per second, and at least one): a client sending nothing,
    or one byte now and then, would otherwise hold the upstream's connection
    slot for as long as it likes (the upstream waits for the body, so its
    own timeout never runs). The rule of Apache's mod_reqtimeout MinRate.
    """

    def __init__(self, source: AsyncIterable[bytes], *, window: float, min_rate: int) -> None:
        self._source = source
        self._window = window
        self.needed = max(1, int(min_rate * window))
        self.stalled = False

    async def chunks(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        iterator = aiter(self._source)
        # Only time spent waiting for the client counts: while the upstream
        # is slow to take a chunk, the next one is not asked for.
        waiting_left = self._window
        received = 0
        while True:
            asked = loop.time()
            try:
                async with asyncio.timeout(waiting_left):
                    chunk = await anext(iterator)
            except StopAsyncIteration:
                break
            except TimeoutError:
                self.stalled = True
                raise
            received += len(chunk)
            if received >= self.needed:
                # This window's share arrived: a new window starts.
                waiting_left, received = self._window, 0
            else:
                waiting_left -= loop.time() - asked
            yield chunk


class UpstreamStream:
    """A proxied upstream response whose body is still to be read.

    Close it once done (or abandoned): that returns or drops the connection
    and frees the upstream's connection slot, exactly once.
    """

    def __init__(
        self, response: aiohttp.ClientResponse, free_slot: Callable[[], None], *, idle: float
    ) -> None:
        self.response = response
        self._free_slot = free_slot
        self._idle = idle
        self._closed = False

    def close(self) -> None:
        """Release the connection (dropped if its body was not read to the end)."""
        if self._closed:
            return
        self._closed = True
        if self.response.content.at_eof():
            self.response.release()
        else:
            self.response.close()
        self._free_slot()

    async def chunks(self, size: int) -> AsyncIterator[bytes]:
        """The body as it arrives; closes the stream when done, failed or abandoned.

        Each chunk must come within ``idle`` seconds (TimeoutError). aiohttp's
        own sock_read timer is not enough: after a malformed chunk its C
        parser drops the timer and leaves the body neither failed nor ended,
        so the read would wait for ever.
        """
        try:
            chunks = self.response.content.iter_chunked(size)
            while True:
                async with asyncio.timeout(self._idle):
                    chunk = await anext(chunks, None)
                if chunk is None:
                    return
                yield chunk
        finally:
            self.close()
