"""The gateway file's ``[app]`` table: your own blueprints and job kinds, served by the real stack.

Each test writes the user's module beside the gateway file in ``tmp_path``
(the project directory), as a user would beside theirs, under a name of its
own: imported modules stay in ``sys.modules``.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import secrets
import sys
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator

from app import create_app
from fanout.bridge import ASGIBridge
from fanout.core.config import ConfigError
from fanout.jobs import InvalidParams, JobContext, JobKind, StoredResponse
from fanout.jobs.kinds import InvalidParams as KindsInvalidParams
from fanout.jobs.kinds import JobKind as KindsJobKind
from fanout.jobs.model import StoredResponse as ModelStoredResponse
from fanout.jobs.registry import JobContext as RegistryJobContext
from handlers.resources import register_job_kind
from tests.gateway_serving import gateway_serving
from tests.processes import ROOT, run_failing_gateway
from tests.serving import hypercorn_serving
from tests.upstream import FakeUpstream

API_KEY = "0123456789abcdef-app-table"
SHIPPED = Path(__file__).resolve().parent.parent / "gateway.toml"
#: The README's command, as installed in the virtualenv.
FANOUT = Path(sys.executable).with_name("fanout")

#: A blueprint as a user writes one: an async view calling a configured
#: upstream, a view that refuses, one that fails.
VIEWS = '''
"""A user's views."""

import asyncio

from flask import Blueprint, Response, abort, jsonify

from handlers.request_ids import HEADER, current_request_id
from handlers.resources import upstreams

blueprint = Blueprint("shop", __name__, url_prefix="/shop")


@blueprint.get("/slow/<int:ms>")
async def slow(ms: int) -> Response:
    """Ask the upstream to take its time.

    The answer is the upstream's.
    """
    deadline = asyncio.get_running_loop().time() + 5
    reply = await upstreams()["up"].fetch(
        "GET", f"/delay?ms={ms}", deadline=deadline, headers={HEADER: current_request_id()}
    )
    return jsonify(upstream=reply.raise_for_status().json())


@blueprint.get("/items/<item>")
async def item(item: str) -> Response:
    """No item exists."""
    abort(404, description=f"There is no item {item!r}.")


@blueprint.post("/broken")
def broken() -> Response:
    """Always fails."""
    raise RuntimeError("the view is broken")
'''

#: A job kind as a user writes one: it reports progress, then waits for the
#: test to release it (the gateway runs on the test's loop), then finishes.
JOBS = '''
"""A user's job kind."""

import asyncio
from typing import Any

from fanout.jobs import InvalidParams, JobBody, JobContext, JobKind, StoredResponse

#: Set by the test to let a waiting job finish.
RELEASE = asyncio.Event()


def prepare(params: Any) -> JobBody:
    if not isinstance(params, dict) or not isinstance(params.get("steps"), int):
        raise InvalidParams("steps must be a whole number")
    steps = params["steps"]

    async def run(context: JobContext) -> StoredResponse:
        await context.progress(1, steps, "first step done")
        await RELEASE.wait()
        await context.progress(steps, steps, "all done")
        return StoredResponse.from_json({"steps": steps, "job": context.job_id})

    return run


