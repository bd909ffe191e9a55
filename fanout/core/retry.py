"""When to retry an upstream call, how long to wait, and how many retries to allow."""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable
from email.utils import parsedate_to_datetime

#: Methods retried automatically: safe and idempotent, and carrying no request body.
RETRYABLE_METHODS = frozenset({"GET", "HEAD"})

# Bad gateway, unavailable and gateway timeout are usually transient; 429 asks to come back.
_RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})

# Past this exponent 2.0**attempt overflows a float; the cap applies long before anyway.
_MAX_EXPONENT = 1023


def is_retryable_status(status: int) -> bool:
    """Return whether an upstream answer with this status is worth retrying."""
    return status in _RETRYABLE_STATUSES


#: The statuses whose Retry-After says when to come back (RFC 9110 10.2.3).
RETRY_AFTER_STATUSES = frozenset({429, 503})


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` value asks to wait (delay-seconds or an HTTP-date), or None.

    ``now``: the wall-clock time an HTTP-date is compared with (time.time() if None).
    An unreadable value is None (the usual backoff applies); a past date is 0.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None  # HTTP-dates are GMT; a zone-less one is not one
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(
    attempt: int, *, base: float = 0.05, cap: float = 1.0, rng: random.Random
) -> float:
    """Return the seconds to wait before retry ``attempt`` (0 for the first retry).

    "Full jitter": uniform in [0, min(cap, base * 2**attempt)], which spreads the retries of
    many clients instead of having them retry in lockstep.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    if base < 0 or cap < 0:
        raise ValueError(f"base and cap must be >= 0, got base={base}, cap={cap}")
    ceiling = cap if attempt > _MAX_EXPONENT else min(cap, base * 2.0**attempt)
    return rng.uniform(0.0, ceiling)


class RetryBudget:
    """Limit retries to a share of recent requests, as Envoy's and Finagle's budgets do.

    Over the last ``window`` seconds, retries may number at most
    ``ratio * requests + min_retries_per_second * window``: the ratio keeps retries from
    multiplying the load on a failing upstream, the floor lets a quiet route still retry.
    Counts are kept in one bucket per second, so memory is bounded by the window.
    """

    def __init__(
        self,
        ratio: float = 0.2,
        min_retries_per_second: float = 3.0,
        window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create an empty budget."""
        if ratio < 0 or min_retries_per_second < 0:
            raise ValueError(
                "ratio and min_retries_per_second must be >= 0, "
                f"got {ratio} and {min_retries_per_second}"
            )
        if window <= 0:
            raise ValueError(f"window must be > 0 seconds, got {window}")
        self._ratio = ratio
        self._reserve = min_retries_per_second * window
        self._buckets_in_window = math.ceil(window)
        self._clock = clock
        # [second, requests, retries], oldest first.
        self._buckets: deque[list[int]] = deque()

    def record_request(self) -> None:
        """Count a first try of a request."""
        self._current()[1] += 1

    def try_spend(self) -> bool:
        """Return whether a retry fits in the budget, and if so count it."""
        bucket = self._current()
        requests = sum(b[1] for b in self._buckets)
        retries = sum(b[2] for b in self._buckets)
        if retries + 1 > self._ratio * requests + self._reserve:
            return False
        bucket[2] += 1
        return True

    def _current(self) -> list[int]:
        second = math.floor(self._clock())
        oldest_kept = second - self._buckets_in_window + 1
        while self._buckets and self._buckets[0][0] < oldest_kept:
            self._buckets.popleft()
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0, 0])
        return self._buckets[-1]
