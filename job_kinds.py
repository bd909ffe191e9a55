"""The job kinds Fanout ships: ``batch`` calls an upstream once per item."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from flask import Flask

from clients.errors import UpstreamError
from clients.upstream_client import UpstreamClient
from core.paths import expand_path
from jobs.kinds import InvalidParams, JobKind
from jobs.model import StoredResponse
from jobs.registry import JobBody, JobContext
from resources import upstreams

MAX_ITEMS = 1000
MAX_CONCURRENCY = 50


def _batch_params(params: Any) -> tuple[str, str, list[str | int], int]:
    if not isinstance(params, dict):
        raise InvalidParams("the body must be a JSON object")
    unknown = set(params) - {"upstream", "path", "items", "concurrency"}
    if unknown:
        raise InvalidParams(f"unknown parameter(s): {', '.join(sorted(unknown))}")
    upstream, path, items = params.get("upstream"), params.get("path"), params.get("items")
    concurrency = params.get("concurrency", 5)
    if not isinstance(upstream, str):
        raise InvalidParams("upstream must be the name of a configured upstream")
    if not isinstance(path, str) or not path.startswith("/") or "{item}" not in path:
        raise InvalidParams('path must start with "/" and contain {item}')
    if (
        not isinstance(items, list)
        or not 1 <= len(items) <= MAX_ITEMS
        or not all(isinstance(i, str | int) and not isinstance(i, bool) for i in items)
    ):
        raise InvalidParams(f"items must be a list of 1 to {MAX_ITEMS} strings or numbers")
    if (
        not isinstance(concurrency, int)
        or isinstance(concurrency, bool)
        or not 1 <= concurrency <= MAX_CONCURRENCY
    ):
        raise InvalidParams(f"concurrency must be a whole number from 1 to {MAX_CONCURRENCY}")
    return upstream, path, items, concurrency


def _prepare_batch(app: Flask) -> Any:
    def prepare(params: Any) -> JobBody:
        upstream, path, items, concurrency = _batch_params(params)
        client = upstreams(app).get(upstream)
        if client is None:
            raise InvalidParams(f"no upstream named {upstream!r} is configured")
        for item in items:
            try:
                expand_path(path, {"item": item})
            except ValueError as exc:
                raise InvalidParams(f"item {item!r}: {exc}") from None

        async def run(context: JobContext) -> StoredResponse:
            return await _run_batch(context, client, path, items, concurrency)

        return run

    return prepare


async def _run_batch(
    context: JobContext,
    client: UpstreamClient,
    path: str,
    items: list[str | int],
    concurrency: int,
) -> StoredResponse:
    slots = asyncio.Semaphore(concurrency)
    results: list[dict[str, Any] | None] = [None] * len(items)
    done = 0
    await context.progress(0, len(items), "starting")

    async def one(index: int, item: str | int) -> None:
        nonlocal done
        async with slots:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + client.config.timeout * (client.config.retries + 1) + 1
            entry: dict[str, Any] = {"item": item}
            try:
                reply = await client.fetch(
                    "GET",
                    expand_path(path, {"item": item}),
                    deadline=deadline,
                    headers={"X-Request-ID": f"{context.job_id}-{index}"},
                    # The client wrote the path: its answers' statuses say
                    # nothing of the upstream's health (see BlameRule).
                    path_from_client=True,
                )
                entry["status"] = reply.status
                entry["body"] = reply.json() if 200 <= reply.status < 300 else None
            except UpstreamError as error:
                entry["error"] = {"title": type(error).__name__, "detail": str(error)}
            results[index] = entry
            done += 1
            await context.progress(done, len(items), f"{done} of {len(items)}")

    # A cancelled job cancels every call in flight (TaskGroup), aborting them.
    async with asyncio.TaskGroup() as group:
        for index, item in enumerate(items):
            group.create_task(one(index, item))
    failed = sum(1 for entry in results if entry and "error" in entry)
    body = {
        "upstream": client.name,
        "succeeded": len(items) - failed,
        "failed": failed,
        "results": results,
    }
    return StoredResponse(
        status=200,
        headers=(("Content-Type", "application/json"),),
        body=json.dumps(body).encode(),
    )


def shipped_kinds(app: Flask) -> list[JobKind]:
    """The job kinds every Fanout app has."""
    return [JobKind("batch", _prepare_batch(app))]