count = JobKind("count", prepare)
'''


@pytest.fixture(autouse=True)
def _own_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # Building an app puts the project directory on sys.path: undone after each test.
    monkeypatch.setattr(sys, "path", list(sys.path))


def write_module(directory: Path, source: str) -> str:
    """Write ``source`` as a new module in ``directory``; return its (unique) name."""
    name = f"user_{secrets.token_hex(6)}"
    (directory / f"{name}.py").write_text(textwrap.dedent(source))
    return name


def app_table(*, blueprints: tuple[str, ...] = (), job_kinds: tuple[str, ...] = ()) -> str:
    """The ``[app]`` table of a gateway file."""
    return (
        f"[app]\nblueprints = {json.dumps(list(blueprints))}\n"
        f"job_kinds = {json.dumps(list(job_kinds))}\n"
    )


def upstream_table(url: str) -> str:
    """A configured upstream named ``up`` (on loopback, so internal)."""
    return f'[upstreams.up]\nbase_url = "{url}"\ninternal = true\n'


def operation(document: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    """The operation at ``path`` for ``method``."""
    found: dict[str, Any] = document["paths"][path][method]
    return found


# -- blueprints ---------------------------------------------------------------------------


async def test_a_blueprint_from_the_project_directory_is_served_like_the_built_in_routes(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    views = write_module(tmp_path, VIEWS)
    config = app_table(blueprints=(f"{views}:blueprint",)) + upstream_table(upstream.url)
    async with gateway_serving(config, tmp_path) as gateway:
        client = gateway.client
        async with client.get("/shop/slow/10", headers={"X-Request-ID": "shop-1"}) as response:
            assert response.status == 200
            assert await response.json() == {"upstream": {"ms": 10, "n": 1}}
            assert response.headers["X-Request-ID"] == "shop-1"
        # The request id went on to the upstream call.
        assert upstream.request_ids == ["shop-1"]
        async with client.get("/shop/items/hat") as response:
            assert response.status == 404
            assert response.content_type == "application/problem+json"
            problem = await response.json()
            assert problem["detail"] == "There is no item 'hat'."
            assert response.headers["X-Request-ID"]
        async with client.post("/shop/broken") as response:
            assert response.status == 500
            assert response.content_type == "application/problem+json"
            assert (await response.json())["status"] == 500
        async with client.get("/metrics") as response:
            metrics = await response.text()
        # Counted like every route, by its rule.
        assert 'route="/shop/slow/<int:ms>"' in metrics, metrics


async def test_a_blueprint_needs_the_api_key_and_is_in_the_openapi_document(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    views = write_module(tmp_path, VIEWS)
    config = (
        app_table(blueprints=(f"{views}:blueprint",))
        + upstream_table(upstream.url)
        + f'[auth]\napi_keys = {{ shop = "{API_KEY}" }}\n'
    )
    key = {"Authorization": f"Bearer {API_KEY}"}
    async with gateway_serving(config, tmp_path) as gateway:
        async with gateway.client.get("/shop/slow/0") as response:
            assert response.status == 401
            assert response.content_type == "application/problem+json"
            assert response.headers["X-Request-ID"]
        assert upstream.requests == 0
        async with gateway.client.get("/shop/slow/0", headers=key) as response:
            assert response.status == 200
        async with gateway.client.get("/openapi.json", headers=key) as response:
            document = await response.json()
    OpenAPIV31SpecValidator(document).validate()
    slow = operation(document, "/shop/slow/{ms}", "get")
    assert slow["summary"] == "Ask the upstream to take its time."
    assert slow["description"] == "The answer is the upstream's."
    assert slow["tags"] == ["shop"]
    ms = next(p for p in slow["parameters"] if p.get("in") == "path")
    assert ms == {
        "name": "ms",
        "in": "path",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    }
    assert {"200", "401", "404", "default"} <= set(slow["responses"])
    default = slow["responses"]["default"]["content"]
    assert default["application/problem+json"]["schema"] == {
        "$ref": "#/components/schemas/ProblemDetails"
    }
    # The document's security applies: the operation does not opt out.
    assert document["security"] == [{"bearer": []}] and "security" not in slow
    broken = operation(document, "/shop/broken", "post")
    assert broken["summary"] == "Always fails."
    assert "requestBody" in broken and "413" in broken["responses"]
    assert "/shop/items/{item}" in document["paths"]


# -- job kinds ----------------------------------------------------------------------------


async def test_a_job_kind_starts_reports_progress_and_finishes_with_its_result(
    tmp_path: Path,
) -> None:
    jobs = write_module(tmp_path, JOBS)
    config = app_table(job_kinds=(f"{jobs}:count",)) + '[jobs]\nstore = "memory://"\n'
    async with gateway_serving(config, tmp_path) as gateway:
        client = gateway.client
        async with client.post("/jobs/count", json={"steps": "many"}) as response:
            assert response.status == 400
            assert (await response.json())["detail"] == "steps must be a whole number"
        async with client.post("/jobs/count", json={"steps": 3}) as response:
            assert response.status == 202
            job = await response.json()
        assert job["kind"] == "count"
        events = await client.get(f"/jobs/{job['id']}/events")
        # The first step's progress is seen while the job waits (it cannot finish unreleased).
        seen: list[dict[str, Any]] = []
        async for line in events.content:
            if line.startswith(b"data:"):
                seen.append(json.loads(line[5:]))
                if seen[-1]["progress"]["done"] == 1:
                    break
        assert seen[-1]["status"] == "running"
        assert seen[-1]["progress"] == {"done": 1, "total": 3, "message": "first step done"}
        async with client.get(f"/jobs/{job['id']}") as response:
            assert (await response.json())["progress"]["done"] == 1
        sys.modules[jobs].RELEASE.set()
        async for line in events.content:
            if line.startswith(b"data:"):
                seen.append(json.loads(line[5:]))
        events.release()
        assert seen[-1]["status"] == "succeeded"
        assert seen[-1]["progress"] == {"done": 3, "total": 3, "message": "all done"}
        async with client.get(f"/jobs/{job['id']}/result") as response:
            assert response.status == 200
            assert await response.json() == {"steps": 3, "job": job["id"]}
        async with client.get("/openapi.json") as response:
            document = await response.json()
    kinds = operation(document, "/jobs/{job_id}", "post")["parameters"]
    kind = next(p for p in kinds if p.get("name") == "job_id")
    assert kind["schema"]["enum"] == ["batch", "count"]


def test_the_public_jobs_module_is_the_same_types_as_their_homes() -> None:
    assert JobKind is KindsJobKind
    assert InvalidParams is KindsInvalidParams
    assert StoredResponse is ModelStoredResponse
    assert JobContext is RegistryJobContext
    answer = StoredResponse.from_json({"a": [1]}, status=201)
    assert answer == StoredResponse(201, (("Content-Type", "application/json"),), b'{"a": [1]}')


# -- the demo view is one of them ---------------------------------------------------------


async def test_without_the_demo_blueprint_there_is_no_demo_route_nor_its_document(
    tmp_path: Path,
) -> None:
    async with gateway_serving(app_table(), tmp_path) as gateway:
        async with gateway.client.get("/demo/dashboard/1") as response:
            assert response.status == 404
            assert response.content_type == "application/problem+json"
        async with gateway.client.get("/openapi.json") as response:
            document = await response.json()
    assert not [path for path in document["paths"] if path.startswith("/demo")]
    OpenAPIV31SpecValidator(document).validate()


async def test_the_shipped_gateway_file_serves_the_demo_view(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    shipped = SHIPPED.read_text()
    async with gateway_serving(shipped, tmp_path) as gateway:
        rules = {rule.rule: rule.endpoint for rule in gateway.app.url_map.iter_rules()}
        assert rules["/demo/dashboard/<int:user_id>"] == "demo.dashboard"
        async with gateway.client.get("/openapi.json") as response:
            document = await response.json()
    dashboard = operation(document, "/demo/dashboard/{user_id}", "get")
    # The hand-written description of the demo view, not the generic one.
    assert "recommendations" in json.dumps(dashboard["responses"]["200"])


# -- bad entries are config errors --------------------------------------------------------


def build(directory: Path, config: str) -> None:
    """Build the app for a gateway file in ``directory``."""
    path = directory / "gateway.toml"
    path.write_text(config)
    create_app({"CONFIG": str(path)})


def refused(directory: Path, config: str) -> ConfigError:
    """The config error building the app gives."""
    with pytest.raises(ConfigError) as caught:
        build(directory, config)
    assert caught.value.source == str(directory / "gateway.toml")
    return caught.value


def test_a_missing_module_is_a_config_error_naming_the_entry(tmp_path: Path) -> None:
    error = refused(
        tmp_path, app_table(blueprints=("handlers.demo:blueprint", "shop_nowhere.views:bp"))
    )
    assert error.key_path == "app.blueprints[1]"
    assert error.problem == "cannot import 'shop_nowhere.views:bp' (No module named 'shop_nowhere')"
    assert str(error) == f"{tmp_path / 'gateway.toml'}: app.blueprints[1]: {error.problem}"


def test_a_missing_attribute_is_a_config_error(tmp_path: Path) -> None:
    views = write_module(tmp_path, VIEWS)
    error = refused(tmp_path, app_table(blueprints=(f"{views}:bp",)))
    assert error.key_path == "app.blueprints[0]"
    assert error.problem == f"cannot import '{views}:bp' (module '{views}' has no attribute 'bp')"
    error = refused(tmp_path, app_table(job_kinds=(f"{views}:blueprint.nope",)))
    assert error.key_path == "app.job_kinds[0]"
    assert "(a flask.blueprints.Blueprint has no attribute 'nope')" in error.problem


def test_an_object_of_the_wrong_type_is_a_config_error(tmp_path: Path) -> None:
    views = write_module(tmp_path, VIEWS)
    jobs = write_module(tmp_path, JOBS)
    error = refused(tmp_path, app_table(blueprints=(f"{views}:slow",)))
    assert error.key_path == "app.blueprints[0]"
    assert error.problem == f"'{views}:slow' is a function; expected a flask.Blueprint"
    error = refused(tmp_path, app_table(job_kinds=(f"{jobs}:count", f"{views}:blueprint")))
    assert error.key_path == "app.job_kinds[1]"
    assert error.problem == (
        f"'{views}:blueprint' is a flask.blueprints.Blueprint; expected a fanout.jobs.JobKind"
    )


def test_a_module_that_raises_is_a_config_error_saying_where(tmp_path: Path) -> None:
    raising = write_module(tmp_path, "import json\nraise RuntimeError('no\\n  database')\n")
    error = refused(tmp_path, app_table(job_kinds=(f"{raising}:kind",)))
    assert error.key_path == "app.job_kinds[0]"
    assert error.problem == (
        f"cannot import '{raising}:kind' (RuntimeError: no database, at {tmp_path / raising}.py:2)"
    )
    invalid = write_module(tmp_path, "def broken(:\n")
    error = refused(tmp_path, app_table(blueprints=(f"{invalid}:blueprint",)))
    assert error.problem.startswith(f"cannot import '{invalid}:blueprint' (SyntaxError: ")
    missing_dependency = write_module(tmp_path, "import no_such_dependency_here\n")
    error = refused(tmp_path, app_table(blueprints=(f"{missing_dependency}:blueprint",)))
    assert error.problem.endswith("(No module named 'no_such_dependency_here')")


def test_names_already_taken_are_config_errors(tmp_path: Path) -> None:
    jobs = write_module(tmp_path, JOBS)
    clash = write_module(
        tmp_path,
        """
        from flask import Blueprint

        from fanout.jobs import JobKind

        jobs = Blueprint("jobs", __name__)
        health = Blueprint("mine", __name__)
        health.add_url_rule("/healthz", "healthz", lambda: "mine")
        batch = JobKind("batch", lambda params: None)
        slashed = JobKind("a/b", lambda params: None)
        """,
    )
    error = refused(tmp_path, app_table(blueprints=(f"{clash}:jobs",)))
    assert error.key_path == "app.blueprints[0]"
    assert "cannot register the blueprint: The name 'jobs' is already registered" in error.problem
    error = refused(tmp_path, app_table(blueprints=(f"{clash}:health",)))
    assert error.problem == "GET /healthz (mine.healthz) clashes with health.healthz (GET /healthz)"
    error = refused(tmp_path, app_table(job_kinds=(f"{jobs}:count", f"{clash}:batch")))
    assert error.key_path == "app.job_kinds[1]"
    assert error.problem == "job kind 'batch' is already registered"
    error = refused(tmp_path, app_table(job_kinds=(f"{clash}:slashed",)))
    assert error.problem.startswith("invalid job kind name 'a/b'")


def test_a_blueprint_route_clashing_with_an_endpoint_of_the_gateway_file_is_refused(
    tmp_path: Path,
) -> None:
    views = write_module(tmp_path, VIEWS)
    endpoint = """
[upstreams.up]
base_url = "http://127.0.0.1:9"
internal = true

[[endpoints]]
path = "/shop/slow/<int:delay>"
  [[endpoints.backends]]
  upstream = "up"
  path = "/delay?ms={delay}"
"""
    error = refused(tmp_path, app_table(blueprints=(f"{views}:blueprint",)) + endpoint)
    assert error.key_path == "app.blueprints[0]"
    assert error.problem == (
        "GET /shop/slow/<int:ms> (shop.slow) clashes with endpoints[0] (GET /shop/slow/<int:delay>)"
    )


def test_the_project_directory_is_found_from_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    views = write_module(project, VIEWS)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = project / "gateway.toml"
    path.write_text(app_table(blueprints=(f"{views}:blueprint",)))
    app = create_app({"CONFIG": str(path)})
    assert "shop.slow" in app.view_functions
    assert sys.path[0] == str(project)
    # Once only, however many apps are built.
    create_app({"CONFIG": str(path)})
    assert sys.path.count(str(project)) == 1


async def test_editing_app_py_still_registers_views_and_kinds_in_code(tmp_path: Path) -> None:
    # What a user who prefers code writes in create_app(): the same objects, no [app].
    views = write_module(tmp_path, VIEWS)
    jobs = write_module(tmp_path, JOBS)
    sys.path.insert(0, str(tmp_path))
    path = tmp_path / "gateway.toml"
    path.write_text('[jobs]\nstore = "memory://"\n')
    app = create_app({"CONFIG": str(path), "JOB_POLL_SECONDS": 0.1})
    app.register_blueprint(importlib.import_module(views).blueprint)
    register_job_kind(app, importlib.import_module(jobs).count)
    async with (
        hypercorn_serving(ASGIBridge(app)) as url,
        aiohttp.ClientSession(url) as client,
    ):
        async with client.get("/shop/items/hat") as response:
            assert response.status == 404
            assert response.content_type == "application/problem+json"
        sys.modules[jobs].RELEASE.set()
        async with client.post("/jobs/count", json={"steps": 2}) as response:
            job = await response.json()
        async with client.get(f"/jobs/{job['id']}?wait=10") as response:
            assert (await response.json())["status"] == "succeeded"
        async with client.get("/openapi.json") as response:
            assert "/shop/items/{item}" in (await response.json())["paths"]


# -- a bad entry stops the real processes --------------------------------------------------


@pytest.mark.parametrize("key", ["blueprints", "job_kinds"])
async def test_hypercorn_exits_non_zero_naming_a_bad_entry(tmp_path: Path, key: str) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(f'[app]\n{key} = ["nowhere_{key}.views:thing"]\n')
    returncode, stderr = await run_failing_gateway({**os.environ, "FANOUT_CONFIG": str(path)})
    assert returncode != 0
    line = (
        f"{path}: app.{key}[0]: cannot import 'nowhere_{key}.views:thing' "
        f"(No module named 'nowhere_{key}')"
    )
    assert line in stderr, stderr


@pytest.mark.timeout(120)
async def test_the_launcher_exits_non_zero_naming_a_bad_entry(tmp_path: Path) -> None:
    views = write_module(tmp_path, VIEWS)
    path = tmp_path / "gateway.toml"
    path.write_text(app_table(blueprints=(f"{views}:nothing",)))
    process = await asyncio.create_subprocess_exec(
        str(FANOUT),
        "--no-demo",
        "--bind",
        "127.0.0.1:0",
        cwd=ROOT,
        env={**os.environ, "FANOUT_CONFIG": str(path)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, raw_stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode != 0
    line = (
        f"{path}: app.blueprints[0]: cannot import '{views}:nothing' "
        f"(module '{views}' has no attribute 'nothing')"
    )
    # One line, checked before Hypercorn starts: no worker's traceback.
    assert raw_stderr.decode().splitlines() == [f"fanout: {line}"], raw_stderr.decode()
