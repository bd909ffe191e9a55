"""GET /openapi.json: a valid OpenAPI 3.1 document of every route, fuzzed by schemathesis."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import OpenAPIV31SpecValidator

from fanout.bridge import ASGIBridge, BridgeFlask
from handlers import openapi
from handlers.auth import OPEN_PATHS
from handlers.proxy import METHODS as PROXY_METHODS
from tests.fault_upstream import FaultUpstream
from tests.schemathesis_run import (
    EmptyRun,
    gateway_toml,
    live_gateway,
    run_summary,
    served_app,
)
from tests.serving import hypercorn_serving

API_KEY = "0123456789abcdef-openapi"
_VARIABLE = re.compile(r"<(?:[^<>:]+:)?([A-Za-z_][A-Za-z0-9_]*)>")


@asynccontextmanager
async def serving(
    fault: FaultUpstream, tmp_path: Path, extra_config: str = ""
) -> AsyncIterator[tuple[BridgeFlask, aiohttp.ClientSession]]:
    """The real app for the test gateway file under Hypercorn, and a client."""
    path = tmp_path / "gateway.toml"
    path.write_text(gateway_toml(fault.url, fault.url, extra_config))
    app = served_app(path)
    async with (
        hypercorn_serving(ASGIBridge(app)) as url,
        aiohttp.ClientSession(url) as client,
    ):
        yield app, client


async def fetch_document(client: aiohttp.ClientSession, **headers: str) -> dict[str, Any]:
    """GET /openapi.json."""
    async with client.get("/openapi.json", headers=headers) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        document: dict[str, Any] = await response.json()
    return document


def shape(template: str) -> str:
    """A path with its variables erased: /jobs/<kind> and /jobs/{job_id} are both /jobs/{}."""
    return re.sub(r"\{[^{}]*\}", "{}", _VARIABLE.sub("{}", template))


def operation(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    """The operation at ``path`` (written with any variable names) for ``method``."""
    matches = [item for name, item in document["paths"].items() if shape(name) == shape(path)]
    assert len(matches) == 1, f"{path}: {len(matches)} path items"
    found: dict[str, Any] = matches[0][method.lower()]
    return found


def parameters(op: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """An operation's inline parameters in one location, by name."""
    return {p["name"]: p for p in op["parameters"] if "$ref" not in p and p["in"] == where}


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow a local $ref."""
    while "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def schema_validator(document: dict[str, Any], name: str) -> OAS31Validator:
    """A validator for one of the document's component schemas."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return OAS31Validator(schema)


# -- the document -----------------------------------------------------------------------


async def test_document_is_valid_openapi_31(fault: FaultUpstream, tmp_path: Path) -> None:
    async with serving(fault, tmp_path) as (app, client):
        document = await fetch_document(client)
        again = await fetch_document(client)
    OpenAPIV31SpecValidator(document).validate()
    assert document["openapi"].startswith("3.1.")
    assert again == document
    # Built once per app and kept.
    assert openapi.OPENAPI_KEY in app.extensions
    operation_ids = [
        op["operationId"] for item in document["paths"].values() for op in item.values()
    ]
    assert len(operation_ids) == len(set(operation_ids))


async def test_every_route_of_the_url_map_appears(fault: FaultUpstream, tmp_path: Path) -> None:
    async with serving(fault, tmp_path) as (app, client):
        document = await fetch_document(client)
    rules = list(app.url_map.iter_rules())
    # The five endpoints of the test gateway file are rules too.
    assert sum(rule.endpoint.startswith("gateway_endpoint_") for rule in rules) == 5
    for rule in rules:
        methods = set(rule.methods or ()) - {"HEAD", "OPTIONS"}
        if rule.endpoint == "proxy.proxy":
            methods = set(PROXY_METHODS)
        for method in methods:
            op = operation(document, method, rule.rule)
            documented = {p["name"] for p in op["parameters"] if p.get("in") == "path"}
            assert len(documented) == len(_VARIABLE.findall(rule.rule)), (method, rule.rule)


