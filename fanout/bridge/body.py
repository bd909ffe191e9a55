"""``wsgi.input`` for a bridged request: reads the body from ASGI ``receive``."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from fanout.bridge.greenlets import in_bridge_greenlet, run_coroutine
from fanout.bridge.serving import wait_on_loop

Receive = Callable[[], Awaitable[dict[str, Any]]]
T = TypeVar("T")

#: How much unread body the pump buffers before it waits for the reader.
PUMP_HIGH_WATER_BYTES = 256 * 1024


class RequestBody(io.RawIOBase):
    """A file-like request body fed chunk by chunk from ASGI ``receive``.

    Every read runs on the server loop, one at a time (an asyncio lock):
    stepped in place from the request's greenlet (no switch unless it
    waits), handed to the loop from any other thread that holds the request
    (a def view's worker, ``asyncio.to_thread``, a thread given the request
    context), so concurrent readers never interleave. Until :meth:`pump`
    starts, each missing chunk is received directly; from then on the pump
    owns ``receive`` (it also hears ``http.disconnect``) and the reader
    waits for what it feeds. Nothing is buffered far beyond what the reader
    asked for, and past ``limit`` bytes a read raises 413 before more is
    taken in.
    """

    def __init__(
        self, receive: Receive, limit: int | None, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        super().__init__()
        self._receive = receive
        self._limit = limit
        #: The server loop, where every read runs.
        self._loop = loop or asyncio.get_running_loop()
        self._lock = asyncio.Lock()
        self._buffer = bytearray()
        self.received = 0
        self.complete = False
        self.disconnected = False
        #: True while the reader itself awaits ``receive`` (the pump must not).
        self.reading = False
        self._discarding = False
        self._overflowed = False
        self._reader_waiting = False
        #: True while a reader awaits ``receive`` directly (before the pump owned it).
        self._receiving = False
        self._fed: asyncio.Event | None = None
        self._drained: asyncio.Event | None = None

    def readable(self) -> bool:
        """Say that the body can be read (io protocol)."""
        return True

    @property
    def limit(self) -> int | None:
        """The most body bytes accepted (None: no limit)."""
        return self._limit

    @limit.setter
    def limit(self, value: int | None) -> None:
        # Flask 3.1 lets a request set its own max_content_length.
        self._limit = value

    def _over_limit(self) -> bool:
        # Once a chunk was dropped for being over the limit, raising the
        # limit cannot bring it back: the body stays refused.
        return self._overflowed or (self._limit is not None and self.received > self._limit)

    @property
    def over_limit(self) -> bool:
        """True once more body arrived than the limit allows."""
        return self._over_limit()

    def _enforce_limit(self) -> None:
        if self._over_limit():
            raise RequestEntityTooLarge(
                f"The request body is larger than the limit of {self._limit} bytes."
            )

    def _accept(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.disconnect":
            self.complete = self.disconnected = True
        elif message["type"] == "http.request":
            chunk: bytes = message.get("body", b"")
            self.received += len(chunk)
            self.complete = not message.get("more_body", False)
            if self._over_limit():
                self._overflowed = True
            elif not self._discarding:
                self._buffer += chunk

    async def _pull(self) -> bool:
        """Take in one more chunk; False once the body is complete."""
        self._check()
        if self.complete:
            return False
        await self._apull()
        self._check()
        return True

    def _check(self) -> None:
        self._enforce_limit()
        if self.disconnected:
            raise ClientDisconnected()

    async def _apull(self) -> None:
        # Pure asyncio: also usable from a task that is not the request's.
        if self._fed is not None:
            await self._wait_for_feed(self.received)
            return
        previously = self.reading
        self.reading = True
        self._receiving = True
        try:
            self._accept(await self._receive())
        finally:
            self.reading = previously
            self._receiving = False
            if self._fed is not None:
                # The pump started meanwhile and waits for this receive to end.
                self._fed.set()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """Yield the body's chunks as they arrive, from any task on the loop.

        For streaming the body onwards (the proxy): raises 413 once the body
        goes over the limit, ClientDisconnected if the client goes away.
        """
        while True:
            async with self._lock:
                self._check()
                if self._buffer:
                    chunk = self._take_buffered()
                elif self.complete:
                    return
                else:
                    await self._apull()
                    continue
            yield chunk

    def _take_buffered(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        self._signal_drained()
        return data

    def _signal_drained(self) -> None:
        # Tell the pump the reader took what was buffered (on the loop thread:
        # every read runs there).
        if self._drained is not None:
            self._drained.set()

    async def _wait_for_feed(self, seen: int) -> None:
        assert self._fed is not None and self._drained is not None
        # A reader waiting for more lifts the pump's high-water mark: it asked
        # for more than is buffered (read(n) with n > the mark, read()).
        self._reader_waiting = True
        self._drained.set()
        try:
            while self.received == seen and not self.complete:
                self._fed.clear()
                await self._fed.wait()
        finally:
            self._reader_waiting = False

    async def pump(self) -> None:
        """Own ``receive`` from now on: feed body chunks, return on disconnect."""
        self._fed, self._drained = asyncio.Event(), asyncio.Event()
        while self._receiving:
            # A reader still awaits receive itself: two receivers would split
            # the body between them, so take over once its chunk is in.
            self._fed.clear()
            await self._fed.wait()
        try:
            await self._feed()
        finally:
            if not self.complete:
                # Stopped early (the response is out): whatever still reads
                # the body must not wait for a pump that is gone.
                self.complete = self.disconnected = True
                self._fed.set()

    async def _feed(self) -> None:
        assert self._fed is not None and self._drained is not None
        while True:
            while (
                not self.complete
                and not self._discarding
                and (
                    self._over_limit()
                    or (len(self._buffer) >= PUMP_HIGH_WATER_BYTES and not self._reader_waiting)
                )
            ):
                # Backpressure: wait until the reader has taken what is buffered.
                self._drained.clear()
                await self._drained.wait()
            message = await self._receive()
            self._accept(message)
            self._fed.set()
            if self.disconnected:
                return

    def discard(self) -> None:
        """Drop what is buffered and what still arrives: the app is done with the body.

        The pump then keeps taking messages in, so the server is never left
        blocked on a full queue of body chunks while the answer is sent.
        """
        self._discarding = True
        self._buffer.clear()
        self._signal_drained()

    async def _take(self, size: int) -> bytes:
        # A reader that stops at exactly the limit (Werkzeug's LimitedStream
        # does) would silently get a truncated body: when the limit is reached
        # and more is announced, look at what follows first (413 if anything).
        while self._limit is not None and self.received >= self._limit and not self.complete:
            await self._pull()
        data = bytes(self._buffer[:size])
        # Delete what was taken, not ``size``: whatever was appended after
        # the copy stays for the next read.
        del self._buffer[: len(data)]
        self._signal_drained()
        return data

    async def _read(self, size: int) -> bytes:
        async with self._lock:
            if size < 0:
                while await self._pull():
                    pass
                return await self._take(len(self._buffer))
            while len(self._buffer) < size and await self._pull():
                pass
            return await self._take(size)

    async def _readline(self, limit: int | None) -> bytes:
        async with self._lock:
            while b"\n" not in self._buffer and (limit is None or len(self._buffer) < limit):
                if not await self._pull():
                    break
            end = self._buffer.find(b"\n") + 1 or len(self._buffer)
            return await self._take(end if limit is None else min(end, limit))

    def _on_loop(self, work: Coroutine[Any, Any, T]) -> T:
        """Run a read on the server loop and wait for it, from whichever thread reads."""
        if in_bridge_greenlet():
            return run_coroutine(work)
        return wait_on_loop(work, self._loop)

    def read(self, size: int | None = -1) -> bytes:
        """Read up to ``size`` bytes (all that is left when ``size`` < 0)."""
        return self._on_loop(self._read(-1 if size is None else size))

    def readall(self) -> bytes:
        """Read the rest of the body."""
        return self.read(-1)

    def readinto(self, target: Any) -> int:
        """Read into a writable buffer (io protocol)."""
        view = memoryview(target).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def readline(self, size: int | None = -1) -> bytes:
        """Read one line, up to ``size`` bytes."""
        limit = size if size is not None and size >= 0 else None
        return self._on_loop(self._readline(limit))

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line
