"""Answers the bridge gives without running the app: shutting down, ambiguous framing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


_UNAVAILABLE_BODY = json.dumps(
    {
        "type": "about:blank",
        "title": "Service Unavailable",
        "status": 503,
        "detail": "The server is shutting down.",
    }
).encode()


_AMBIGUOUS_FRAMING_BODY = json.dumps(
    {
        "type": "about:blank",
        "title": "Bad Request",
        "status": 400,
        "detail": "Content-Length and Transfer-Encoding together: the body's length is ambiguous.",
    }
).encode()


async def answer_unavailable(receive: Receive, send: Send) -> None:
    """Answer 503 problem+json without running the app, and close the connection."""
    # Another instance, or this one restarted, can take it.
    await _answer_and_close(receive, send, 503, _UNAVAILABLE_BODY, [(b"retry-after", b"1")])


def ambiguous_framing(scope: Message) -> bool:
    """Tell whether a request has both Content-Length and Transfer-Encoding.

    RFC 9112 6.1: such a request may be an attempt at request smuggling; the
    server may refuse it and must close the connection after answering. An
    app reading the body by one framing while a proxy behind it trusts the
    other would pass a different request on (Hypercorn/h11 accept it, with
    Transfer-Encoding winning).
    """
    names = {name.lower() for name, _ in scope.get("headers", ())}
    return b"content-length" in names and b"transfer-encoding" in names


async def answer_ambiguous_framing(receive: Receive, send: Send) -> None:
    """Answer 400 problem+json without running the app, and close the connection."""
    await _answer_and_close(receive, send, 400, _AMBIGUOUS_FRAMING_BODY, [])


async def _answer_and_close(
    receive: Receive, send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]]
) -> None:
    # Take the request body in meanwhile: Hypercorn stops reading once its
    # queue of body chunks is full, and would then never send the answer.
    drain = asyncio.get_running_loop().create_task(_drain(receive))
    try:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
    finally:
        drain.cancel()


async def _drain(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
