"""``GET /openapi.json``: an OpenAPI 3.1 document of every route the app serves.

The document is built once per app, on its first request (every route is
registered by then), and kept in ``app.extensions``. What can be derived is:

- paths, methods and path parameters come from ``app.url_map``. Each Werkzeug
  converter becomes a schema: ``int`` an integer (with its bounds), ``any(...)``
  an enum, ``uuid`` a uuid string, ``float`` a string of digits with a decimal
  point (``1`` does not match the route, ``1.0`` does), others a string with the
  converter's own pattern. HEAD (added by Werkzeug to GET rules) and OPTIONS
  (added by Flask) are left out, except for a view that lists OPTIONS itself
  (the proxy): such a view answers every method it lists.
- aggregate endpoints are described from their ``EndpointConfig``: method,
  groups (those of required backends are always in a 200 answer),
  ``X-Fanout-Completed``, 202 when ``Prefer: respond-async`` is sent (always for
  ``background = true``), 502/504 problems. The proxy's ``upstream`` is an enum
  of the configured upstreams, ``POST /jobs/{kind}``'s kind one of the
  registered job kinds.
- what the other routes answer cannot be derived: jobs, probes, the demo view
  (when its blueprint is registered) and this document are described by the
  fragments below, keyed by view endpoint name (or by path, for routes other
  modules add). Any other route (the views of ``[app] blueprints``, or those
  registered in code) still appears: its methods, its path parameters typed
  by their converters, its docstring's first line as summary (the rest as
  description), a 200 answer, and problem details otherwise.

OpenAPI forbids two templated paths that differ only in variable names
(``/jobs/{kind}`` and ``/jobs/{job_id}``): such rules share one path item,
named with the variables of the rule that has the most operations.

With ``[auth] api_keys``, a bearer scheme applies to every operation but those
of ``auth.OPEN_PATHS``, which declare ``security: []``.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from flask import Blueprint, Flask, Response, current_app
from werkzeug.routing import BaseConverter, Rule
from werkzeug.routing.converters import (
    AnyConverter,
    FloatConverter,
    IntegerConverter,
    UUIDConverter,
)

from fanout.core.config import BackendConfig, EndpointConfig, GatewayConfig
from fanout.core.config_composition import references
from fanout.jobs.model import JobStatus
from handlers.aggregate import BODYLESS_METHODS, COMPLETED_HEADER, receives_body
from handlers.auth import OPEN_PATHS, PROXY_ENDPOINT
from handlers.errors import PROBLEM_JSON
from handlers.jobs import MAX_PAGE, MAX_WAIT_SECONDS
from handlers.request_ids import HEADER as REQUEST_ID_HEADER
from handlers.resources import gateway_config, job_kinds

blueprint = Blueprint("openapi", __name__)

#: Where the app keeps its document (JSON bytes) once built.
OPENAPI_KEY = "fanout.openapi"
OPENAPI_VERSION = "3.1.0"

JSONObject = dict[str, Any]

# Werkzeug's rule syntax: <name>, <converter:name>, <converter(arguments):name>.
_VARIABLE = re.compile(r"<(?:[A-Za-z_][A-Za-z0-9_]*(?:\(.*?\))?:)?([A-Za-z_][A-Za-z0-9_]*)>")
# The methods an OpenAPI path item can hold, in the order they are listed.
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_JOB_ID_PATTERN = "^[0-9a-f]{32}$"


@blueprint.get("/openapi.json")
def openapi_document() -> Response:
    """The OpenAPI 3.1 document of every route this gateway serves."""
    body: bytes | None = current_app.extensions.get(OPENAPI_KEY)
    if body is None:
        # Built at most a few times if first requests race; each build is the same.
        body = json.dumps(build_document(current_app)).encode()
        current_app.extensions[OPENAPI_KEY] = body
    return Response(body, mimetype="application/json")


def build_document(app: Flask) -> JSONObject:
    """Build the OpenAPI 3.1 document of ``app`` from its url_map and gateway config."""
    return _Builder(app).document()


# -- small constructors ------------------------------------------------------------


def _ref(section: str, name: str) -> JSONObject:
    return {"$ref": f"#/components/{section}/{name}"}


def _response(
    description: str,
    content: Mapping[str, JSONObject] | None = None,
    headers: Mapping[str, JSONObject] | None = None,
) -> JSONObject:
    """A response object; every response carries X-Request-ID."""
    response: JSONObject = {
        "description": description,
        "headers": {REQUEST_ID_HEADER: _ref("headers", "RequestId"), **(headers or {})},
    }
    if content is not None:
        response["content"] = _content(content)
    return response


def _content(schemas: Mapping[str, JSONObject]) -> JSONObject:
    """A content map: a schema per media type."""
    return {media: {"schema": schema} for media, schema in schemas.items()}


def _json(schema: JSONObject) -> dict[str, JSONObject]:
    return {"application/json": schema}


def _problem(schema: str = "ProblemDetails") -> dict[str, JSONObject]:
    return {PROBLEM_JSON: _ref("schemas", schema)}


def _header(description: str, schema: JSONObject, *, required: bool = False) -> JSONObject:
    return {"description": description, "required": required, "schema": schema}


def _string_header(description: str, *, required: bool = False) -> JSONObject:
    return _header(description, {"type": "string"}, required=required)


def _nullable(schema: JSONObject) -> JSONObject:
    return {"anyOf": [schema, {"type": "null"}]}


def _first_line(text: str | None) -> str | None:
    if not text:
        return None
    lines = text.strip().splitlines()
    return lines[0].strip() if lines else None


def _operation_id(method: str, path: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_") or "root"
    return f"{method.lower()}_{slug}"


# -- components (static: the shapes the gateway answers) ---------------------------

_DATE_TIME: JSONObject = {"type": "string", "format": "date-time"}

_SCHEMAS: JSONObject = {
    "ProblemDetails": {
        "type": "object",
        "description": "Problem details (RFC 9457); extension members may follow.",
        "required": ["type", "title", "status"],
        "properties": {
            "type": {"type": "string", "format": "uri-reference", "examples": ["about:blank"]},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 100, "maximum": 599},
            "detail": {"type": "string"},
            "instance": {"type": "string", "format": "uri-reference"},
        },
    },
    "BackendError": {
        "type": "object",
        "description": "Why one backend of an aggregate endpoint gave no usable answer.",
        "required": ["status", "title", "detail"],
        "properties": {
            "status": {
                "type": "integer",
                "enum": [502, 503, 504],
                "description": "504 deadline, 503 circuit open, 502 anything else.",
            },
            "title": {"type": "string", "examples": ["Upstream Error Status"]},
            "detail": {"type": "string"},
        },
    },
    "AggregateProblem": {
        "description": "An aggregate endpoint failed: a required backend, or every backend.",
        "allOf": [
            _ref("schemas", "ProblemDetails"),
            {
                "type": "object",
                "required": ["errors"],
                "properties": {
                    "errors": {
                        "type": "object",
                        "description": "Each failed backend, by group (or upstream) name.",
                        "additionalProperties": _ref("schemas", "BackendError"),
                    }
                },
            },
        ],
    },
    "UpstreamProblem": {
        "description": "An upstream call failed.",
        "allOf": [
            _ref("schemas", "ProblemDetails"),
            {
                "type": "object",
                "properties": {
                    "upstream": {"type": "string"},
                    "upstream_status": {"type": "integer"},
                },
            },
        ],
    },
    "JobStatus": {
        "type": "string",
        "enum": [status.value for status in JobStatus],
        "description": "pending and running are not final; the others are.",
    },
    "JobProgress": {
        "type": "object",
        "required": ["done", "total", "message"],
        "properties": {
            "done": {"type": "integer", "minimum": 0},
            "total": _nullable({"type": "integer", "minimum": 0}),
            "message": {"type": "string"},
        },
    },
    "Job": {
        "type": "object",
        "description": "A background job. Times are UTC ISO 8601 with milliseconds.",
        "required": [
            "id",
            "kind",
            "status",
            "progress",
            "created_at",
            "started_at",
            "finished_at",
            "expires_at",
            "result_url",
            "error",
        ],
        "properties": {
            "id": {"type": "string", "pattern": _JOB_ID_PATTERN},
            "kind": {"type": "string"},
            "status": _ref("schemas", "JobStatus"),
            "progress": _ref("schemas", "JobProgress"),
            "created_at": _DATE_TIME,
            "started_at": _nullable(_DATE_TIME),
            "finished_at": _nullable(_DATE_TIME),
            "expires_at": _nullable(_DATE_TIME),
            "result_url": {"type": "string", "format": "uri-reference"},
            "error": {
                "description": "The problem details of a failed or interrupted job.",
                **_nullable(_ref("schemas", "ProblemDetails")),
            },
        },
    },
    "JobList": {
        "type": "object",
        "required": ["jobs", "next_cursor"],
        "properties": {
            "jobs": {"type": "array", "items": _ref("schemas", "Job")},
            "next_cursor": {
                "description": "Pass as ?cursor= for the next page; null on the last one.",
                **_nullable({"type": "string"}),
            },
        },
    },
    "ReadyChecks": {
        "type": "object",
        "description": "Each readiness check and whether it passed.",
        "additionalProperties": {"type": "boolean"},
    },
}

_HEADERS: JSONObject = {
    "RequestId": _string_header(
        "The request's id: the client's X-Request-ID when it is a sane token, else a new one.",
        required=True,
    ),
    "RetryAfter": _header(
        "Seconds to wait before asking again.", {"type": "string", "pattern": "^[0-9]+$"}
    ),
    "JobLocation": _header(
        "The job resource: /jobs/{id}.",
        {"type": "string", "pattern": "^/jobs/[0-9a-f]{32}$"},
        required=True,
    ),
    "Completed": _header(
        "true when every backend answered, false when some failed.",
        {"type": "string", "enum": ["true", "false"]},
        required=True,
    ),
}

_PARAMETERS: JSONObject = {
    "RequestId": {
        "name": REQUEST_ID_HEADER,
        "in": "header",
        "required": False,
        "description": "Kept when it matches [A-Za-z0-9][A-Za-z0-9._:-]{0,127}, "
        "else replaced; sent to every upstream call.",
        "schema": {"type": "string"},
    },
    "IdempotencyKey": {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "The same key from the same owner returns the same job while it is kept.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    },
}

_RESPONSES: JSONObject = {
    "BadRequest": _response("The request is invalid.", _problem()),
    "Unauthorized": _response(
        "No valid API key or token: send Authorization: Bearer <credential>.",
        _problem(),
        {
            "WWW-Authenticate": _string_header(
                'The scheme to use: Bearer (with error="invalid_token" for a refused token).',
                required=True,
            )
        },
    ),
    "Forbidden": _response(
        "The token lacks a scope this route needs.",
        _problem(),
        {"WWW-Authenticate": _string_header('Bearer error="insufficient_scope", scope="..."')},
    ),
    "TooManyRequests": _response(
        "The caller's rate limit for this route is used up; nothing was called upstream.",
        _problem(),
        {
            "Retry-After": _ref("headers", "RetryAfter"),
            "RateLimit-Policy": _string_header('The limit: "limit";q=<requests>;w=<seconds>.'),
            "RateLimit": _string_header('What is left: "limit";r=<remaining>;t=<seconds>.'),
        },
    ),
    "NotFound": _response(
        "No such route, or no such resource (unknown, expired, or another key's job).",
        _problem(),
    ),
    "PayloadTooLarge": _response("The request body is over the server's limit.", _problem()),
    "StartRefused": _response(
        "The job cannot start now: too many jobs, or the job store is unavailable.",
        _problem(),
        {"Retry-After": _ref("headers", "RetryAfter")},
    ),
    "KeyReused": _response(
        "The Idempotency-Key was already used for a different request.", _problem()
    ),
}


def _job_response(description: str, *, location: bool) -> JSONObject:
    headers: dict[str, JSONObject] = {"Retry-After": _ref("headers", "RetryAfter")}
    if location:
        headers["Location"] = _ref("headers", "JobLocation")
    return _response(description, _json(_ref("schemas", "Job")), headers)


# -- what a route is, in the document ----------------------------------------------


@dataclass(frozen=True)
class _Variable:
    """One path variable: its name in the document, in the rule, and its converter."""

    name: str
    rule_name: str
    converter: BaseConverter


@dataclass(frozen=True)
class _Route:
    """One url_map rule, placed at its OpenAPI path."""

    rule: Rule
    path: str
    variables: tuple[_Variable, ...]
    methods: tuple[str, ...]


def _documented_methods(rule: Rule) -> tuple[str, ...]:
    methods = set(rule.methods or ())
    # Flask marks the rules it added OPTIONS to; a view listing OPTIONS itself answers
    # each method it lists (the proxy forwards HEAD and OPTIONS too).
    if getattr(rule, "provide_automatic_options", True):
        methods.discard("OPTIONS")
        if "GET" in methods:
            methods.discard("HEAD")
    return tuple(method for method in _METHODS if method in methods)


def _place(rules: Iterable[Rule]) -> list[_Route]:
    """Give each rule its OpenAPI path; rules of one shape share the path item."""
    by_shape: dict[str, list[Rule]] = {}
    for rule in rules:
        by_shape.setdefault(_VARIABLE.sub("{}", rule.rule), []).append(rule)
    routes: list[_Route] = []
    for same_shape in by_shape.values():
        # The names of the rule with the most operations (the first, on a tie).
        canonical = max(same_shape, key=lambda r: len(_documented_methods(r)))
        path = _VARIABLE.sub(r"{\1}", canonical.rule)
        for rule in same_shape:
            rule_names = _VARIABLE.findall(rule.rule)
            document_names = re.findall(r"\{([^{}]+)\}", path)
            variables = tuple(
                # Werkzeug keeps each rule's converters by variable name.
                _Variable(document_name, rule_name, rule._converters[rule_name])
                for document_name, rule_name in zip(document_names, rule_names, strict=True)
            )
            routes.append(_Route(rule, path, variables, _documented_methods(rule)))
    return routes


def _converter_schema(converter: BaseConverter) -> JSONObject:
    """The JSON schema of the values a Werkzeug converter matches."""
    if isinstance(converter, IntegerConverter):
        schema: JSONObject = {"type": "integer"}
        minimum = converter.min if converter.signed else max(converter.min or 0, 0)
        if minimum is not None:
            schema["minimum"] = minimum
        if converter.max is not None:
            schema["maximum"] = converter.max
        if converter.fixed_digits:
            schema["description"] = f"Written with exactly {converter.fixed_digits} digits."
        return schema
    if isinstance(converter, FloatConverter):
        sign = "-?" if converter.signed else ""
        return {
            "type": "string",
            "pattern": rf"^{sign}[0-9]+\.[0-9]+$",
            "description": "A decimal number written with a decimal point, e.g. 1.5.",
        }
    if isinstance(converter, AnyConverter):
        return {"type": "string", "enum": sorted(converter.items)}
    if isinstance(converter, UUIDConverter):
        return {"type": "string", "format": "uuid"}
    return {"type": "string", "pattern": f"^(?:{converter.regex})$"}


# -- the document --------------------------------------------------------------------

_Describe = Callable[["_Builder", _Route, str], JSONObject]


class _Builder:
    """Builds one app's document."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.config: GatewayConfig = gateway_config(app)
        self.secured = self.config.auth.enabled
        self.routes = _place(sorted(app.url_map.iter_rules(), key=lambda rule: rule.rule))
        self.aggregates: dict[tuple[str, str], EndpointConfig] = {
            (endpoint.path, endpoint.method): endpoint for endpoint in self.config.endpoints
        }
        self.paths_by_endpoint = {route.rule.endpoint: route.path for route in self.routes}

    def document(self) -> JSONObject:
        paths: dict[str, JSONObject] = {}
        for route in self.routes:
            item = paths.setdefault(route.path, {})
            for method in route.methods:
                # Two rules answering one method at one path: Werkzeug routes to the first.
                item.setdefault(method.lower(), self.operation(route, method))
        components: JSONObject = {
            "schemas": _SCHEMAS,
            "responses": _RESPONSES,
            "parameters": _PARAMETERS,
            "headers": _HEADERS,
        }
        document: JSONObject = {
            "openapi": OPENAPI_VERSION,
            "info": {
                "title": "Fanout",
                "version": _version(),
                "description": "An API gateway: one route fans out to several HTTP APIs at once. "
                "Errors are problem details (application/problem+json).",
            },
            "paths": dict(sorted(paths.items())),
            "components": components,
        }
        if self.secured:
            components["securitySchemes"] = {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key from [auth] api_keys."
                    if self.config.auth.jwt is None
                    else "An API key from [auth] api_keys, or a JWT ([auth.jwt]).",
                }
            }
            document["security"] = [{"bearer": []}]
        return document

    def operation(self, route: _Route, method: str) -> JSONObject:
        aggregate = self.aggregates.get((route.rule.rule, method))
        if aggregate is not None:
            operation = self.aggregate(aggregate)
        else:
            describe = _BY_ENDPOINT.get(route.rule.endpoint) or _BY_PATH.get(route.rule.rule)
            operation = (describe or _generic)(self, route, method)
        operation["operationId"] = _operation_id(method, route.path)
        operation.setdefault("summary", self.summary(route))
        tag = route.rule.endpoint.partition(".")[0] if "." in route.rule.endpoint else "gateway"
        operation.setdefault("tags", [tag])
        overrides: dict[str, JSONObject] = operation.pop("x-path-schemas", {})
        parameters = [self.path_parameter(v, overrides.get(v.rule_name)) for v in route.variables]
        parameters.append(_ref("parameters", "RequestId"))
        operation["parameters"] = parameters + operation.get("parameters", [])
        responses: JSONObject = operation["responses"]
        if route.variables:
            responses.setdefault("404", _ref("responses", "NotFound"))
        mode, scopes, limited = self.policy(route, method)
        if route.rule.rule in OPEN_PATHS or mode == "none":
            if self.secured:
                operation["security"] = []
        elif self.secured:
            responses.setdefault("401", _ref("responses", "Unauthorized"))
            if mode == "optional":
                operation["security"] = [{"bearer": []}, {}]
            if scopes:
                responses.setdefault("403", _ref("responses", "Forbidden"))
        if limited:
            responses.setdefault("429", _ref("responses", "TooManyRequests"))
        operation["responses"] = dict(sorted(responses.items()))
        return operation

    def policy(self, route: _Route, method: str) -> tuple[str, tuple[str, ...], bool]:
        """The route's auth mode, scopes, and whether a rate limit applies."""
        aggregate = self.aggregates.get((route.rule.rule, method))
        limits = self.config.rate_limits
        if aggregate is not None:
            return (
                aggregate.auth or "required",
                aggregate.scopes,
                bool(aggregate.rate_limit or limits.default),
            )
        if route.rule.endpoint == PROXY_ENDPOINT:
            # Per upstream: the strictest reading of them all.
            upstreams = list(self.config.upstreams.values())
            limited = bool(limits.default) or any(u.rate_limit for u in upstreams)
            modes = {u.auth or "required" for u in upstreams} or {"required"}
            mode = (
                "required" if "required" in modes else "optional" if "optional" in modes else "none"
            )
            scopes = tuple(sorted({s for u in upstreams for s in u.scopes}))
            return mode, scopes, limited
        return "required", (), bool(limits.default) and route.rule.rule not in OPEN_PATHS

    def summary(self, route: _Route) -> str:
        view = self.app.view_functions.get(route.rule.endpoint)
        return _first_line(view.__doc__ if view else None) or route.rule.endpoint

    def path_parameter(self, variable: _Variable, override: JSONObject | None) -> JSONObject:
        parameter: JSONObject = {
            "name": variable.name,
            "in": "path",
            "required": True,
            "schema": _converter_schema(variable.converter),
        }
        if override:
            parameter.update(override)
        if variable.name != variable.rule_name:
            # The path item is shared with rules of the same shape, named after another one.
            described = parameter.get("description", "")
            parameter["description"] = f"{described} (<{variable.rule_name}> in the route)".strip()
        return parameter

    def job_links(self) -> JSONObject:
        """Links from a job resource to the job's routes (those the app has)."""
        links: JSONObject = {}
        for name, endpoint, method in (
            ("status", "jobs.status", "GET"),
            ("result", "jobs.result", "GET"),
            ("cancel", "jobs.cancel", "POST"),
            ("delete", "jobs.forget", "DELETE"),
        ):
            path = self.paths_by_endpoint.get(endpoint)
            if path is not None and "{job_id}" in path:
                links[name] = {
                    "operationId": _operation_id(method, path),
                    "parameters": {"job_id": "$response.body#/id"},
                }
        return links

    def accepted(self, description: str) -> JSONObject:
        """A 202 answer with the started job."""
        response = _job_response(description, location=True)
        response["headers"]["Preference-Applied"] = _string_header(
            "respond-async, when the request sent Prefer: respond-async."
        )
        links = self.job_links()
        if links:
            response["links"] = links
        return response

    def aggregate(self, endpoint: EndpointConfig) -> JSONObject:
        """An aggregate endpoint, from its config."""
        groups: JSONObject = {}
        required: list[str] = []
        for backend in endpoint.backends:
            if backend.group is None:
                continue
            groups[backend.group] = _group_schema(backend)
            if backend.required:
                required.append(backend.group)
        merged: JSONObject = {
            "type": "object",
            "description": "The backends' answers merged in config order: grouped ones under "
            "their group, the others at the top level.",
            "properties": {
                **groups,
                "_errors": {
                    "type": "object",
                    "description": "Each optional backend that failed, by group or upstream; "
                    "a for_each backend's failed items as group[index].",
                    "additionalProperties": _ref("schemas", "BackendError"),
                },
            },
        }
        if required:
            merged["required"] = required
        completed = {COMPLETED_HEADER: _ref("headers", "Completed")}
        responses: JSONObject = {
            "202": self.accepted(
                "Started as a job"
                + ("" if endpoint.background else " (Prefer: respond-async was sent)")
                + "; /jobs/{id}/result replays the answer."
            ),
            "400": _ref("responses", "BadRequest"),
            "422": _ref("responses", "KeyReused"),
            "503": _ref("responses", "StartRefused"),
        }
        parameters: list[JSONObject] = [_ref("parameters", "IdempotencyKey")]
        if not endpoint.background:
            responses["200"] = _response(
                "Every required backend answered (X-Fanout-Completed tells whether all did).",
                _json(merged),
                completed,
            )
            for status, title in (("502", "a backend failed"), ("504", "the deadline passed")):
                responses[status] = _response(
                    f"A required backend (or every backend) failed; {title}.",
                    _problem("AggregateProblem"),
                    completed,
                )
            parameters.insert(
                0,
                {
                    "name": "Prefer",
                    "in": "header",
                    "required": False,
                    "description": "With respond-async (RFC 7240), run as a background job "
                    "and answer 202; other preferences are ignored.",
                    "schema": {"type": "string", "examples": ["respond-async"]},
                },
            )
        operation: JSONObject = {
            "summary": f"{endpoint.method} {endpoint.path}: "
            f"{len(endpoint.backends)} backend call(s), merged",
            "description": f"Deadline {endpoint.timeout:g} s"
            + (f"; answers cached up to {endpoint.cache_ttl:g} s" if endpoint.cache_ttl else "")
            + (
                "; the query string is passed to some backends"
                if any(backend.pass_query for backend in endpoint.backends)
                else ""
            )
            + ("; always runs as a job" if endpoint.background else "")
            + ".",
            "parameters": parameters,
            "responses": responses,
        }
        if endpoint.method not in BODYLESS_METHODS:
            operation["requestBody"] = {
                "required": False,
                "description": _body_description(endpoint),
                "content": _content(_json({})),
            }
            responses["413"] = _ref("responses", "PayloadTooLarge")
        return operation