async def test_generated_endpoints_with_their_parameters(
    fault: FaultUpstream, tmp_path: Path
) -> None:
    async with serving(fault, tmp_path) as (_app, client):
        document = await fetch_document(client)
    paths = document["paths"]
    assert {"/profiles/{user_id}", "/weather/{city}", "/notes/{note_id}"} <= set(paths)
    assert set(paths["/profiles/{user_id}"]) == {"get"}

    profile = paths["/profiles/{user_id}"]["get"]
    assert parameters(profile, "path")["user_id"]["schema"] == {"type": "integer", "minimum": 0}
    assert parameters(profile, "header")["Prefer"]["schema"]["examples"] == ["respond-async"]
    ok = profile["responses"]["200"]
    assert ok["headers"]["X-Fanout-Completed"] == {"$ref": "#/components/headers/Completed"}
    merged = ok["content"]["application/json"]["schema"]
    assert merged["required"] == ["user"]  # the required backend's group
    assert set(merged["properties"]) == {"user", "orders", "_errors"}
    accepted = profile["responses"]["202"]
    assert accepted["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Job"}
    assert accepted["links"]["status"]["operationId"] == "get_jobs_job_id"
    for status in ("502", "504"):
        failed = profile["responses"][status]
        assert failed["content"]["application/problem+json"]["schema"] == {
            "$ref": "#/components/schemas/AggregateProblem"
        }
        assert "X-Fanout-Completed" in failed["headers"]

    city = parameters(paths["/weather/{city}"]["get"], "path")["city"]
    assert city["schema"]["pattern"] == "^(?:[^/]{1,})$"
    note = paths["/notes/{note_id}"]["post"]
    assert parameters(note, "path")["note_id"]["schema"] == {"type": "string", "format": "uuid"}
    assert "application/json" in note["requestBody"]["content"]
    assert "413" in note["responses"]

    ratios = paths["/ratios/{ratio}/{band}"]["patch"]
    ratio, band = parameters(ratios, "path")["ratio"], parameters(ratios, "path")["band"]
    assert ratio["schema"]["pattern"] == r"^[0-9]+\.[0-9]+$"
    assert band["schema"]["enum"] == ["high", "low"]

    export = paths["/exports/{format}"]["get"]
    assert parameters(export, "path")["format"]["schema"]["pattern"] == "^(?:[^/]{3})$"
    # background = true: always a job, never a 200 or a synchronous 502.
    assert "202" in export["responses"]
    assert not {"200", "502", "504"} & set(export["responses"])
    assert "Prefer" not in parameters(export, "header")


async def test_proxy_jobs_probes_and_components(fault: FaultUpstream, tmp_path: Path) -> None:
    async with serving(fault, tmp_path) as (_app, client):
        document = await fetch_document(client)
    paths = document["paths"]
    proxy = paths["/proxy/{upstream}/{path}"]
    assert set(proxy) == {method.lower() for method in PROXY_METHODS}
    for op in proxy.values():
        assert parameters(op, "path")["upstream"]["schema"]["enum"] == ["demo", "fault"]
    assert "requestBody" in proxy["post"] and "requestBody" not in proxy["get"]
    assert "/proxy/{upstream}/" in paths

    jobs = paths["/jobs/{job_id}"]
    assert set(jobs) == {"get", "post", "delete"}
    assert parameters(jobs["post"], "path")["job_id"]["schema"]["enum"] == ["batch"]
    wait = parameters(jobs["get"], "query")["wait"]["schema"]
    assert wait == {"type": "number", "minimum": 0, "maximum": 60.0}
    assert "204" in jobs["delete"]["responses"]
    events = paths["/jobs/{job_id}/events"]["get"]["responses"]["200"]
    assert set(events["content"]) == {"text/event-stream"}
    assert "409" in paths["/jobs/{job_id}/cancel"]["post"]["responses"]
    assert {"200", "202", "409"} <= set(paths["/jobs/{job_id}/result"]["get"]["responses"])
    listing = parameters(paths["/jobs"]["get"], "query")
    assert set(listing) == {"status", "kind", "limit", "cursor"}
    assert listing["limit"]["schema"]["maximum"] == 100
    assert {"/healthz", "/readyz", "/demo/dashboard/{user_id}", "/openapi.json"} <= set(paths)
    assert "503" in paths["/readyz"]["get"]["responses"]

    schemas = document["components"]["schemas"]
    problem = schemas["ProblemDetails"]
    assert problem["required"] == ["type", "title", "status"]
    for responses in (paths["/jobs/{job_id}/result"]["get"]["responses"],):
        assert resolve(document, responses["404"])["content"]["application/problem+json"]
    job = schemas["Job"]
    assert set(job["required"]) == {
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
    }
    # No keys configured: no security anywhere.
    assert "security" not in document and "securitySchemes" not in document["components"]


async def test_real_answers_match_the_component_schemas(
    fault: FaultUpstream, tmp_path: Path
) -> None:
    async with serving(fault, tmp_path) as (_app, client):
        document = await fetch_document(client)
        job = schema_validator(document, "Job")
        problem = schema_validator(document, "ProblemDetails")
        async with client.get("/profiles/7", headers={"Prefer": "respond-async"}) as response:
            assert response.status == 202
            started = await response.json()
        job.validate(started)
        async with client.get(f"/jobs/{started['id']}?wait=5") as response:
            finished = await response.json()
        job.validate(finished)
        assert finished["status"] == "succeeded"
        async with client.get("/jobs?limit=5") as response:
            schema_validator(document, "JobList").validate(await response.json())
        async with client.post(f"/jobs/{started['id']}/cancel") as response:
            assert response.status == 409
            problem.validate(await response.json())
        async with client.get("/jobs/0123") as response:
            assert response.status == 404
            problem.validate(await response.json())


