"""Per-caller rate limits with ``limits``, decided before the view (so before any upstream call).

``[rate_limits]`` picks the storage (``memory://``: per process, or
``redis://``: shared by every worker and instance) and a ``default``; each
endpoint's (and, for ``/proxy/<name>``, each upstream's) ``rate_limit``
replaces it. A caller is counted by identity (API key name, token ``sub``)
or, anonymous, by address. Past the limit: 429 problem details with
``Retry-After`` and the IETF ``RateLimit-Policy``/``RateLimit`` fields. A
storage that fails or is slow lets requests through (fail open) and counts
them in ``fanout_rate_limit_storage_errors``.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from flask import Flask, Response, current_app, request
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter, RateLimiter
from limits.errors import StorageError

from fanout.bridge import BridgeFlask
from fanout.core.config import EndpointConfig, GatewayConfig
from fanout.core.identity import current_caller
from fanout.process.metrics import metrics
from handlers.auth import OPEN_PATHS, PROXY_ENDPOINT
from handlers.errors import problem_response

logger = logging.getLogger(__name__)

RATE_LIMITS_KEY = "fanout.rate_limits"
#: How long a request waits for the storage before it is let through unchecked.
STORAGE_TIMEOUT = 0.25
#: How often the memory storage frees the entries of past windows.
SWEEP_SECONDS = 1.0
#: Seconds between two log lines about a failing storage (the metric counts each request).
LOG_EVERY = 10.0


@dataclass(frozen=True)
class Limit:
    """A route's limit: the parsed rate, and the name the counters are kept under."""

    item: RateLimitItem
    route: str


class RateLimits:
    """The app's limits by route, and the limiter (opened by the lifespan)."""

    def __init__(
        self, gateway: GatewayConfig, endpoint_names: Sequence[tuple[str, EndpointConfig]]
    ) -> None:
        config = gateway.rate_limits
        self.config = config
        default = parse(config.default) if config.default else None
        self.default = default
        self.by_endpoint: dict[str, Limit | None] = {}
        for name, endpoint in endpoint_names:
            rate = endpoint.rate_limit
            item = parse(rate) if rate else default
            # Counted by method and route, not by position: every instance
            # sharing a Redis agrees on the name whatever its file's order.
            route = f"{endpoint.method} {endpoint.path}"
            self.by_endpoint[name] = Limit(item, route) if item else None
        self.by_upstream: dict[str, Limit | None] = {}
        for name, upstream in gateway.upstreams.items():
            item = parse(upstream.rate_limit) if upstream.rate_limit else default
            self.by_upstream[name] = Limit(item, f"proxy {name}") if item else None
        self.limiter: RateLimiter | None = None
        #: Whether the storage is across the network (Redis), so it may stall.
        self.remote = config.storage != "memory://"
        self._last_log = -math.inf

    @property
    def active(self) -> bool:
        """Whether any route is limited."""
        return self.default is not None or any(
            limit is not None for limit in (*self.by_endpoint.values(), *self.by_upstream.values())
        )

    def limit(self) -> Limit | None:
        """The limit of the current request's route, if any."""
        # A CORS preflight never gets here: handlers.cors answers it first.
        if request.path in OPEN_PATHS:
            return None
        endpoint = request.endpoint
        if endpoint == PROXY_ENDPOINT and request.view_args:
            return self.by_upstream.get(request.view_args.get("upstream", ""))
        if endpoint in self.by_endpoint:
            return self.by_endpoint[endpoint]
        if self.default is None:
            return None
        rule = request.url_rule
        return Limit(self.default, f"{request.method} {rule.rule if rule else 'unmatched'}")

    def storage_failed(self, error: BaseException) -> None:
        """Count a request let through unchecked; log now and then."""
        metrics(current_app).rate_limit_errors.inc()
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY:
            self._last_log = now
            logger.warning(
                "rate-limit storage failed: requests pass unchecked (fail open)",
                extra={"cause": f"{type(error).__name__}: {error}"},
            )