def _group_schema(backend: BackendConfig) -> JSONObject:
    """What a backend's group holds: its answer, a list for for_each and collections."""
    if backend.required:
        need = "required"
    elif backend.fallback is not None:
        need = "optional: its fallback when it failed"
    else:
        need = "optional: absent when it failed"
    read = sorted({reference.group for reference in references(backend)})
    reads = f", called with values from {', '.join(read)}" if read else ""
    if backend.for_each is not None:
        return {
            "type": "array",
            "description": f"The {backend.upstream} backend once per item of "
            f"{backend.for_each} (at most {backend.max_items}), in item order; null where "
            f"that item's call failed ({need}){reads}.",
            "maxItems": backend.max_items,
        }
    if backend.collection:
        return {
            "type": "array",
            "description": f"The {backend.upstream} backend's list ({need}){reads}.",
        }
    schema: JSONObject = {"description": f"The {backend.upstream} backend ({need}){reads}."}
    if backend.fallback is not None:
        schema["examples"] = [backend.fallback]
    return schema


def _body_description(endpoint: EndpointConfig) -> str:
    writers = [b for b in endpoint.backends if receives_body(endpoint, b)]
    if len(writers) == len(endpoint.backends):
        return "Sent to every backend." if len(writers) > 1 else "Sent to the backend."
    names = ", ".join(b.group or b.upstream for b in writers)
    return f"Sent to {names}; the other backends are called with GET and no body."


