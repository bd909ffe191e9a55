"""The deadline of the work being done (a request, a job), shared by every call it makes.

A context variable holding an absolute ``loop.time()``: set with
``deadline(seconds)`` (relative seconds, never a loop time), it bounds every
upstream call made inside, and tasks started inside inherit it. Nested
deadlines only ever shorten it.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
from collections.abc import Iterator
from contextlib import contextmanager

#: The loop time by which the current work must be done (None: no deadline).
DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "fanout.deadline", default=None
)


def current_deadline() -> float | None:
    """The loop time the current work must end by, or None."""
    return DEADLINE.get()


def remaining() -> float | None:
    """Seconds left before the current deadline (never negative), or None without one."""
    until = DEADLINE.get()
    if until is None:
        return None
    return max(0.0, until - asyncio.get_running_loop().time())


def check_seconds(seconds: float, what: str = "timeout") -> float:
    """Return ``seconds`` if it is a positive finite number, else raise ValueError."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"{what} must be a number of seconds, got {type(seconds).__name__}")
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{what} must be a positive number of seconds, got {seconds!r}")
    return float(seconds)


@contextmanager
def deadline(seconds: float | None) -> Iterator[float | None]:
    """Bound everything inside to ``seconds`` from now (or less, if an outer deadline is sooner).

    Yields the deadline in force as a loop time. ``None`` adds no bound
    (the outer deadline, if any, stays). Must be entered on a running loop.
    """
    outer = DEADLINE.get()
    if seconds is None:
        yield outer
        return
    until = asyncio.get_running_loop().time() + check_seconds(seconds)
    if outer is not None:
        until = min(until, outer)
    token = DEADLINE.set(until)
    try:
        yield until
    finally:
        DEADLINE.reset(token)
