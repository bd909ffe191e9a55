"""Aggregate endpoints from the gateway config: call every backend at once, merge."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from flask import Flask, Response, abort, current_app, request

from clients.errors import UpstreamStatusError, UpstreamTimeout
from clients.upstream import UpstreamReply
from clients.upstreams import Upstreams
from fanout.core.aggregate import BackendFailure, decide
from fanout.core.cache_control import response_ttl
from fanout.core.config import BackendConfig, EndpointConfig
from fanout.core.deadline import deadline
from fanout.core.forwarding import Forwarded, ForwardRule, forwarded
from fanout.core.identity import current_caller
from fanout.core.merge import Part
from fanout.core.paths import append_query
from fanout.jobs.model import StoredResponse
from handlers.composition import BackendPlan, BackendRun, plan
from handlers.errors import PROBLEM_JSON
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
    plans = plan(endpoint)
    rules: tuple[ForwardRule, ...] | None = None

    async def aggregate_view(**route_values: Any) -> Response:
        nonlocal rules
        if rules is None:
            # Built on first use: the upstreams' defaults come from the app's config.
            configs = gateway_config(current_app).upstreams
            rules = tuple(ForwardRule.of(b, configs[b.upstream]) for b in endpoint.backends)
        return await aggregate(endpoint, route_values, plans, rules)

    aggregate_view.__doc__ = f"{endpoint.method} {endpoint.path}: aggregate its backends."
    return aggregate_view


async def aggregate(
    endpoint: EndpointConfig,
    route_values: Mapping[str, Any],
    plans: Sequence[BackendPlan] | None = None,
    rules: Sequence[ForwardRule] | None = None,
) -> Response:
    """Answer the merged result of the endpoint's backends, or start it as a job.

    ``plans``: the backends' parsed plans, in order (made here if None);
    ``rules``: what each backend forwards of the request (built here if None).
    """
    pool = upstreams(current_app)
    if plans is None:
        plans = plan(endpoint)
    if rules is None:
        configs = gateway_config(current_app).upstreams
        rules = [ForwardRule.of(b, configs[b.upstream]) for b in endpoint.backends]
    # Taken now, in the request: a job runs after it, with what it carried.
    sent = _forwarded(rules)
    paths = _backend_paths(plans, route_values, [each.query for each in sent])
    body = None if endpoint.method in BODYLESS_METHODS else request.get_data()
    request_id = current_request_id()
    values = dict(route_values)

    async def run() -> StoredResponse:
        return await fan_out(
            pool,
            endpoint,
            paths,
            body=body,
            request_id=request_id,
            forwarded=sent,
            route_values=values,
            plans=plans,
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
    paths: Sequence[str | None],
    *,
    body: bytes | None,
    request_id: str,
    forwarded: Sequence[Forwarded] | None = None,
    route_values: Mapping[str, Any] | None = None,
    plans: Sequence[BackendPlan] | None = None,
) -> StoredResponse:
    """Run the endpoint's backends (see handlers.composition); return its answer, merged.

    ``paths``: each backend's path, or None where it reads an earlier answer
    (expanded then, with ``route_values``); ``forwarded``: per backend, the
    client values its call carries (none if None).
    """
    sent = forwarded or [_NOTHING] * len(endpoint.backends)
    # Views' upstream calls and these share one deadline.
    with deadline(endpoint.timeout) as until:
        assert until is not None  # a number of seconds was given
        call = _BackendCall(pool, endpoint, request_id=request_id, body=body, deadline=until)
        outcomes = await BackendRun(
            plans if plans is not None else plan(endpoint),
            paths=paths,
            route_values=route_values or {},
            sent=sent,
            fetch=call.run,
        ).run()
    parts: list[Part] = []
    failures: list[BackendFailure] = []
    for backend, outcome in zip(endpoint.backends, outcomes, strict=True):
        if outcome is None:
            continue  # cancelled: a required backend failed first
        failures.extend(outcome.failures)
        if outcome.answered:
            parts.append(Part(name=backend.upstream, group=backend.group, data=outcome.data))
    outcome_ = decide(parts, failures, on_conflict=endpoint.on_conflict)
    content_type = "application/json" if outcome_.status < 400 else PROBLEM_JSON
    return StoredResponse(
        status=outcome_.status,
        headers=(
            ("Content-Type", content_type),
            (COMPLETED_HEADER, "true" if outcome_.completed else "false"),
        ),
        body=json.dumps(outcome_.body).encode(),
    )


def receives_body(endpoint: EndpointConfig, backend: BackendConfig) -> bool:
    """Whether the backend gets the endpoint's method and body (else a GET without one)."""
    if endpoint.method == "GET" or backend.write:
        return endpoint.method != "GET"
    # No backend marked: the only one, or (allow_partial_writes) every one.
    return not any(other.write for other in endpoint.backends)


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
    plans: Sequence[BackendPlan], route_values: Mapping[str, Any], queries: Sequence[str]
) -> list[str | None]:
    paths: list[str | None] = []
    for current, query in zip(plans, queries, strict=True):
        if not current.static:
            paths.append(None)  # expanded once the answers it reads are in
            continue
        try:
            path = current.template.expand(route_values)
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

    async def run(self, backend: BackendConfig, path: str, sent: Forwarded) -> Any:
        """Call one backend and return its JSON answer, or raise UpstreamError."""
        reply = await self._reply(backend, path, sent)
        if not 200 <= reply.status < 300:
            raise UpstreamStatusError(backend.upstream, reply.status)
        return reply.json()

    async def _reply(self, backend: BackendConfig, path: str, sent: Forwarded) -> UpstreamReply:
        upstream = backend.upstream
        client = self._pool[upstream]
        # A write goes to one backend (config_composition); the others read.
        writes = receives_body(self._endpoint, backend)
        method = self._endpoint.method if writes else "GET"
        body = self._body if writes else None
        headers = [*sent.headers, (HEADER, self._request_id)]

        def fetch() -> Coroutine[Any, Any, UpstreamReply]:
            return client.fetch(method, path, deadline=self._deadline, headers=headers, body=body)

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