def _version() -> str:
    try:
        return version("fanout")
    except PackageNotFoundError:
        return "0"


def _generic(builder: _Builder, route: _Route, method: str) -> JSONObject:
    """Any other route (a view of an ``[app]`` blueprint): what every view may answer."""
    view = builder.app.view_functions.get(route.rule.endpoint)
    operation: JSONObject = {
        "responses": {
            "200": _response("The view's answer.", {"*/*": {}}),
            "default": _response(
                "Another answer of the view; errors are problem details.",
                {PROBLEM_JSON: _ref("schemas", "ProblemDetails"), "*/*": {}},
            ),
        }
    }
    # The docstring's first line is the summary (set by the builder); the rest describes it.
    rest = inspect.cleandoc(view.__doc__ or "").partition("\n")[2].strip() if view else ""
    if rest:
        operation["description"] = rest
    if method in _BODY_METHODS:
        operation["requestBody"] = {"required": False, "content": _content({"*/*": {}})}
        operation["responses"]["413"] = _ref("responses", "PayloadTooLarge")
    return operation


# -- fragments: what the gateway's own routes answer --------------------------------


def _proxy(builder: _Builder, route: _Route, method: str) -> JSONObject:
    upstreams = sorted(builder.config.upstreams)
    upstream: JSONObject = {
        "description": "A configured upstream; any other name answers 404.",
        "schema": {"type": "string", "enum": upstreams} if upstreams else {"type": "string"},
    }
    either = {PROBLEM_JSON: _ref("schemas", "UpstreamProblem"), "*/*": {}}
    operation: JSONObject = {
        "summary": f"Forward {method} to the upstream (its answer streamed back)",
        "description": "The path and query go upstream exactly as encoded. Each status below "
        "may also be the upstream's own answer, passed through.",
        "x-path-schemas": {
            "upstream": upstream,
            "path": {"description": "The path on the upstream; no . or .. segments."},
        },
        "responses": {
            "default": _response("The upstream's answer: status, headers and body.", {"*/*": {}}),
            "400": _response("The path has . or .. segments.", either),
            "404": _response("No such upstream.", either),
            "413": _response("The request body is over the server's limit.", either),
            "502": _response("The upstream could not be reached or refused.", either),
            "503": _response("The upstream's circuit is open.", either),
            "504": _response("The upstream did not answer in time.", either),
        },
    }
    if method in _BODY_METHODS:
        operation["requestBody"] = {
            "required": False,
            "description": "Streamed to the upstream as is.",
            "content": _content({"*/*": {}}),
        }
    return operation


