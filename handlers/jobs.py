"""The HTTP face of background jobs: start, poll, wait, stream, cancel, list."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, abort, current_app, g, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from fanout.bridge import iterate_async
from fanout.core.client_json import InvalidJSON, parse_client_json
from fanout.core.identity import current_caller
from fanout.jobs.kinds import InvalidParams
from fanout.jobs.model import JobRecord, JobStatus, StoredResponse, is_job_id
from fanout.jobs.registry import IdempotencyConflict, JobBody, JobContext, QueueFull, RegistryClosed
from fanout.jobs.store import InvalidCursor, StoreUnavailable
from fanout.process.stopping import server_stopping, until_set
from handlers.errors import problem_response
from handlers.resources import job_kinds, job_registry

logger = logging.getLogger(__name__)

blueprint = Blueprint("jobs", __name__)

MAX_WAIT_SECONDS = 60.0
MAX_PAGE = 100
#: What pollers are told to wait between polls, in seconds.
RETRY_AFTER = "1"
#: What clients are told to wait, in seconds, while the job store cannot be reached.
STORE_RETRY_AFTER = "5"


@blueprint.errorhandler(StoreUnavailable)
def _store_unavailable(error: StoreUnavailable) -> Response:
    # One place for every job route: an outage is the server's, and passes.
    # The detail names no store location (a file path, a host); the log does.
    logger.warning("job store unavailable", extra={"cause": str(error)})
    return problem_response(
        503,
        detail="The job store cannot be reached; try again later.",
        headers={"Retry-After": STORE_RETRY_AFTER},
    )


def request_params(body: bytes | None) -> dict[str, str]:
    """The current request as a job's params: a reused Idempotency-Key is told apart by them.

    The body enters as its SHA-256 digest: the same key sent with another
    body is another request (422), and the record stays small.
    """
    params = {"method": request.method, "path": request.full_path.rstrip("?")}
    if body:
        params["body_sha256"] = hashlib.sha256(body).hexdigest()
    return params


def prefers_async() -> bool:
    """Tell whether the request asked to be answered asynchronously (RFC 7240)."""
    prefer = ",".join(request.headers.getlist("Prefer")).lower()
    return any(token.strip().split(";")[0] == "respond-async" for token in prefer.split(","))


def _owner() -> str | None:
    # Jobs belong to their caller: an API key's name, a token's subject, or
    # no one (anonymous: shared by every anonymous caller of an open gateway).
    return current_caller().owner


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return (
        datetime.fromtimestamp(moment, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def resource(record: JobRecord) -> dict[str, Any]:
    """The job resource, as every job route shows it."""
    return {
        "id": record.id,
        "kind": record.kind,
        "status": str(record.status),
        "progress": {
            "done": record.progress.done,
            "total": record.progress.total,
            "message": record.progress.message,
        },
        "created_at": _iso(record.created_at),
        "started_at": _iso(record.started_at),
        "finished_at": _iso(record.finished_at),
        "expires_at": _iso(record.expires_at),
        "result_url": f"/jobs/{record.id}/result",
        "error": record.error,
    }


def _resource_response(record: JobRecord, status: int = 200) -> Response:
    response = Response(json.dumps(resource(record)), status=status, mimetype="application/json")
    if not record.status.final:
        response.headers["Retry-After"] = RETRY_AFTER
    return response


async def start_job(
    kind: str, body: JobBody, *, params: Any = None, time_limit: float | None = None
) -> Response:
    """Start a job from the current request and answer 202 Accepted with its resource."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 255:
        abort(400, description="Idempotency-Key must be 1 to 255 characters.")
    try:
        record = await job_registry().submit(
            kind, body, params=params, owner=_owner(), idempotency_key=key, time_limit=time_limit
        )
    except QueueFull as full:
        return problem_response(
            503, detail=str(full), headers={"Retry-After": str(full.retry_after)}
        )
    except RegistryClosed as exc:
        return problem_response(
            503, detail=f"Jobs cannot be started now: {exc}", headers={"Retry-After": "5"}
        )
    except StoreUnavailable as exc:
        # Also for background views, whose blueprints lack the handler above.
        return _store_unavailable(exc)
    except IdempotencyConflict:
        # As the IETF Idempotency-Key draft asks: a key reused with another
        # request is refused, and the other request's job is not disclosed.
        return problem_response(
            422,
            title="Idempotency-Key Reused",
            detail="This Idempotency-Key was already used for a different request.",
        )
    response = _resource_response(record, status=202)
    response.headers["Location"] = f"/jobs/{record.id}"
    response.headers["Retry-After"] = RETRY_AFTER
    if prefers_async():
        response.headers["Preference-Applied"] = "respond-async"
    return response


