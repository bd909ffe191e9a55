"""A user's own blueprint and job kind calling configured upstreams through ``clients``."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from flask import Blueprint, Response, jsonify, request

from clients import UpstreamError, deadline, gather, http_session, remaining, upstream
from clients.safety import blocked_cause
from fanout.jobs.kinds import JobKind
from fanout.jobs.model import StoredResponse
from fanout.jobs.registry import JobBody, JobContext

blueprint = Blueprint("mine", __name__, url_prefix="/mine")


@blueprint.get("/call/<name>")
async def call(name: str) -> Response:
    """GET ``?path=`` on upstream ``name`` (``?timeout=`` seconds, ``?within=`` a deadline)."""
    path = request.args.get("path", "/")
    timeout = float(request.args["timeout"]) if "timeout" in request.args else None
    within = float(request.args["within"]) if "within" in request.args else None
    with deadline(within):
        reply = await upstream(name).get(path, timeout=timeout)
    # Unhandled: an error status becomes the 502 problem, as any UpstreamError.
    return jsonify(status=reply.raise_for_status().status, body=reply.json())


@blueprint.post("/echo/<name>")
async def echo(name: str) -> Response:
    """POST the request's JSON to upstream ``name``; answer what it answered."""
    reply = await upstream(name).post("/echo", json=request.get_json())
    return jsonify(reply.raise_for_status().json())


@blueprint.get("/both")
async def both() -> Response:
    """Call "flaky" and "broken" at once; answer each one's status or error class."""
    results = await gather(
        {"flaky": upstream("flaky").get("/"), "broken": upstream("broken").get("/")}
    )
    return jsonify(
        {
            name: type(result).__name__ if isinstance(result, UpstreamError) else result.status
            for name, result in results.items()
        }
    )


@blueprint.get("/raw")
async def raw() -> Response | tuple[Response, int]:
    """GET ``?url=`` with the raw shared session; 403 if its guard refused the address."""
    try:
        async with http_session().get(request.args["url"]) as response:
            return jsonify(status=response.status)
    except aiohttp.ClientError as exc:
        found = blocked_cause(exc)
        if found is None:
            raise
        return jsonify(refused=found.reason), 403


def _deadline_job(params: Any) -> JobBody:
    async def run(context: JobContext) -> StoredResponse:
        # What the job's upstream calls are bounded by: its time limit.
        await context.progress(0, 1, message=str(remaining()))
        reply = await upstream("slow4").get("/")
        body = json.dumps({"status": reply.status}).encode()
        return StoredResponse(200, (("Content-Type", "application/json"),), body)

    return run


#: A job kind whose time limit (0.5 s) bounds its upstream call.
deadline_kind = JobKind(name="slow-call", prepare=_deadline_job, time_limit=0.5)
