"""A bounded in-process cache of upstream replies with per-entry lifetimes."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class ResponseCache(Generic[T]):
    """Least-recently-used cache whose entries expire after their own TTL.

    An entry is shared by every reader of its key; each reader may also ask
    for entries no older than its own limit (``max_age``), so one upstream
    answer serves every endpoint asking for that URL, none of them past its
    own ``cache_ttl``.
    """

    def __init__(
        self, max_entries: int = 1024, clock: Callable[[], float] = time.monotonic
    ) -> None:
        # key -> (stored at, expires at, value)
        self._entries: OrderedDict[Hashable, tuple[float, float, T]] = OrderedDict()
        self._max_entries = max_entries
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, max_age: float | None = None) -> T | None:
        """Return the fresh entry for ``key`` stored less than ``max_age`` seconds ago, or None."""
        found = self._entries.get(key)
        if found is None:
            return None
        stored, expires, value = found
        now = self._clock()
        if expires <= now:
            del self._entries[key]
            return None
        if max_age is not None and now - stored >= max_age:
            return None  # too old for this reader; maybe not for others
        self._entries.move_to_end(key)
        return value

    def put(self, key: Hashable, value: T, ttl: float) -> None:
        """Keep ``value`` for ``ttl`` seconds (nothing is kept for ttl <= 0)."""
        if ttl <= 0:
            return
        now = self._clock()
        self._entries[key] = (now, now + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