def _job_start(builder: _Builder, route: _Route, method: str) -> JSONObject:
    kinds = sorted(job_kinds(builder.app))
    kind: JSONObject = {
        "description": "A job kind registered in code.",
        "schema": {"type": "string", "enum": kinds} if kinds else {"type": "string"},
    }
    return {
        "description": "The JSON body is the job's parameters (for batch: upstream, path with "
        "{item}, items, concurrency).",
        "x-path-schemas": {"kind": kind},
        "parameters": [_ref("parameters", "IdempotencyKey")],
        "requestBody": {
            "required": False,
            "content": _content(
                _json({"description": "The kind's parameters (not null).", "not": {"type": "null"}})
            ),
        },
        "responses": {
            "202": builder.accepted("Started; poll Location."),
            "400": _ref("responses", "BadRequest"),
            "404": _ref("responses", "NotFound"),
            "413": _ref("responses", "PayloadTooLarge"),
            "415": _response("The body is not declared application/json.", _problem()),
            "422": _ref("responses", "KeyReused"),
            "503": _ref("responses", "StartRefused"),
        },
    }


#: The job routes' <job_id>.
_JOB_ID: JSONObject = {
    "job_id": {
        "description": "The job's id (32 hex digits).",
        "schema": {"type": "string", "pattern": _JOB_ID_PATTERN},
    }
}


