"""A view, hook or body raising SystemExit or KeyboardInterrupt fails its request, not the server.

Flask lets those through (they are not Exceptions); through the bridge they
would reach the event loop and stop every request of the worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from flask import Response, request

from fanout.bridge import ASGIBridge, BridgeFlask
from tests.processes import ROOT, free_port, hypercorn_command, until_ready
from tests.serving import hypercorn_serving
from tests.worker_processes import HELD_APP


def _app() -> BridgeFlask:
    app = BridgeFlask(__name__)

    @app.before_request
    def interrupt() -> None:
        if request.path == "/exit/hook":
            raise KeyboardInterrupt

    @app.teardown_request
    def exit_at_teardown(_: BaseException | None) -> None:
        if request.path == "/exit/teardown":
            raise SystemExit(4)

    @app.get("/exit/async")
    async def exit_async() -> str:
        raise SystemExit(1)

    @app.get("/exit/def")
    def exit_def() -> str:
        raise SystemExit(2)

    @app.get("/exit/hook")
    @app.get("/exit/teardown")
    def hooked() -> str:
        return "not reached"

    def chunks() -> Iterator[bytes]:
        yield b"first chunk"
        raise SystemExit(5)

    @app.get("/exit/stream/async")
    async def exit_in_stream_async() -> Response:
        return Response(chunks())

    @app.get("/exit/stream/def")
    def exit_in_stream_def() -> Response:
        return Response(chunks())

    @app.get("/ok")
    def ok() -> str:
        return "ok"

    return app


@pytest.fixture
async def url() -> AsyncIterator[str]:
    async with hypercorn_serving(ASGIBridge(_app())) as served:
        yield served


@pytest.mark.parametrize("path", ["/exit/async", "/exit/def", "/exit/hook", "/exit/teardown"])
async def test_raised_before_the_answer_it_is_a_500_and_the_next_request_is_served(
    url: str, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{url}{path}") as response:
            assert response.status == 500
            assert response.content_type == "application/problem+json"
            assert (await response.json())["title"] == "Internal Server Error"
        async with client.get(f"{url}/ok") as response:
            assert response.status == 200
    contained = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert contained, "the contained error was not logged with its traceback"
    assert contained[0].exc_info is not None
    assert contained[0].exc_info[0] in (SystemExit, KeyboardInterrupt)


@pytest.mark.parametrize("path", ["/exit/stream/async", "/exit/stream/def"])
async def test_raised_while_the_body_streams_the_connection_drops_and_the_next_is_served(
    url: str, path: str
) -> None:
    async with aiohttp.ClientSession() as client:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with client.get(f"{url}{path}") as response:
                assert response.status == 200
                await response.read()
        async with client.get(f"{url}/ok") as response:
            assert response.status == 200


@pytest.mark.timeout(90)
async def test_under_a_real_hypercorn_process_system_exit_is_a_500_and_the_server_lives_on() -> (
    None
):
    port = free_port()
    # One process (hypercorn.toml's workers = 0): the one that must survive.
    process = await asyncio.create_subprocess_exec(
        *hypercorn_command(f"127.0.0.1:{port}", application=HELD_APP),
        cwd=ROOT,
        env={**os.environ, "FANOUT_JOB_STORE": "memory://"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert await until_ready(url, process)
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{url}/test/exit") as response:
                assert response.status == 500
            for _ in range(3):
                async with client.get(f"{url}/test/pid") as response:
                    assert response.status == 200
                    assert (await response.json())["pid"] == process.pid
        assert process.returncode is None
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()
