"""The runtime foundation through the real stack: Hypercorn, the bridge, Flask."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from app import create_app
from fanout.bridge import ASGIBridge, serving_state
from tests.conftest import Served
from tests.probe_views import mount_probes
from tests.serving import hypercorn_serving, serve_probes
from tests.upstream import FakeUpstream


async def test_task_created_in_a_view_outlives_the_request(served: Served) -> None:
    spawn = {"value": "v1", "pause": 1.0}
    async with served.client.post("/probe/spawn/k1", json=spawn) as response:
        assert response.status == 202
    # Right after the response the task has not finished yet...
    async with served.client.get("/probe/result/k1") as response:
        assert response.status == 404
    # ...but it goes on running on the server loop and a later request sees it.
    for _ in range(500):
        async with served.client.get("/probe/result/k1") as response:
            if response.status == 200:
                assert await response.json() == {"result": "v1 via /probe/spawn/k1"}
                return
        await asyncio.sleep(0.02)
    raise AssertionError("the spawned task never recorded its result")


async def test_100_concurrent_requests_to_a_200ms_upstream_overlap(
    served: Served, upstream: FakeUpstream
) -> None:
    async def one() -> int:
        async with served.client.get("/probe/upstream?ms=200") as response:
            await response.read()
            return response.status

    started = time.monotonic()
    statuses = await asyncio.gather(*(one() for _ in range(100)))
    elapsed = time.monotonic() - started
    assert statuses == [200] * 100
    # Serially this is 20 s; overlapped it is a few hundred ms.
    assert elapsed < 5.0, elapsed
    # Overlapped, not one by one (how many at once is up to a loaded machine).
    assert upstream.peak_in_flight >= 20


async def test_1000_concurrent_requests_are_all_served(
    served: Served, upstream: FakeUpstream
) -> None:
    async def one() -> int:
        # 1,000 calls queue for the session's 256 connections: a deadline
        # that a loaded machine cannot run out.
        async with served.client.get("/probe/upstream?ms=200&deadline=60") as response:
            body = await response.json()
            assert body["ms"] == 200, body
            return response.status

    statuses = await asyncio.gather(*(one() for _ in range(1000)))
    assert statuses == [200] * 1000
    assert upstream.requests == 1000
    # Far more in flight at once than any thread pool of the default size.
    assert upstream.peak_in_flight > 100


async def test_blocking_sync_view_does_not_delay_async_views(served: Served) -> None:
    finished: list[str] = []

    async def sleepy() -> None:
        async with served.client.get("/probe/sleepy?seconds=0.5") as response:
            assert response.status == 200
        finished.append("sleepy")

    async def quick() -> None:
        async with served.client.get("/probe/quick") as response:
            assert response.status == 200
        finished.append("quick")

    sleeping = asyncio.create_task(sleepy())
    # The server says the def view is asleep before any async request is sent.
    await _until(lambda: "sleepy started" in served.probes.events)
    await asyncio.gather(*(quick() for _ in range(20)))
    await sleeping
    # Every async request was answered while the def view was still asleep.
    assert finished == ["quick"] * 20 + ["sleepy"]
    assert served.probes.events[0] == "sleepy started"
    assert served.probes.events[-1] == "sleepy finished"


async def test_request_g_and_app_context_stay_intact_under_300_concurrent_requests(
    served: Served,
) -> None:
    async def one(n: int) -> None:
        body = {"tag": f"t{n}", "payload": "x" * (n % 17), "pause": (n % 7) / 100}
        async with served.client.post(
            "/probe/echo", json=body, headers={"X-Probe": f"h{n}"}
        ) as response:
            assert response.status == 200
            answer = await response.json()
        assert answer == {
            "body": body,
            "tag": f"t{n}",
            "header": f"h{n}",
            "app": served.app.name,
            "inner": f"t{n}",
        }

    await asyncio.gather(*(one(n) for n in range(300)))


async def test_upstream_connections_are_reused(served: Served, upstream: FakeUpstream) -> None:
    for _ in range(200):
        async with served.client.get("/probe/upstream?ms=0") as response:
            assert response.status == 200
            await response.read()
    assert upstream.requests == 200
    assert upstream.accepted <= 3, upstream.accepted


async def test_request_id_is_sent_upstream_and_returned(
    served: Served, upstream: FakeUpstream
) -> None:
    async with served.client.get(
        "/probe/upstream", headers={"X-Request-ID": "abc-123"}
    ) as response:
        assert response.headers["X-Request-ID"] == "abc-123"
    async with served.client.get(
        "/probe/upstream", headers={"X-Request-ID": "bad id\u00e9"}
    ) as response:
        generated = response.headers["X-Request-ID"]
    assert generated != "bad id\u00e9" and len(generated) == 32
    assert upstream.request_ids == ["abc-123", generated]


async def test_plain_def_view_runs_in_the_pool_and_can_await_on_the_server_loop(
    served: Served,
) -> None:
    async with served.client.get("/probe/sync-calls-async") as response:
        assert response.status == 200
        assert await response.json() == {"answer": "/probe/sync-calls-async on the server loop"}


async def test_class_based_views_run_async_methods_on_the_loop_and_sync_ones_in_the_pool(
    served: Served,
) -> None:
    async with served.client.get("/probe/counter") as response:
        assert await response.json() == {"method": "get", "thread": "loop"}
    async with served.client.post("/probe/counter") as response:
        assert await response.json() == {"method": "post", "thread": "pool"}


async def test_generator_response_reaches_the_client_chunk_by_chunk(served: Served) -> None:
    arrivals: list[tuple[float, bytes]] = []
    async with served.client.get("/probe/stream") as response:
        assert response.status == 200
        assert "content-length" not in response.headers
        async for chunk in response.content.iter_any():
            arrivals.append((time.monotonic(), chunk))
    body = b"".join(chunk for _, chunk in arrivals)
    assert body == b"".join(f"chunk {n} of /probe/stream\n".encode() for n in range(3))
    # The first chunk arrived before the generator had produced the last one.
    assert arrivals[-1][0] - arrivals[0][0] > 0.4


async def test_async_generator_response_is_streamed(served: Served) -> None:
    async with served.client.get("/probe/async-stream") as response:
        assert response.status == 200
        assert await response.text() == "".join(f"async chunk {n}\n" for n in range(3))


async def test_client_disconnect_cancels_the_view_coroutine(served: Served) -> None:
    host, port = served.url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /probe/hang HTTP/1.1\r\nHost: t\r\n\r\n")
    await writer.drain()
    for _ in range(2000):  # polls: generous budgets, the machine is shared
        if served.probes.events:
            break
        await asyncio.sleep(0.01)
    assert served.probes.events == ["hang started"]
    writer.close()
    await writer.wait_closed()
    for _ in range(3000):
        if served.probes.cancelled:
            break
        await asyncio.sleep(0.01)
    assert served.probes.cancelled == ["/probe/hang"]


async def test_body_over_the_limit_gets_413_problem_json(served: Served) -> None:
    limit = served.app.config["MAX_CONTENT_LENGTH"]
    async with served.client.post("/probe/body-size", data=io.BytesIO(b"x" * limit)) as response:
        assert response.status == 200
        assert await response.json() == {"size": limit}
    # Declared too large: refused from the Content-Length alone, before any of
    # the body is sent, whichever route it is for.
    for path in ("/probe/body-size", "/probe/upstream", "/healthz"):
        head, body = await _raw_exchange(
            served.url, f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {limit + 1}\r\n\r\n"
        )
        assert head.startswith("HTTP/1.1 413"), (path, head)
        assert "content-type: application/problem+json" in head.lower()
        problem = json.loads(body)
        assert problem["status"] == 413 and problem["title"] == "Request Entity Too Large"


async def test_with_the_early_413_off_only_a_route_that_reads_the_body_refuses_it(
    upstream: FakeUpstream,
) -> None:
    # Plain Flask's rule: the limit applies when the body is read.
    app = mount_probes(create_app({"REFUSE_OVERSIZED_BODY_EARLY": False}), upstream.url)
    limit = app.config["MAX_CONTENT_LENGTH"]
    too_big = b"x" * (limit + 1)
    async with hypercorn_serving(ASGIBridge(app)) as url:
        head, _ = await _raw_exchange(
            url,
            f"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: {len(too_big)}\r\n\r\n",
            too_big,
        )
        # Its own answer (GET only), not 413: nothing read the body.
        assert head.startswith("HTTP/1.1 405"), head
        head, body = await _raw_exchange(
            url,
            f"POST /probe/body-size HTTP/1.1\r\nHost: t\r\nContent-Length: {len(too_big)}\r\n\r\n",
            too_big,
        )
        assert head.startswith("HTTP/1.1 413"), head
        assert json.loads(body)["status"] == 413


async def _raw_exchange(url: str, request_head: str, body: bytes = b"") -> tuple[str, bytes]:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request_head.encode() + body)
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    length = next(
        int(line.split(":", 1)[1])
        for line in head.split("\r\n")
        if line.lower().startswith("content-length:")
    )
    body = await reader.readexactly(length)
    writer.close()
    await writer.wait_closed()
    return head, body


async def test_chunked_body_over_the_limit_is_refused_before_it_is_all_read(
    upstream: FakeUpstream,
) -> None:
    app = mount_probes(create_app(), upstream.url)
    limit = app.config["MAX_CONTENT_LENGTH"]
    taken_in = 0  # body bytes the app took from Hypercorn

    async def counting(scope: dict[str, Any], receive: Any, send: Any) -> None:
        async def counted() -> dict[str, Any]:
            nonlocal taken_in
            message: dict[str, Any] = await receive()
            taken_in += len(message.get("body", b""))
            return message

        await ASGIBridge(app)(scope, counted, send)

    sent = 0

    async def endless() -> object:
        nonlocal sent
        chunk = b"y" * 65536
        while sent < limit * 50:
            sent += len(chunk)
            yield chunk

    async with (
        hypercorn_serving(counting) as url,
        aiohttp.ClientSession(url) as client,
        client.post("/probe/body-size", data=endless()) as response,
    ):
        assert response.status == 413
        assert response.content_type == "application/problem+json"
    # The app stopped taking the body in just past the limit (the reader's
    # 413, plus what the pump had buffered ahead: about 1.2x here)...
    assert limit < taken_in < 2 * limit, taken_in
    # ...and the client could not push the 50 MiB stream: it got no further
    # than the sockets' buffers hold (about 5.4x the limit on loopback here).
    assert sent < limit * 10, sent


async def test_unexpected_error_is_a_problem_without_internals(served: Served) -> None:
    async with served.client.get("/probe/boom") as response:
        assert response.status == 500
        assert response.content_type == "application/problem+json"
        text = await response.text()
    assert "secret internal detail" not in text and "Traceback" not in text
    assert json.loads(text)["status"] == 500


async def test_unknown_route_and_wrong_method_are_problem_json(served: Served) -> None:
    async with served.client.get("/no/such/route") as response:
        assert response.status == 404
        assert response.content_type == "application/problem+json"
    async with served.client.delete("/healthz") as response:
        assert response.status == 405
        assert response.content_type == "application/problem+json"
        assert "GET" in response.headers["Allow"]


async def test_head_request_has_headers_and_no_body(served: Served) -> None:
    async with served.client.head("/healthz") as response:
        assert response.status == 200
        assert int(response.headers["Content-Length"]) > 0
        assert await response.read() == b""


async def test_readyz_is_ready_while_served(served: Served) -> None:
    async with served.client.get("/readyz") as response:
        assert response.status == 200
        assert (await response.json())["checks"] == {
            "lifespan": True,
            "http_session": True,
            "job_store": True,
        }


async def test_server_is_usable_by_a_plain_http_client_in_parallel(served: Served) -> None:
    # Two different client libraries' connections interleaving on one server.
    async with aiohttp.ClientSession() as other, other.get(f"{served.url}/healthz") as response:
        assert response.status == 200


@pytest.mark.parametrize("chunks", [15, 16])  # 16 x 64 KiB is exactly the limit
async def test_a_large_body_read_after_the_watcher_started_arrives_whole(
    served: Served, chunks: int
) -> None:
    chunk = b"b" * 65536
    framed = b"".join([f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"] * chunks) + b"0\r\n\r\n"
    head, body = await asyncio.wait_for(
        _raw_exchange(
            served.url,
            "POST /probe/late-body-size HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
            framed,
        ),
        timeout=10,
    )
    assert head.startswith("HTTP/1.1 200"), head
    assert json.loads(body) == {"size": chunks * 65536}


async def test_a_plain_def_view_can_read_the_body(served: Served) -> None:
    async with served.client.post("/probe/sync-body-size", data=b"x" * 300_000) as response:
        assert response.status == 200
        assert await response.json() == {"size": 300_000}


async def test_a_background_view_answers_202_and_its_response_is_replayed(served: Served) -> None:
    async with served.client.post(
        "/probe/report/2026", json={"region": "eu"}, headers={"X-Request-ID": "rep-1"}
    ) as response:
        assert response.status == 202
        location = response.headers["Location"]
        job = await response.json()
    assert job["kind"] == "view:probe.report"
    async with served.client.get(f"{location}?wait=10") as response:
        final = await response.json()
    assert final["status"] == "succeeded"
    assert final["progress"] == {"done": 3, "total": 3, "message": "step 3"}
    async with served.client.get(f"{location}/result") as response:
        assert response.status == 201
        assert await response.json() == {
            "year": 2026,
            "body": {"region": "eu"},
            "request_id": "rep-1",
        }
    async with served.client.post("/probe/report/1999", json={}) as response:
        location = response.headers["Location"]
    async with served.client.get(f"{location}?wait=10") as response:
        assert (await response.json())["status"] == "succeeded"
    async with served.client.get(f"{location}/result") as response:
        # The view's own error answer, replayed as it would have been given.
        assert response.status == 404
        assert (await response.json())["detail"] == "No report before 2000."


async def test_a_plain_def_view_reads_a_large_body_in_small_reads_with_the_pump_running(
    upstream: FakeUpstream,
) -> None:
    # The view reads in a worker thread while the pump, on the loop, feeds the
    # body under backpressure: each read must wake the pump thread-safely. In
    # debug mode the loop raises on any call from another thread.
    asyncio.get_running_loop().set_debug(True)
    size = 2 * 1024 * 1024 + 123
    config = {"MAX_CONTENT_LENGTH": 4 * 1024 * 1024}
    async with (
        serve_probes(upstream.url, config) as (url, _),
        # Without the fix the pump misses its wake-up and the read never ends.
        aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(total=20)) as client,
    ):
        for _ in range(3):
            async with client.post(
                "/probe/sync-chunked-read", data=io.BytesIO(b"z" * size)
            ) as response:
                assert response.status == 200, await response.text()
                answer = await response.json()
            assert answer == {"size": size, "reads": size // 65536 + 1}


async def test_a_def_views_blocking_generator_does_not_stall_async_views(served: Served) -> None:
    order: list[str] = []
    first_chunk = asyncio.Event()

    async def stream() -> None:
        # Four chunks, each but the first after a 0.3 s time.sleep() in the generator.
        async with served.client.get("/probe/blocking-stream?chunks=4&seconds=0.3") as response:
            assert response.status == 200
            assert await response.content.readline() == b"blocking chunk 0\n"
            first_chunk.set()
            rest = await response.read()
        assert rest == b"".join(f"blocking chunk {n}\n".encode() for n in range(1, 4))
        order.append("stream finished")

    async def quick(n: int) -> None:
        await first_chunk.wait()
        async with served.client.get("/probe/quick") as response:
            assert response.status == 200
        order.append(f"quick {n}")

    await asyncio.gather(stream(), *(quick(n) for n in range(10)))
    # Every async request was answered while the generator was still producing.
    assert order[-1] == "stream finished" and len(order) == 11, order
    # On the loop thread no async view could run while the generator slept.
    assert "quick during a sleep" in served.probes.events, served.probes.events


async def test_a_def_views_generator_cut_off_by_the_client_is_closed_in_the_pool(
    served: Served,
) -> None:
    host, port = served.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /probe/blocking-stream?chunks=100&seconds=0.3 HTTP/1.1\r\nHost: t\r\n\r\n")
    await writer.drain()
    await reader.readuntil(b"blocking chunk 0\n")
    writer.close()  # mid-stream, while the generator sleeps in its thread
    await writer.wait_closed()
    await _until(lambda: any("closed" in event for event in served.probes.events))
    # Closed once its running chunk was done, in the thread, not on the loop.
    assert [e for e in served.probes.events if "closed" in e] == [
        "blocking stream closed in the pool"
    ]
    state = serving_state(served.app)
    assert state is not None
    await _until(lambda: state.sync_running == 0)


async def test_async_work_closing_a_streamed_response_is_not_cancelled(served: Served) -> None:
    async with served.client.get("/probe/close-awaits") as response:
        assert await response.text() == "one\ntwo\n"
    # Hypercorn says http.disconnect as soon as the response is out: that
    # must not cancel the request while its iterable is still being closed.
    for _ in range(1000):
        if served.probes.events:
            break
        await asyncio.sleep(0.01)
    assert served.probes.events == ["close finished"]


async def test_a_requests_own_max_content_length_bounds_its_body(served: Served) -> None:
    limit = served.app.config["MAX_CONTENT_LENGTH"]
    big = b"r" * (limit + limit // 2)

    async def chunked(data: bytes) -> object:
        for start in range(0, len(data), 65536):
            yield data[start : start + 65536]

    # Raised for this request (Flask 3.1 request.max_content_length) above the app's limit.
    raised = f"/probe/own-limit-body-size?limit={2 * limit}"
    async with served.client.post(raised, data=io.BytesIO(big)) as response:
        assert response.status == 200, await response.text()
        assert await response.json() == {"size": len(big)}
    async with served.client.post(raised, data=chunked(big)) as response:
        assert response.status == 200, await response.text()
        assert await response.json() == {"size": len(big)}
    # Lowered for this request: a small body over it is refused.
    lowered = "/probe/own-limit-body-size?limit=1000"
    async with served.client.post(lowered, data=chunked(b"s" * 5000)) as response:
        assert response.status == 413
    async with served.client.post(lowered, data=b"s" * 1000) as response:
        assert await response.json() == {"size": 1000}


async def test_a_cancelled_def_view_counts_as_running_until_its_thread_is_done(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fanout.bridge.http")
    state = serving_state(served.app)
    assert state is not None
    host, port = served.url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /probe/sync-wait HTTP/1.1\r\nHost: t\r\n\r\n")
    await writer.drain()
    await _until(lambda: served.probes.events == ["sync-wait started"])
    writer.close()  # the client goes away: its request is cancelled
    await writer.wait_closed()
    await _until(lambda: "client disconnected" in caplog.text)
    # The request gave up on the view, but the view still holds its thread.
    assert state.sync_running == 1
    served.probes.release.set()
    await _until(lambda: state.sync_running == 0)
    assert served.probes.events == ["sync-wait started", "sync-wait finished"]


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(3000):  # generous: the machine is shared
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never came true")


async def test_the_pool_size_is_the_sync_threads_setting(upstream: FakeUpstream) -> None:
    async with (
        serve_probes(upstream.url, {"SYNC_THREADS": 2}) as (url, app),
        aiohttp.ClientSession(url) as client,
    ):
        state = serving_state(app)
        assert state is not None
        assert state.pool._max_workers == 2
        probes = app.extensions["tests.probe_state"]

        async def occupy() -> str:
            async with client.get("/probe/occupy") as response:
                assert response.status == 200
                answer: str = (await response.json())["thread"]
                return answer

        views = [asyncio.create_task(occupy()) for _ in range(3)]
        # All three views handed to the pool, two of them blocked in it...
        await _until(lambda: state.sync_running == 3 and probes.occupying >= 2)
        # ...and a moment for a third thread to start, were there one.
        await asyncio.sleep(0.2)
        probes.release.set()
        threads = await asyncio.gather(*views)
    assert probes.occupying_peak == 2
    assert len(set(threads)) == 2