def _job_status(builder: _Builder, route: _Route, method: str) -> JSONObject:
    return {
        "x-path-schemas": _JOB_ID,
        "parameters": [
            {
                "name": "wait",
                "in": "query",
                "required": False,
                "description": "Long poll: hold the answer until the job finishes or this many "
                "seconds pass.",
                "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_SECONDS},
            }
        ],
        "responses": {
            "200": _job_response("The job (Retry-After while it is not finished).", location=False),
            "400": _ref("responses", "BadRequest"),
        },
    }


def _job_result(builder: _Builder, route: _Route, method: str) -> JSONObject:
    return {
        "x-path-schemas": _JOB_ID,
        "responses": {
            "200": _response("The job's own answer, replayed as it was produced.", {"*/*": {}}),
            "202": _job_response("Not finished yet: poll Location.", location=True),
            "409": _response("The job was cancelled or interrupted: no result.", _problem()),
            "default": _response(
                "The job's own answer with its own status, or the problem details of a "
                "failed job (a 5xx: the job failed, not this request).",
                {"*/*": {}},
            ),
        },
    }


def _job_events(builder: _Builder, route: _Route, method: str) -> JSONObject:
    return {
        "x-path-schemas": _JOB_ID,
        "responses": {
            "200": _response(
                "Server-sent events: `event: job` with the Job resource as data, one per "
                "change of status or progress; the stream closes after the final status, "
                "or with `event: shutdown` when the server begins to stop (reconnect to "
                "follow the job on).",
                {"text/event-stream": {"type": "string"}},
                {"Cache-Control": _string_header("no-cache")},
            ),
        },
    }


