"""Aggregate endpoints from the gateway config: call every backend at once, merge."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from flask import Flask, Response, abort, current_app, request

from clients.errors import UpstreamError, UpstreamStatusError, UpstreamTimeout
from clients.gather import gather
from clients.upstream import UpstreamReply
from clients.upstreams import Upstreams
from fanout.core.aggregate import BackendFailure, decide
from fanout.core.cache_control import response_ttl
from fanout.core.config import BackendConfig, EndpointConfig
from fanout.core.deadline import deadline
from fanout.core.forwarding import Forwarded, ForwardRule, forwarded
from fanout.core.identity import current_caller
from fanout.core.merge import Part, filter_fields
from fanout.core.paths import PathTemplate, append_query
from fanout.jobs.model import StoredResponse
from handlers.errors import PROBLEM_JSON, upstream_status
from handlers.jobs import prefers_async, request_params, start_job
from handlers.request_ids import HEADER, current_request_id
from handlers.resources import gateway_config, upstreams

COMPLETED_HEADER = "X-Fanout-Completed"
BODYLESS_METHODS = frozenset({"GET", "HEAD", "DELETE"})
#: What a backend call carries when nothing is forwarded.
_NOTHING = Forwarded((), "")
#: The view of the gateway file's ``endpoints[i]`` is named this, then ``i``.
ENDPOINT_PREFIX = "gateway_endpoint_"


def endpoint_names(endpoints: Sequence[EndpointConfig]) -> list[tuple[str, EndpointConfig]]:
    """Each configured endpoint with the Flask endpoint name of its view."""
    return [(f"{ENDPOINT_PREFIX}{index}", endpoint) for index, endpoint in enumerate(endpoints)]


def register_endpoints(app: Flask, endpoints: Sequence[EndpointConfig]) -> None:
    """Add one route per configured endpoint."""
    for name, endpoint in endpoint_names(endpoints):
        app.add_url_rule(
            endpoint.path,
            endpoint=name,
            view_func=_view_for(endpoint),
            methods=[endpoint.method],
        )


def _view_for(endpoint: EndpointConfig) -> Callable[..., Coroutine[Any, Any, Response]]:
    # Parsed once here, not on every request (the config checked them already).
    templates = tuple(PathTemplate(backend.path) for backend in endpoint.backends)
    rules: tuple[ForwardRule, ...] | None = None

    async def aggregate_view(**route_values: Any) -> Response:
        nonlocal rules
        if rules is None:
            # Built on first use: the upstreams' defaults come from the app's config.
            configs = gateway_config(current_app).upstreams
            rules = tuple(ForwardRule.of(b, configs[b.upstream]) for b in endpoint.backends)
        return await aggregate(endpoint, route_values, templates, rules)

    aggregate_view.__doc__ = f"{endpoint.method} {endpoint.path}: aggregate its backends."
    return aggregate_view


async def aggregate(
    endpoint: EndpointConfig,
    route_values: Mapping[str, Any],
    templates: Sequence[PathTemplate] | None = None,
    rules: Sequence[ForwardRule] | None = None,
) -> Response:
    """Answer the merged result of the endpoint's backends, or start it as a job.

    ``templates``: the backends' parsed path templates, in order (parsed here if None);
    ``rules``: what each backend forwards of the request (built here if None).
    """
    pool = upstreams(current_app)
    if templates is None:
        templates = [PathTemplate(backend.path) for backend in endpoint.backends]
    if rules is None:
        configs = gateway_config(current_app).upstreams
        rules = [ForwardRule.of(b, configs[b.upstream]) for b in endpoint.backends]
    # Taken now, in the request: a job runs after it, with what it carried.
    sent = _forwarded(rules)
    paths = _backend_paths(endpoint, templates, route_values, [each.query for each in sent])
    body = None if endpoint.method in BODYLESS_METHODS else request.get_data()
    request_id = current_request_id()

    async def run() -> StoredResponse:
        return await fan_out(
            pool, endpoint, paths, body=body, request_id=request_id, forwarded=sent
        )

    if endpoint.background or prefers_async():
        return await start_job(
            "endpoint",
            lambda _context: run(),
            params=request_params(body),
            time_limit=endpoint.timeout,
        )
    answer = await run()
    return Response(answer.body, status=answer.status, headers=list(answer.headers))


async def fan_out(
    pool: Upstreams,
    endpoint: EndpointConfig,
    paths: Sequence[str],
    *,
    body: bytes | None,
    request_id: str,
    forwarded: Sequence[Forwarded] | None = None,
) -> StoredResponse:
    """Call the endpoint's backends concurrently; return its answer, merged.

    ``forwarded``: per backend, the client values its call carries (none if None).
    """
    sent = forwarded or [_NOTHING] * len(endpoint.backends)
    # Views' upstream calls and these share one deadline and one gather.
    with deadline(endpoint.timeout) as until:
        assert until is not None  # a number of seconds was given
        call = _BackendCall(pool, endpoint, request_id=request_id, body=body, deadline=until)
        results = await gather(
            {
                index: call.run(backend, path, extra)
                for index, (backend, path, extra) in enumerate(
                    zip(endpoint.backends, paths, sent, strict=True)
                )
            }
        )
    parts: list[Part] = []
    failures: list[BackendFailure] = []
    for backend, result in zip(endpoint.backends, results.values(), strict=True):
        if isinstance(result, UpstreamError):
            status, title = upstream_status(result)
            label = backend.group or backend.upstream
            failures.append(BackendFailure(label, status, title, str(result), backend.required))
        else:
            parts.append(result)
    outcome = decide(parts, failures)
    content_type = "application/json" if outcome.status < 400 else PROBLEM_JSON
    return StoredResponse(
        status=outcome.status,
        headers=(
            ("Content-Type", content_type),
            (COMPLETED_HEADER, "true" if outcome.completed else "false"),
        ),
        body=json.dumps(outcome.body).encode(),
    )


def _forwarded(rules: Sequence[ForwardRule]) -> list[Forwarded]:
    if not any(rule.forwards_anything for rule in rules):
        return [_NOTHING] * len(rules)
    caller = current_caller()
    query = request.query_string.decode("latin-1")
    # Only the listed headers are looked up (iterating all of them costs more),
    # and backends with the same rule (often all of them) share one result.
    wanted = {name for rule in rules for name in rule.headers}
    headers = [(name, value) for name in wanted for value in request.headers.getlist(name)]
    done: dict[ForwardRule, Forwarded] = {}
    for rule in rules:
        if rule not in done:
            done[rule] = forwarded(rule, headers, query, caller.name)
    return [done[rule] for rule in rules]


def _backend_paths(
    endpoint: EndpointConfig,
    templates: Sequence[PathTemplate],
    route_values: Mapping[str, Any],
    queries: Sequence[str],
) -> list[str]:
    paths = []
    for template, query in zip(templates, queries, strict=True):
        try:
            path = template.expand(route_values)
        except ValueError:
            # A route value of "..", "." or "" that would climb out of its
            # segment. The error's text shows the backend's path template,
            # which may hold a secret from ${VAR}: not for the client.
            abort(
                400,
                description="Invalid path parameter: a value may not make a path segment "
                "empty, '.' or '..'.",
            )
        paths.append(append_query(path, query) if query else path)
    return paths


class _BackendCall:
    """One request's calls to its endpoint's backends."""

    def __init__(
        self,
        pool: Upstreams,
        endpoint: EndpointConfig,
        *,
        request_id: str,
        body: bytes | None,
        deadline: float,
    ) -> None:
        self._pool = pool
        self._endpoint = endpoint
        self._request_id = request_id
        self._body = body
        self._deadline = deadline

    async def run(self, backend: BackendConfig, path: str, sent: Forwarded) -> Part:
        """Call one backend and return its filtered data, or raise UpstreamError."""
        reply = await self._reply(backend.upstream, path, sent)
        if not 200 <= reply.status < 300:
            raise UpstreamStatusError(backend.upstream, reply.status)
        data = filter_fields(reply.json(), allow=backend.allow, deny=backend.deny)
        return Part(name=backend.upstream, group=backend.group, data=data)

    async def _reply(self, upstream: str, path: str, sent: Forwarded) -> UpstreamReply:
        client = self._pool[upstream]
        method = self._endpoint.method
        headers = [*sent.headers, (HEADER, self._request_id)]

        def fetch() -> Coroutine[Any, Any, UpstreamReply]:
            return client.fetch(
                method, path, deadline=self._deadline, headers=headers, body=self._body
            )

        if method != "GET":
            return await fetch()
        # Every value forwarded is in the key (the query is in the path): one
        # caller never gets an answer made for another's token or identity.
        key = (upstream, path, sent.key)
        ttl = self._endpoint.cache_ttl
        if ttl > 0:
            # Shared with other endpoints asking for the same URL, but never
            # older than this endpoint's own cache_ttl.
            cached = self._pool.cache.get(key, max_age=ttl)
            if cached is not None:
                return cached
        # Identical GETs in flight at once share one upstream call; each
        # request waits for it only until its own deadline.
        try:
            reply = await self._pool.coalescer.run(key, fetch, deadline=self._deadline)
        except TimeoutError:
            timeout = self._endpoint.timeout
            raise UpstreamTimeout(
                upstream, f"{upstream} did not answer within {timeout:.3g}s"
            ) from None
        if ttl > 0 and 200 <= reply.status < 300:
            self._pool.cache.put(key, reply, response_ttl(reply.headers.get("Cache-Control"), ttl))
        return reply
