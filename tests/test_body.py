"""RequestBody: the request body read from ASGI receive, in a bridge greenlet."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge
from werkzeug.wsgi import LimitedStream

from fanout.bridge.body import RequestBody
from fanout.bridge.greenlets import run_in_greenlet


def _receiver(chunks: list[bytes], then_disconnect: bool = False) -> Any:
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": chunk, "more_body": n < len(chunks) - 1}
        for n, chunk in enumerate(chunks)
    ]
    if then_disconnect:
        messages[-1]["more_body"] = True
        messages.append({"type": "http.disconnect"})
    taken: list[int] = []

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0)
        taken.append(1)
        return messages.pop(0)

    receive.taken = taken  # type: ignore[attr-defined]
    return receive


async def test_read_all_sizes_and_lines() -> None:
    body = RequestBody(_receiver([b"ab\ncd", b"e\nf", b"g"]), limit=None)

    def work() -> list[bytes]:
        return [body.read(1), body.readline(), body.read(2), body.readline(), body.read()]

    assert await run_in_greenlet(work) == [b"a", b"b\n", b"cd", b"e\n", b"fg"]
    assert body.complete and body.received == 9


async def test_reads_only_as_much_as_asked() -> None:
    receive = _receiver([b"x" * 10] * 5)
    body = RequestBody(receive, limit=None)
    assert await run_in_greenlet(body.read, 15) == b"x" * 15
    assert len(receive.taken) == 2


class _GrowsWhileSliced(bytearray):
    """A buffer the pump appends to right after a reader copied from it.

    What a pump on the loop thread may do between a def view's copy and its
    delete in its worker thread; here it happens every time.
    """

    def __getitem__(self, index: Any) -> Any:
        taken = super().__getitem__(index)
        if isinstance(index, slice):
            self.extend(b"+" * 3)
        return taken


async def test_bytes_arriving_during_a_read_are_kept_for_the_next() -> None:
    body = RequestBody(_receiver([b"abcd"]), limit=None)

    def work() -> list[bytes]:
        first = body.read(2)  # takes the whole (only) chunk in
        body._buffer = _GrowsWhileSliced(body._buffer)
        return [first, body.read(10), bytes(body._buffer)]  # more asked than there is

    assert await run_in_greenlet(work) == [b"ab", b"cd", b"+++"]


async def test_over_the_limit_raises_413_before_taking_in_the_rest() -> None:
    receive = _receiver([b"x" * 40] * 100)
    body = RequestBody(receive, limit=100)
    with pytest.raises(RequestEntityTooLarge):
        await run_in_greenlet(body.read)
    assert len(receive.taken) == 3


async def test_a_body_of_exactly_the_limit_is_accepted() -> None:
    body = RequestBody(_receiver([b"x" * 50, b"x" * 50, b""]), limit=100)
    assert await run_in_greenlet(body.read) == b"x" * 100


async def test_a_reader_stopping_at_the_limit_still_sees_the_overflow() -> None:
    # Werkzeug's LimitedStream never reads past the limit; the body must not
    # let it return a silently truncated body.
    body = RequestBody(_receiver([b"x" * 60, b"x" * 60]), limit=100)
    limited = LimitedStream(body, 100, is_max=True)  # type: ignore[arg-type]
    with pytest.raises(RequestEntityTooLarge):
        await run_in_greenlet(limited.read)


async def test_disconnect_while_reading_raises_client_disconnected() -> None:
    body = RequestBody(_receiver([b"abc"], then_disconnect=True), limit=None)
    with pytest.raises(ClientDisconnected):
        await run_in_greenlet(body.read)


async def test_the_pump_feeds_the_reader_and_reports_a_disconnect() -> None:
    body = RequestBody(_receiver([b"a" * 10, b"b" * 10], then_disconnect=True), limit=None)
    pump = asyncio.create_task(body.pump())

    def work() -> bytes:
        return body.read(20)

    assert await run_in_greenlet(work) == b"a" * 10 + b"b" * 10
    await asyncio.wait_for(pump, timeout=5)
    assert body.disconnected


async def test_a_pump_started_during_a_direct_read_waits_for_it_never_two_receivers() -> None:
    messages = [
        {"type": "http.request", "body": b"a" * 10, "more_body": True},
        {"type": "http.request", "body": b"b" * 10, "more_body": False},
    ]
    release, gone = asyncio.Event(), asyncio.Event()
    receiving: list[int] = []
    first_call = asyncio.Event()
    peak = 0

    async def receive() -> dict[str, Any]:
        nonlocal peak
        receiving.append(1)
        first_call.set()
        peak = max(peak, len(receiving))
        try:
            await release.wait()
            if messages:
                return messages.pop(0)
            await gone.wait()
            return {"type": "http.disconnect"}
        finally:
            receiving.pop()

    body = RequestBody(receive, limit=None)
    reader = asyncio.create_task(run_in_greenlet(body.read))
    await first_call.wait()  # the reader now awaits receive itself
    pump = asyncio.create_task(body.pump())
    await asyncio.sleep(0.01)
    release.set()
    assert await asyncio.wait_for(reader, timeout=5) == b"a" * 10 + b"b" * 10
    gone.set()
    await asyncio.wait_for(pump, timeout=5)  # it heard the disconnect
    assert peak == 1


async def test_a_read_after_the_pump_was_stopped_fails_instead_of_waiting_forever() -> None:
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await never.wait()
        raise AssertionError("unreachable")

    body = RequestBody(receive, limit=None)
    pump = asyncio.create_task(body.pump())
    await asyncio.sleep(0)
    pump.cancel()  # what the bridge does once the response is out
    with pytest.raises(asyncio.CancelledError):
        await pump
    with pytest.raises(ClientDisconnected):
        await asyncio.wait_for(run_in_greenlet(body.read), timeout=5)