def _job_cancel(builder: _Builder, route: _Route, method: str) -> JSONObject:
    conflict: JSONObject = {
        "allOf": [
            _ref("schemas", "ProblemDetails"),
            {"type": "object", "properties": {"status_of_job": _ref("schemas", "JobStatus")}},
        ]
    }
    return {
        "x-path-schemas": _JOB_ID,
        "responses": {
            "200": _job_response("The job as it is after the cancel.", location=False),
            "202": _job_response(
                "The cancel is asked, the job has not stopped yet: poll Location.", location=True
            ),
            "409": _response("The job is already finished.", {PROBLEM_JSON: conflict}),
        },
    }


def _job_forget(builder: _Builder, route: _Route, method: str) -> JSONObject:
    return {
        "x-path-schemas": _JOB_ID,
        "responses": {"204": _response("Cancelled if needed, and forgotten.")},
    }


def _job_list(builder: _Builder, route: _Route, method: str) -> JSONObject:
    def query(name: str, description: str, schema: JSONObject) -> JSONObject:
        return {
            "name": name,
            "in": "query",
            "required": False,
            "description": description,
            "schema": schema,
        }

    return {
        "parameters": [
            query("status", "Only jobs in this status.", _ref("schemas", "JobStatus")),
            query("kind", "Only jobs of this kind.", {"type": "string"}),
            query(
                "limit",
                "Jobs per page.",
                {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 20},
            ),
            query("cursor", "next_cursor of the previous page.", {"type": "string"}),
        ],
        "responses": {
            "200": _response("The caller's jobs, newest first.", _json(_ref("schemas", "JobList"))),
            "400": _ref("responses", "BadRequest"),
        },
    }


