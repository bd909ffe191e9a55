"""The job kinds Fanout ships: ``batch`` calls an upstream once per item."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from flask import Flask

from clients.errors import UpstreamError
from clients.upstream_client import UpstreamClient
from fanout.core.paths import expand_path
from fanout.core.request_target import check_origin_form
from fanout.jobs.kinds import InvalidParams, JobKind
from fanout.jobs.model import StoredResponse
from fanout.jobs.registry import JobBody, JobContext, ResultTooLarge
from handlers.resources import upstreams

MAX_ITEMS = 1000
MAX_CONCURRENCY = 50
_SEPARATOR = b", "


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


def _batch_paths(path: str, items: list[str | int]) -> list[str]:
    """Each item's request target, every one checked as the proxy's are (400 otherwise)."""
    try:
        # A neutral item first: a mistake in the template is named as the path's.
        check_origin_form(expand_path(path, {"item": "x"}))
    except KeyError as missing:
        raise InvalidParams(f"path: no placeholder {{{missing.args[0]}}}; only {{item}}") from None
    except ValueError as exc:
        raise InvalidParams(f"path: {exc}") from None
    paths = []
    for index, item in enumerate(items):
        try:
            expanded = expand_path(path, {"item": item})
            check_origin_form(expanded)
        except UnicodeError:
            raise InvalidParams(f"items[{index}]: not valid Unicode (a lone surrogate)") from None
        except ValueError as exc:
            # Named by index: an item may be long, and is the client's own anyway.
            raise InvalidParams(f"items[{index}]: the path it makes {exc}") from None
        paths.append(expanded)
    return paths


def _prepare_batch(app: Flask) -> Any:
    def prepare(params: Any) -> JobBody:
        upstream, path, items, concurrency = _batch_params(params)
        client = upstreams(app).get(upstream)
        if client is None:
            raise InvalidParams(f"no upstream named {upstream!r} is configured")
        calls = list(zip(items, _batch_paths(path, items), strict=True))

        async def run(context: JobContext) -> StoredResponse:
            return await _run_batch(context, client, calls, concurrency)

        return run

    return prepare


async def _item_entry(
    context: JobContext, client: UpstreamClient, index: int, item: str | int, path: str
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + client.config.timeout * (client.config.retries + 1) + 1
    entry: dict[str, Any] = {"item": item}
    try:
        reply = await client.fetch(
            "GET",
            path,
            deadline=deadline,
            headers={"X-Request-ID": f"{context.job_id}-{index}"},
            # The client wrote the path: its answers' statuses say nothing
            # of the upstream's health (see BlameRule).
            path_from_client=True,
        )
        entry["status"] = reply.status
        entry["body"] = reply.json() if 200 <= reply.status < 300 else None
    except UpstreamError as error:
        entry["error"] = {"title": type(error).__name__, "detail": str(error)}
    return entry


async def _run_batch(
    context: JobContext,
    client: UpstreamClient,
    calls: list[tuple[str | int, str]],
    concurrency: int,
) -> StoredResponse:
    slots = asyncio.Semaphore(concurrency)
    limit = context.max_result_bytes
    # Each item's entry is kept as its JSON text only (not the upstream's bytes,
    # nor the parsed body): what is held is what the result will be, counted
    # against the limit as it grows, and the job fails as soon as it passes it.
    fragments: list[bytes] = [b""] * len(calls)
    size = done = failed = 0
    await context.progress(0, len(calls), "starting")

    async def one(index: int, item: str | int, path: str) -> None:
        nonlocal size, done, failed
        async with slots:
            entry = await _item_entry(context, client, index, item, path)
            failed += "error" in entry
            fragment = json.dumps(entry).encode()
            del entry
            size += len(fragment) + len(_SEPARATOR)
            if size > limit:
                raise ResultTooLarge(limit)
            fragments[index] = fragment
            done += 1
            await context.progress(done, len(calls), f"{done} of {len(calls)}")

    # A cancelled job cancels every call in flight (TaskGroup), aborting them;
    # so does an item that takes the result past the limit.
    async with asyncio.TaskGroup() as group:
        for index, (item, path) in enumerate(calls):
            group.create_task(one(index, item, path))
    # Exactly json.dumps of the whole result (its default separators), built from the parts.
    head = {"upstream": client.name, "succeeded": len(calls) - failed, "failed": failed}
    body = b"".join(
        (json.dumps(head)[:-1].encode(), b', "results": [', _SEPARATOR.join(fragments), b"]}")
    )
    return StoredResponse(status=200, headers=(("Content-Type", "application/json"),), body=body)


def shipped_kinds(app: Flask) -> list[JobKind]:
    """The job kinds every Fanout app has."""
    return [JobKind("batch", _prepare_batch(app))]
