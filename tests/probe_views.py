"""Views that probe the runtime, mounted on a real Fanout app by the tests."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    g,
    jsonify,
    request,
    stream_with_context,
)
from flask.views import MethodView

import clients
from fanout.bridge import BridgeFlask
from fanout.core.config import UpstreamConfig
from handlers.jobs import background_view, job_progress
from handlers.resources import GATEWAY_CONFIG_KEY, gateway_config

STATE_KEY = "tests.probe_state"

blueprint = Blueprint("probe", __name__, url_prefix="/probe")


@dataclass
class ProbeState:
    """What probe views leave behind for the test to inspect."""

    results: dict[str, str] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    cancelled: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    #: Blocking generators asleep now (set in pool threads, read on the loop).
    blocking_sleeps: int = 0
    #: What /probe/sync-wait blocks its worker thread on until the test sets it.
    release: threading.Event = field(default_factory=threading.Event)
    #: /probe/occupy views running now and at most at once (under ``lock``).
    occupying: int = 0
    occupying_peak: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def probe_state() -> ProbeState:
    """Return the probe state of the current app."""
    state: ProbeState = current_app.extensions[STATE_KEY]
    return state


@blueprint.post("/spawn/<key>")
async def spawn(key: str) -> tuple[Response, int]:
    """Start a task that records a result ``pause`` seconds (default 0.1) after the response."""
    state = probe_state()
    value = request.get_json()["value"]
    pause = float(request.get_json().get("pause", 0.1))

    async def finish_later() -> None:
        await asyncio.sleep(pause)
        # The task still sees the request it was started from.
        state.results[key] = f"{value} via {request.path}"

    task = asyncio.create_task(finish_later())
    state.tasks.add(task)
    task.add_done_callback(state.tasks.discard)
    return jsonify(started=key), 202


@blueprint.get("/result/<key>")
async def result(key: str) -> Response | tuple[Response, int]:
    """Answer the result a spawned task recorded, or 404."""
    found = probe_state().results.get(key)
    if found is None:
        return jsonify(missing=key), 404
    return jsonify(result=found)


@blueprint.get("/upstream")
async def upstream() -> Response:
    """Call the fake upstream (configured as "fake" by mount_probes) over the shared session."""
    reply = await clients.upstream("fake").get(
        f"/delay?ms={request.args.get('ms', '0')}",
        # A test queueing far more calls than the session's connections sets a longer one.
        timeout=float(request.args.get("deadline", "5")),
    )
    return jsonify(reply.json())


@blueprint.before_request
def remember_body_tag() -> None:
    """Keep a per-request value in g before the view (a sync hook, run inline)."""
    if request.is_json:
        g.tag = (request.get_json(silent=True) or {}).get("tag")


@blueprint.post("/echo")
async def echo() -> Response:
    """Yield to other requests, then answer what this request's context holds."""
    body = request.get_json()
    await asyncio.sleep(body.get("pause", 0))
    inner = await _read_context_in_a_task()
    return jsonify(
        body=body,
        tag=g.tag,
        header=request.headers.get("X-Probe"),
        app=current_app.name,
        inner=inner,
    )


async def _read_context_in_a_task() -> Any:
    # A task created in the view inherits the request's context.
    return await asyncio.create_task(_context_reader())


async def _context_reader() -> Any:
    await asyncio.sleep(0)
    return request.get_json()["tag"]


@blueprint.get("/sleepy")
def sleepy() -> Response:
    """Block for ``seconds`` (default 0.5; a plain def view: runs in the thread pool)."""
    seconds = float(request.args.get("seconds", "0.5"))
    events = probe_state().events
    events.append("sleepy started")
    time.sleep(seconds)
    events.append("sleepy finished")
    return jsonify(slept=seconds)


@blueprint.get("/sync-wait")
def sync_wait() -> Response:
    """Block the worker thread until the test sets ``release`` (a plain def view)."""
    state = probe_state()
    state.events.append("sync-wait started")
    released = state.release.wait(timeout=30)
    state.events.append("sync-wait finished")
    return jsonify(released=released)


@blueprint.get("/occupy")
def occupy() -> Response:
    """Hold a worker thread until the test sets ``release``, counting how many do at once."""
    state = probe_state()
    with state.lock:
        state.occupying += 1
        state.occupying_peak = max(state.occupying_peak, state.occupying)
    try:
        state.release.wait(timeout=30)
    finally:
        with state.lock:
            state.occupying -= 1
    return jsonify(thread=threading.current_thread().name)


@blueprint.get("/sync-calls-async")
def sync_calls_async() -> Response:
    """A plain def view (in a worker thread) awaiting async code on the server loop."""

    async def on_loop() -> str:
        await asyncio.sleep(0)
        return f"{request.path} on the server loop"

    g.touched = True
    answer = current_app.ensure_sync(on_loop)()
    return jsonify(answer=answer)


@blueprint.get("/stream")
def stream() -> Response:
    """Stream three chunks, 0.3 s apart, from a def view's generator awaiting on the loop."""

    def chunks() -> Iterator[str]:
        # A def view's body is produced in the pool: ensure_sync waits on the loop.
        pause = current_app.ensure_sync(asyncio.sleep)
        for n in range(3):
            if n:
                pause(0.3)
            yield f"chunk {n} of {request.path}\n"

    return Response(stream_with_context(chunks()), mimetype="text/plain")