def _healthz(builder: _Builder, route: _Route, method: str) -> JSONObject:
    alive = {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"const": "ok"}},
    }
    return {"responses": {"200": _response("The process is alive.", _json(alive))}}


def _readyz(builder: _Builder, route: _Route, method: str) -> JSONObject:
    ready = {
        "type": "object",
        "required": ["status", "checks"],
        "properties": {"status": {"const": "ready"}, "checks": _ref("schemas", "ReadyChecks")},
    }
    not_ready = {
        "allOf": [
            _ref("schemas", "ProblemDetails"),
            {
                "type": "object",
                "required": ["checks"],
                "properties": {"checks": _ref("schemas", "ReadyChecks")},
            },
        ]
    }
    return {
        "responses": {
            "200": _response(
                "Ready: config loaded, session open, job store reachable.", _json(ready)
            ),
            "503": _response(
                "Not ready (starting, stopping, or the job store is unreachable).",
                {PROBLEM_JSON: not_ready},
                {"Retry-After": _ref("headers", "RetryAfter")},
            ),
        }
    }


def _dashboard(builder: _Builder, route: _Route, method: str) -> JSONObject:
    dashboard = {
        "type": "object",
        "required": ["user", "orders", "recommendations"],
        "properties": {
            "user": {"type": "object"},
            "orders": {"type": "object"},
            "recommendations": {"type": "object"},
        },
    }
    upstream_failed = _problem("UpstreamProblem")
    return {
        "responses": {
            "200": _response("The user, their orders and recommendations.", _json(dashboard)),
            "502": _response("The demo upstream failed.", upstream_failed),
            "504": _response("The demo upstream did not answer in time.", upstream_failed),
        }
    }