class SweepingMemoryStorage(MemoryStorage):
    """limits' asyncio memory storage, sweeping expired entries inline, at most once a second.

    The library starts a sweep task after every hit, and its sweep holds
    each key's lock while it hands that key's moving window to a thread
    (``asyncio.to_thread``): a task and a thread hop per request (85 µs of
    CPU per moving-window hit, against 20 µs here, in a loop of hits), and
    every request of that caller queued behind the lock meanwhile (at 100
    clients on one key, CPU per answer of the whole gateway rose by a third).
    The sweep is a binary search per key: it runs inline, without awaiting,
    so no request waits for it and no lock is needed. Entries past their
    window are ignored by every check anyway; the sweep only frees memory.
    """

    _last_sweep = -math.inf

    async def _MemoryStorage__schedule_expiry(self) -> None:
        # MemoryStorage calls self.__schedule_expiry() (name-mangled to this) on every hit.
        now = time.monotonic()
        if now - self._last_sweep >= SWEEP_SECONDS:
            self._last_sweep = now
            self._sweep()

    def _sweep(self) -> None:
        now = time.time()
        for key in list(self.events):
            # Newest first, so expiries descend: keep the entries before the first expired.
            window = self.events[key]
            kept = window[: bisect.bisect_left(window, -now, key=lambda entry: -entry.expiry)]
            if kept:
                self.events[key] = kept
            else:
                self.events.pop(key, None)
                self.locks.pop(key, None)
        for key in [key for key, expires in self.expirations.items() if expires <= now]:
            self.storage.pop(key, None)
            self.expirations.pop(key, None)
            self.locks.pop(key, None)


def _storage(url: str) -> Storage:
    if url == "memory://":
        return SweepingMemoryStorage()
    # redis-py's asyncio client (already the Redis job store's), not coredis;
    # short socket timeouts: a stalled Redis must not hold requests.
    return RedisStorage(
        f"async+{url}",
        implementation="redispy",
        key_prefix="fanout-ratelimit",
        wrap_exceptions=True,
        socket_timeout=STORAGE_TIMEOUT,
        socket_connect_timeout=STORAGE_TIMEOUT,
    )


def _policy(limit: Limit) -> str:
    item = limit.item
    window = item.get_expiry()
    return f'"limit";q={item.amount};w={window}'


async def _check() -> Response | None:
    limits = rate_limits_of()
    limit = limits.limit()
    if limit is None or limits.limiter is None:
        return None
    who = current_caller().rate_key
    try:
        # Memory storage answers at once: no timer to arm (a cost on every request).
        async with asyncio.timeout(STORAGE_TIMEOUT if limits.remote else None):
            if await limits.limiter.hit(limit.item, limit.route, who):
                return None
            stats = await limits.limiter.get_window_stats(limit.item, limit.route, who)
    except (StorageError, TimeoutError) as exc:
        limits.storage_failed(exc)
        return None
    found = metrics(current_app)
    found.child(found.rate_limited, limit.route).inc()
    wait = max(1, math.ceil(stats.reset_time - time.time()))
    return problem_response(
        429,
        detail=f"Rate limit of {limit.item.amount} per {limit.item.get_expiry()}s exceeded.",
        headers={
            "Retry-After": str(wait),
            "RateLimit-Policy": _policy(limit),
            "RateLimit": f'"limit";r={stats.remaining};t={wait}',
        },
    )


def rate_limits_of(app: Flask | None = None) -> RateLimits:
    """The app's rate limits."""
    found: RateLimits = (app if app is not None else current_app).extensions[RATE_LIMITS_KEY]
    return found


async def _open(app: Flask) -> AsyncIterator[None]:
    limits = rate_limits_of(app)
    storage = _storage(limits.config.storage)
    strategy = (
        MovingWindowRateLimiter
        if limits.config.strategy == "moving-window"
        else FixedWindowRateLimiter
    )
    limits.limiter = strategy(storage)
    try:
        yield
    finally:
        limits.limiter = None
        await _close(storage)


async def _close(storage: Storage) -> None:
    if isinstance(storage, MemoryStorage):
        timer = storage.timer
        if timer is not None and not timer.done():
            timer.cancel()
            await asyncio.gather(timer, return_exceptions=True)
    elif isinstance(storage, RedisStorage):
        client = getattr(storage.bridge, "storage", None)
        if client is not None:
            await client.aclose()


def install_rate_limits(
    app: BridgeFlask, gateway: GatewayConfig, endpoint_names: Sequence[tuple[str, EndpointConfig]]
) -> Callable[[], Awaitable[Response | None]] | None:
    """Set up each caller's limits per route; return the check to run once auth knew the caller.

    None when nothing is limited. The check is run by auth's hook
    (``install_auth(then=...)``): one async hook, not two.
    """
    limits = RateLimits(gateway, endpoint_names)
    app.extensions[RATE_LIMITS_KEY] = limits
    if not limits.active:
        return None
    app.while_serving(_open)
    return _check
