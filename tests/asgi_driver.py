"""Drive an ASGI app's lifespan directly, message by message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

Message = dict[str, Any]


class LifespanDriver:
    """The server's side of the ASGI lifespan protocol."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def _receive(self) -> Message:
        return await self._to_app.get()

    async def _send(self, message: Message) -> None:
        await self._from_app.put(message)

    def start(self) -> None:
        """Start the app's lifespan handler."""
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
        self.task = asyncio.create_task(self._app(scope, self._receive, self._send))

    async def ask(self, message_type: str) -> Message:
        """Send one lifespan message and return the app's answer."""
        await self._to_app.put({"type": message_type})
        return await asyncio.wait_for(self._from_app.get(), timeout=10)


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[LifespanDriver]:
    """Run the app's lifespan around the block (startup asserted complete)."""
    driver = LifespanDriver(app)
    driver.start()
    answer = await driver.ask("lifespan.startup")
    assert answer == {"type": "lifespan.startup.complete"}, answer
    try:
        yield driver
    finally:
        answer = await driver.ask("lifespan.shutdown")
        assert answer == {"type": "lifespan.shutdown.complete"}, answer
        assert driver.task is not None
        await driver.task