async def test_api_keys_declare_a_bearer_scheme_but_not_on_probes(
    fault: FaultUpstream, tmp_path: Path
) -> None:
    keys = f'\n[auth]\napi_keys = {{ ci = "{API_KEY}" }}\n'
    async with serving(fault, tmp_path, keys) as (_app, client):
        document = await fetch_document(client, Authorization=f"Bearer {API_KEY}")
        async with client.get("/openapi.json") as response:
            # Open without a key exactly when auth.OPEN_PATHS says so.
            assert response.status == (200 if "/openapi.json" in OPEN_PATHS else 401)
    OpenAPIV31SpecValidator(document).validate()
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key from [auth] api_keys.",
    }
    assert document["security"] == [{"bearer": []}]
    for path, item in document["paths"].items():
        for op in item.values():
            if path in OPEN_PATHS:
                assert op["security"] == [], path
                assert "401" not in op["responses"]
            else:
                assert "security" not in op, path
                assert op["responses"]["401"] == {"$ref": "#/components/responses/Unauthorized"}
    assert {"/healthz", "/readyz"} <= set(document["paths"]) & OPEN_PATHS


# -- schemathesis -----------------------------------------------------------------------

#: Responses to check: no 5xx, and status, media type, headers and body as documented.
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)
#: Examples per operation in the fuzzing phase (the other phases add their own cases).
MAX_EXAMPLES = 15
#: A fixed seed, so that a run is reproducible; another one explores other inputs.
SEED = 20261123
#: The long poll's maximum for the run: ?wait= may hold a request for 60 s.
RUN_MAX_WAIT_SECONDS = 0.5


def run_document(document: dict[str, Any]) -> dict[str, Any]:
    """The served document as the run uses it: shorter long polls, and inputs that exist."""
    for path, item in document["paths"].items():
        for op in item.values():
            for parameter in op["parameters"]:
                if parameter.get("name") == "wait":
                    parameter["schema"]["maximum"] = RUN_MAX_WAIT_SECONDS
                if path.startswith("/proxy/") and parameter.get("name") == "path":
                    # Paths the fault upstream has, so that the proxy is not only 404s.
                    parameter["examples"] = ["users/1", "echo/a", "json"]
    start = document["paths"]["/jobs/{job_id}"]["post"]["requestBody"]["content"]
    batch = {"upstream": "fault", "path": "/users/{item}", "items": [1, "a"], "concurrency": 2}
    # A job that starts, so that the stateful phase follows the links to the job routes.
    start["application/json"]["examples"] = {"batch": {"value": batch}}
    return document


# About 16 s on a quiet machine, 62 s with three busy loops beside it: the
# limits leave room for a slower CI machine.
@pytest.mark.timeout(660)
def test_schemathesis_finds_no_server_error_nor_schema_violation(tmp_path: Path) -> None:
    """schemathesis run (all phases, stateful included) over the served document."""
    with live_gateway(tmp_path) as gateway:
        document = run_document(gateway.get_json("/openapi.json"))
        location = tmp_path / "openapi-run.json"
        location.write_text(json.dumps(document))
        command = [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            str(location),
            f"--url={gateway.url}",
            f"--checks={','.join(CHECKS)}",
            # A server-sent event stream stays open until its job ends: no response to check.
            "--exclude-path-regex=/events$",
            f"--max-examples={MAX_EXAMPLES}",
            f"--seed={SEED}",
            "--mode=all",
            "--workers=1",
            "--request-timeout=10",
            "--generation-database=none",
            "--no-color",
        ]
        # The working directory takes schemathesis' cache and reports.
        finished = subprocess.run(
            command, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False
        )
    output = finished.stdout + finished.stderr
    assert finished.returncode == 0, output
    summary = run_summary(output)  # raises unless every operation got cases, all passing
    methods = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
    operations = [
        (path, method)
        for path, item in document["paths"].items()
        for method in item
        if method in methods and not path.endswith("/events")
    ]
    assert summary.operations_tested == len(operations)


#: The end of a run's output, with the numbers left to fill in.
SUMMARY = """
API Operations:
  Selected: {selected}/32
  Tested: {tested}

Test cases:
  {generated} generated, {passed} passed{skipped}

Seed: 20261123
"""


def test_the_run_summary_is_read() -> None:
    text = SUMMARY.format(selected=31, tested=31, generated=1119, passed=1119, skipped="")
    summary = run_summary(text)
    assert (summary.operations_tested, summary.cases_generated) == (31, 1119)
    skipped = SUMMARY.format(selected=31, tested=31, generated=20, passed=18, skipped=", 2 skipped")
    assert run_summary(skipped).cases_passed == 18


@pytest.mark.parametrize(
    "numbers",
    [
        {"selected": 31, "tested": 31, "generated": 0, "passed": 0},  # nothing generated
        {"selected": 31, "tested": 0, "generated": 5, "passed": 5},  # no operation tested
        {"selected": 31, "tested": 30, "generated": 90, "passed": 90},  # one left out
        {"selected": 31, "tested": 31, "generated": 90, "passed": 89},  # one not passed
    ],
)
def test_a_run_that_tested_nothing_or_not_everything_is_refused(numbers: dict[str, int]) -> None:
    with pytest.raises(EmptyRun):
        run_summary(SUMMARY.format(**numbers, skipped=""))


def test_an_output_without_a_summary_is_refused() -> None:
    with pytest.raises(EmptyRun):
        run_summary("Schemathesis v4.32.5\nError: could not load the schema\n")