@blueprint.get("/blocking-stream")
def blocking_stream() -> Response:
    """Stream ``chunks`` chunks, blocking ``seconds`` in time.sleep() before each but the first."""
    state = probe_state()
    count = int(request.args.get("chunks", "4"))
    seconds = float(request.args.get("seconds", "0.3"))

    def chunks() -> Iterator[str]:
        try:
            for n in range(count):
                if n:
                    state.blocking_sleeps += 1
                    time.sleep(seconds)
                    state.blocking_sleeps -= 1
                yield f"blocking chunk {n}\n"
        finally:
            state.events.append(f"blocking stream closed in the {_thread_kind()}")

    return Response(chunks(), mimetype="text/plain")


@blueprint.get("/quick")
async def quick() -> Response:
    """Answer at once, recording whether a blocking generator was asleep meanwhile."""
    await asyncio.sleep(0)
    state = probe_state()
    state.events.append("quick during a sleep" if state.blocking_sleeps else "quick")
    return jsonify(ok=True)


@blueprint.get("/close-awaits")
async def close_awaits() -> Response:
    """Stream a body whose close (after the response is out) awaits on the loop."""
    state = probe_state()
    await asyncio.sleep(0)  # the app waited: the disconnect watcher runs

    async def finish() -> None:
        try:
            await asyncio.sleep(0.2)
        except asyncio.CancelledError:
            state.events.append("close cancelled")
            raise
        state.events.append("close finished")

    def chunks() -> Iterator[str]:
        yield "one\n"
        yield "two\n"

    response = Response(chunks(), mimetype="text/plain")
    response.call_on_close(current_app.ensure_sync(finish))
    return response


@blueprint.get("/async-stream")
async def async_stream() -> Any:
    """Stream from an async generator returned by an async view."""

    async def chunks() -> Any:
        for n in range(3):
            await asyncio.sleep(0.01)
            yield f"async chunk {n}\n"

    return chunks()


@blueprint.get("/hang")
async def hang() -> Response:
    """Wait for a long time; record it if cancelled (client gone)."""
    state = probe_state()
    state.events.append("hang started")
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        state.cancelled.append(request.path)
        raise
    return jsonify(done=True)


@blueprint.post("/body-size")
async def body_size() -> Response:
    """Read the whole body and answer its size."""
    return jsonify(size=len(request.get_data()))


@blueprint.before_request
def own_body_limit() -> None:
    """Give /probe/own-limit-body-size the body limit its ``limit`` argument names."""
    if request.endpoint == "probe.own_limit_body_size":
        request.max_content_length = int(request.args["limit"])


@blueprint.post("/own-limit-body-size")
async def own_limit_body_size() -> Response:
    """Read the whole body under this request's own limit and answer its size."""
    return jsonify(size=len(request.get_data()))


@blueprint.post("/late-body-size")
async def late_body_size() -> Response:
    """Wait first (the disconnect watcher starts), then read 512 KiB at once, then the rest."""
    await asyncio.sleep(0.05)
    first = request.stream.read(512 * 1024)
    return jsonify(size=len(first) + len(request.stream.read()))


@blueprint.post("/sync-body-size")
def sync_body_size() -> Response:
    """A plain def view (in the thread pool) reading the body."""
    return jsonify(size=len(request.get_data()))


@blueprint.post("/sync-chunked-read")
def sync_chunked_read() -> Response:
    """A plain def view (in the thread pool) reading the body in 64 KiB read() calls."""
    size = reads = 0
    while chunk := request.stream.read(65536):
        size += len(chunk)
        reads += 1
    return jsonify(size=size, reads=reads)


@blueprint.post("/report/<int:year>")
@background_view
async def report(year: int) -> tuple[Response, int]:
    """A background view: runs as a job, sees its request, reports progress."""
    for step in range(3):
        await asyncio.sleep(0.05)
        await job_progress(step + 1, 3, f"step {step + 1}")
    if year < 2000:
        abort(404, description="No report before 2000.")
    return jsonify(year=year, body=request.get_json(), request_id=g.request_id), 201


@blueprint.get("/boom")
async def boom() -> Response:
    """Fail with an unexpected error."""
    raise RuntimeError("secret internal detail")


class Counter(MethodView):
    """A class-based view with an async GET and a sync POST."""

    async def get(self) -> Response:
        await asyncio.sleep(0)
        return jsonify(method="get", thread=_thread_kind())

    def post(self) -> Response:
        return jsonify(method="post", thread=_thread_kind())


def _thread_kind() -> str:
    return "pool" if threading.current_thread().name.startswith("sync-view") else "loop"


blueprint.add_url_rule("/counter", view_func=Counter.as_view("counter"))


def mount_probes(app: BridgeFlask, upstream_url: str = "") -> BridgeFlask:
    """Add the probe views and their state to ``app``."""
    app.config["PROBE_UPSTREAM"] = upstream_url
    if upstream_url:
        # The fake upstream as a configured one (the raw session reaches
        # configured origins only): a long per-try timeout, since tests
        # queue far more calls than the session has connections.
        fake = UpstreamConfig(
            name="fake",
            base_url=upstream_url,
            timeout=60.0,
            # A loaded machine accepts 1,000 connections slowly.
            connect_timeout=30.0,
            max_connections=10_000,
            internal=True,
        )
        config = gateway_config(app)
        app.extensions[GATEWAY_CONFIG_KEY] = dataclasses.replace(
            config, upstreams={**config.upstreams, "fake": fake}
        )
    app.extensions[STATE_KEY] = ProbeState()
    app.register_blueprint(blueprint)
    return app
