"""A raw asyncio upstream on 127.0.0.1:0 that answers exactly the bytes a test scripts.

aiohttp's own server cannot send what a hostile upstream sends (raw non-ASCII
header bytes, conflicting framing, bad chunks, 1xx answers): these tests need
the bytes on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

#: Answers one connection: given the request head already read, the reader and the writer.
Handler = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class RawUpstream:
    """A listening raw upstream and what it saw."""

    url: str
    #: Each request head received, in order.
    heads: list[bytes] = field(default_factory=list)
    #: Connections open now.
    open_connections: int = 0
    #: Every connection ever accepted.
    connections: int = 0


async def read_head(reader: asyncio.StreamReader) -> bytes:
    """Read one request head (up to the blank line); b"" if the connection ended first."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return b""


def header(head: bytes, name: bytes) -> bytes | None:
    """The first value of header ``name`` in a raw head (case-insensitive), or None."""
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


@asynccontextmanager
async def raw_upstream(handler: Handler) -> AsyncIterator[RawUpstream]:
    """Serve ``handler`` per request (keep-alive while it leaves the connection open)."""
    state = RawUpstream(url="")
    writers: set[asyncio.StreamWriter] = set()
    tasks: set[asyncio.Task[object]] = set()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            tasks.add(task)
        state.connections += 1
        state.open_connections += 1
        try:
            while not writer.is_closing():
                head = await read_head(reader)
                if not head:
                    break
                state.heads.append(head)
                await handler(head, reader, writer)
        except ConnectionError:
            pass  # the gateway dropped the connection: that is what some tests want
        finally:
            state.open_connections -= 1
            writers.discard(writer)
            if task is not None:
                tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    state.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield state
    finally:
        server.close()
        # Handlers that never end (answers that never come) end here.
        for writer in list(writers):
            writer.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
