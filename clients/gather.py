"""Several named upstream calls at once: each one's reply or error."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from typing import TypeVar

from clients.errors import UpstreamError

K = TypeVar("K")
T = TypeVar("T")


async def gather(calls: Mapping[K, Awaitable[T]]) -> dict[K, T | UpstreamError]:
    """Run the calls concurrently; map each name to its result or its UpstreamError.

    An upstream failure never raises here: it is that name's value, for the
    caller to judge (``isinstance(result, UpstreamError)``). Any other
    exception is a bug: the other calls are cancelled and it is raised.
    Cancelling the gather cancels every call. Results keep ``calls``' order.
    """
    results: dict[K, T | UpstreamError] = {}

    async def run(name: K, call: Awaitable[T]) -> None:
        try:
            results[name] = await call
        except UpstreamError as failed:
            results[name] = failed

    try:
        async with asyncio.TaskGroup() as group:
            for name, call in calls.items():
                group.create_task(run(name, call))
    except BaseExceptionGroup as failed:
        # A bug in one call (not an upstream failure): raise it as itself.
        raise failed.exceptions[0] from None
    return {name: results[name] for name in calls}
