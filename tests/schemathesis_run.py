"""The real gateway served for a schemathesis run, and what the run is configured with.

Schemathesis calls the server synchronously (requests), so the gateway, the
fault upstream and the demo upstream run on their own event loop in a
background thread for the duration of the run.
"""

from __future__ import annotations

import asyncio
import asyncio.base_events
import concurrent.futures
import json
import re
import threading
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from app import create_app
from fanout.bridge import ASGIBridge, BridgeFlask
from fanout.demo.upstream import build_demo_app
from tests.fault_upstream import fault_upstream
from tests.serving import hypercorn_serving

#: A gateway file using every kind of route variable, endpoints with a body and
#: a background endpoint. FAULT_URL and DEMO_URL are replaced by the upstreams'
#: addresses. Its backends answer 200 to any value of the route's variables
#: (the fault upstream's /users/{id} takes any segment; /echo/{tail} only
#: values without a newline, such as uuids and numbers), so a 5xx is the gateway's.
#: It registers the demo view and a user's blueprint (tests/app_views.py).
GATEWAY_TOML = """
[app]
blueprints = ["handlers.demo:blueprint", "tests.app_views:blueprint"]

[upstreams.fault]
base_url = "FAULT_URL"
internal = true

[upstreams.demo]
base_url = "DEMO_URL"
internal = true

[[endpoints]]
path = "/profiles/<int:user_id>"
  [[endpoints.backends]]
  upstream = "fault"
  path = "/users/{user_id}"
  group = "user"
  required = true
  [[endpoints.backends]]
  upstream = "fault"
  path = "/orders?user={user_id}"
  group = "orders"

[[endpoints]]
path = "/weather/<city>"
cache_ttl = 60
  [[endpoints.backends]]
  upstream = "fault"
  path = "/users/{city}"

[[endpoints]]
path = "/notes/<uuid:note_id>"
method = "POST"
  [[endpoints.backends]]
  upstream = "fault"
  path = "/echo/{note_id}"
  group = "echo"
  required = true

[[endpoints]]
path = "/ratios/<float:ratio>/<any(low,high):band>"
method = "PATCH"
  [[endpoints.backends]]
  upstream = "fault"
  path = "/echo/{ratio}/{band}"

[[endpoints]]
path = "/exports/<string(length=3):format>"
background = true
  [[endpoints.backends]]
  upstream = "fault"
  path = "/users/{format}"
  group = "export"
  required = true
"""


def gateway_toml(fault_url: str, demo_url: str, extra: str = "") -> str:
    """The test gateway file, pointed at the given upstreams."""
    return GATEWAY_TOML.replace("FAULT_URL", fault_url).replace("DEMO_URL", demo_url) + extra


def served_app(config_path: Path, settings: Mapping[str, Any] | None = None) -> BridgeFlask:
    """The real app for a gateway file (in-memory jobs, quick polls)."""
    return create_app(
        {"CONFIG": str(config_path), "JOB_STORE": "memory://", "JOB_POLL_SECONDS": 0.1}
        | dict(settings or {})
    )


@asynccontextmanager
async def demo_upstream() -> AsyncIterator[str]:
    """The bundled demo upstream, answering at once, on 127.0.0.1:0; yield its URL."""
    runner = web.AppRunner(build_demo_app(0.0), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server  # aiohttp has no public accessor for the bound port
        assert isinstance(server, asyncio.base_events.Server)
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        await runner.cleanup()


@dataclass(frozen=True)
class LiveGateway:
    """A gateway served from a background thread."""

    url: str
    app: BridgeFlask

    def get_json(self, path: str, headers: Mapping[str, str] | None = None) -> Any:
        """GET ``path`` and decode its JSON body."""
        request = urllib.request.Request(f"{self.url}{path}", headers=dict(headers or {}))
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.load(answer)


@contextmanager
def live_gateway(directory: Path, extra_config: str = "") -> Iterator[LiveGateway]:
    """Serve the test gateway, its upstreams included, until the block ends."""
    started: concurrent.futures.Future[tuple[LiveGateway, Callable[[], object]]] = (
        concurrent.futures.Future()
    )

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        async with fault_upstream() as fault, demo_upstream() as demo_url:
            path = directory / "gateway.toml"
            path.write_text(gateway_toml(fault.url, demo_url, extra_config))
            app = served_app(path, {"DEMO_UPSTREAM_URL": demo_url})
            async with hypercorn_serving(ASGIBridge(app)) as url:
                started.set_result(
                    (LiveGateway(url, app), lambda: loop.call_soon_threadsafe(stopping.set))
                )
                await stopping.wait()

    def run() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:  # reported to the waiting thread, which re-raises it
            if not started.done():
                started.set_exception(exc)
            raise

    thread = threading.Thread(target=run, name="live-gateway", daemon=True)
    thread.start()
    gateway, stop = started.result(timeout=30)
    try:
        yield gateway
    finally:
        stop()
        thread.join(timeout=30)


@dataclass(frozen=True)
class RunSummary:
    """What a schemathesis run's summary says it did."""

    operations_selected: int
    operations_tested: int
    cases_generated: int
    cases_passed: int


class EmptyRun(AssertionError):
    """The run's summary is missing, or it tested nothing (or not everything selected)."""


_OPERATIONS = re.compile(r"^\s*Selected:\s+(\d+)/\d+\s*\n\s*Tested:\s+(\d+)\s*$", re.MULTILINE)
_CASES = re.compile(
    r"^Test cases:\s*\n\s*(\d+) generated, (\d+) passed(?:, (\d+) skipped)?\s*$", re.MULTILINE
)


def run_summary(output: str) -> RunSummary:
    """Read a run's summary; raise EmptyRun unless every selected operation got cases."""
    operations, cases = _OPERATIONS.search(output), _CASES.search(output)
    if operations is None or cases is None:
        raise EmptyRun(f"no summary of operations and test cases in the output:\n{output}")
    summary = RunSummary(
        operations_selected=int(operations[1]),
        operations_tested=int(operations[2]),
        cases_generated=int(cases[1]),
        cases_passed=int(cases[2]),
    )
    skipped = int(cases[3] or 0)
    if summary.cases_generated == 0 or summary.cases_passed == 0:
        raise EmptyRun(f"the run generated no test case that ran: {summary}")
    if summary.cases_passed + skipped != summary.cases_generated:
        raise EmptyRun(f"not every generated case passed: {summary}")
    if summary.operations_tested == 0 or summary.operations_tested != summary.operations_selected:
        raise EmptyRun(f"some selected operations were never tested: {summary}")
    return summary