def _document(builder: _Builder, route: _Route, method: str) -> JSONObject:
    return {
        "responses": {
            "200": _response(
                "This document (OpenAPI 3.1).", _json({"type": "object", "required": ["openapi"]})
            )
        }
    }


def _metrics(builder: _Builder, route: _Route, method: str) -> JSONObject:
    return {
        "summary": "Prometheus metrics",
        "responses": {
            "200": _response(
                "Prometheus text exposition format.", {"text/plain": {"type": "string"}}
            )
        },
    }


def _jobs_page(builder: _Builder, route: _Route, method: str) -> JSONObject:
    return {
        "responses": {
            "200": _response("An HTML page of recent jobs.", {"text/html": {"type": "string"}})
        }
    }


#: Fragments for the views Fanout ships, by view endpoint name.
_BY_ENDPOINT: dict[str, _Describe] = {
    "proxy.proxy": _proxy,
    "jobs.start": _job_start,
    "jobs.status": _job_status,
    "jobs.result": _job_result,
    "jobs.events": _job_events,
    "jobs.cancel": _job_cancel,
    "jobs.forget": _job_forget,
    "jobs.listing": _job_list,
    "health.healthz": _healthz,
    "health.readyz": _readyz,
    "demo.dashboard": _dashboard,
    "openapi.openapi_document": _document,
}

#: Fragments for routes other modules add (used when the route exists), by path.
_BY_PATH: dict[str, _Describe] = {
    "/metrics": _metrics,
    "/jobs/ui": _jobs_page,
}