def background_view(
    view: Callable[..., Awaitable[ResponseReturnValue]],
) -> Callable[..., Awaitable[Response]]:
    """Run an ``async def`` view as a background job (the @async_api pattern).

    The request answers 202 at once with the job resource and ``Location``;
    the view then runs on the server loop in a copy of its request (body
    read up front), and ``/jobs/<id>/result`` replays its response. Inside,
    ``job_progress()`` reports progress. The view must return a complete
    response (not a stream).
    """

    @functools.wraps(view)
    async def start_view(**view_args: Any) -> Response:
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        body = request.get_data()
        environ = {k: v for k, v in request.environ.items() if k != "asgi.scope"}
        environ.update({"wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body))})
        request_id = g.get("request_id")

        async def run(context: JobContext) -> StoredResponse:
            with app.request_context(environ):
                g.request_id = request_id
                g.job_context = context
                try:
                    response = app.make_response(await view(**view_args))
                except HTTPException as error:
                    response = app.make_response(app.handle_user_exception(error))
                return StoredResponse(
                    response.status_code, tuple(response.headers.items()), response.get_data()
                )

        return await start_job(f"view:{request.endpoint}", run, params=request_params(body))

    return start_view


async def job_progress(done: int, total: int | None = None, message: str = "") -> None:
    """Report progress from inside a background view."""
    context: JobContext = g.job_context
    await context.progress(done, total, message)


async def _visible_job(job_id: str) -> JobRecord:
    # Malformed, unknown, expired and other owners' ids all look the same: 404.
    record = await job_registry().store.get(job_id) if is_job_id(job_id) else None
    if record is None or record.owner != _owner():
        abort(404, description=f"No job {job_id}.")
    return record


@blueprint.post("/jobs/<kind>")
async def start(kind: str) -> Response:
    """Start a job of a kind registered in code, with the JSON body as parameters."""
    found = job_kinds().get(kind)
    if found is None:
        abort(404, description=f"No job kind {kind!r}.")
    params: Any = {}
    # Read, not judged by Content-Length: a chunked body has none.
    if data := request.get_data():
        if not request.is_json:
            # A web page can send a text/plain or form body cross-site with no CORS
            # preflight; demanding JSON keeps such pages from starting jobs.
            abort(415, description="The body must be sent as application/json.")
        try:
            params = parse_client_json(data)
        except InvalidJSON as exc:
            abort(400, description=f"The body must be a JSON document: {exc}.")
    try:
        body = found.prepare(params)
    except InvalidParams as exc:
        abort(400, description=str(exc))
    return await start_job(kind, body, params=params, time_limit=found.time_limit)


@blueprint.get("/jobs/<job_id>")
async def status(job_id: str) -> Response:
    """The job resource; with ?wait=N, held until the job finishes or N seconds pass."""
    record = await _visible_job(job_id)
    wait = request.args.get("wait")
    if wait is not None:
        try:
            seconds = float(wait)
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds <= MAX_WAIT_SECONDS:
            abort(
                400, description=f"wait must be a number of seconds from 0 to {MAX_WAIT_SECONDS:g}."
            )
        async for latest in job_registry().watch(job_id, seconds=seconds):
            record = latest
    return _resource_response(record)


@blueprint.get("/jobs/<job_id>/result")
async def result(job_id: str) -> Response:
    """The job's own answer once finished; 202 while it runs."""
    record = await _visible_job(job_id)
    if not record.status.final:
        response = _resource_response(record, status=202)
        response.headers["Location"] = f"/jobs/{record.id}"
        return response
    if record.status is JobStatus.SUCCEEDED and record.result is not None:
        stored = record.result
        return Response(stored.body, status=stored.status, headers=list(stored.headers))
    problem = dict(record.error or {})
    if record.status in (JobStatus.CANCELLED, JobStatus.INTERRUPTED):
        problem.update(status=409, title=f"Job {record.status}")
        problem.setdefault("detail", f"The job was {record.status}; it has no result.")
    status_code = int(problem.get("status", 500))
    problem.setdefault("type", "about:blank")
    return Response(json.dumps(problem), status=status_code, mimetype="application/problem+json")


#: The last event of a stream the server's stop ended (the job goes on).
SHUTDOWN_EVENT = b'event: shutdown\ndata: {"reason": "the server is stopping"}\n\n'


@blueprint.get("/jobs/<job_id>/events")
async def events(job_id: str) -> Response:
    """Server-sent events: one per change of status or progress, closing after the last.

    When the server begins to stop, the stream ends at once with ``event:
    shutdown`` (the client reconnects, to another worker or instance).
    """
    record = await _visible_job(job_id)
    registry = job_registry()
    stopping = server_stopping()

    async def stream() -> AsyncIterator[bytes]:
        async for latest in until_set(registry.watch(record.id, seconds=24 * 3600), stopping):
            yield f"event: job\ndata: {json.dumps(resource(latest))}\n\n".encode()
        if stopping is not None and stopping.is_set():
            yield SHUTDOWN_EVENT

    response = Response(iterate_async(stream()), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    return response


@blueprint.post("/jobs/<job_id>/cancel")
async def cancel(job_id: str) -> Response:
    """Cancel a pending or running job (409 once finished); answer its resource.

    200 once it has stopped; 202 while the cancel is asked but not yet done
    (its worker has not acted yet, or died and its lease has not lapsed).
    """
    record = await _visible_job(job_id)
    if record.status.final:
        return problem_response(
            409,
            detail=f"Job {job_id} is already {record.status}.",
            status_of_job=str(record.status),
        )
    latest = await job_registry().cancel(record)
    if not latest.status.final:
        response = _resource_response(latest, status=202)
        response.headers["Location"] = f"/jobs/{latest.id}"
        return response
    return _resource_response(latest)


@blueprint.delete("/jobs/<job_id>")
async def forget(job_id: str) -> Response:
    """Cancel the job if needed and forget it."""
    record = await _visible_job(job_id)
    if not record.status.final:
        await job_registry().cancel(record)
    await job_registry().store.delete(job_id)
    return Response(status=204)


@blueprint.get("/jobs")
async def listing() -> Response:
    """The caller's jobs, newest first, paginated with an opaque cursor."""
    status_arg = request.args.get("status")
    if status_arg is not None and status_arg not in {s.value for s in JobStatus}:
        abort(400, description=f"status must be one of {', '.join(s.value for s in JobStatus)}.")
    try:
        limit = int(request.args.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_PAGE:
        abort(400, description=f"limit must be a whole number from 1 to {MAX_PAGE}.")
    try:
        page = await job_registry().store.list_jobs(
            owner=_owner(),
            status=JobStatus(status_arg) if status_arg else None,
            kind=request.args.get("kind") or None,
            limit=limit,
            cursor=request.args.get("cursor") or None,
        )
    except InvalidCursor:
        abort(400, description="cursor is not one this server handed out.")
    body: dict[str, Any] = {"jobs": [resource(record) for record in page.records]}
    body["next_cursor"] = page.next_cursor
    return Response(json.dumps(body), mimetype="application/json")
