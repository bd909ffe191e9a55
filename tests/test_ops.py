"""Operations: /metrics (one process and two workers) and structured JSON logs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from fanout.process.logs import APP_LOGGERS
from tests.fault_upstream import FaultUpstream
from tests.gateway_serving import Gateway, gateway_serving
from tests.processes import start_gateway

ROOT = Path(__file__).resolve().parent.parent


def _config(upstream_url: str) -> str:
    return f"""
[upstreams.fault]
base_url = "{upstream_url}"
internal = true
timeout = 5.0

[upstreams.flaky]
base_url = "{upstream_url}"
internal = true
circuit_breaker = {{ failures = 2, reset_after = 60.0 }}

[[endpoints]]
path = "/profile/<user_id>"
  [[endpoints.backends]]
  upstream = "fault"
  path = "/users/{{user_id}}"
  group = "user"
  [[endpoints.backends]]
  upstream = "flaky"
  path = "/storm"
  group = "flaky"
"""


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(text: str) -> Samples:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def _scrape(gateway: Gateway) -> Samples:
    async with gateway.client.get("/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return _samples(await response.text())


async def test_metrics_count_requests_upstream_calls_jobs_and_circuits(
    fault: FaultUpstream, tmp_path: Path
) -> None:
    async with gateway_serving(_config(fault.url), tmp_path) as gateway:
        for n in range(3):
            async with gateway.client.get(f"/profile/{n}") as response:
                assert response.status == 200
        batch = {"upstream": "fault", "path": "/users/{item}", "items": [1, 2]}
        async with gateway.client.post("/jobs/batch", json=batch) as response:
            job = await response.json()
        async with gateway.client.get(f"/jobs/{job['id']}?wait=5") as response:
            assert (await response.json())["status"] == "succeeded"
        for method in ("XFOO", "XBAR"):
            async with gateway.client.request(method, "/healthz") as response:
                assert response.status == 405
        await asyncio.sleep(0.3)  # one event-loop lag sample is taken every 0.25 s
        samples = await _scrape(gateway)
    route = (("method", "GET"), ("route", "/profile/<user_id>"), ("status", "200"))
    assert samples[("fanout_http_requests_total", route)] == 3
    assert samples[("fanout_http_request_seconds_count", route[:2])] == 3
    ok = (("outcome", "ok"), ("upstream", "fault"))
    assert samples[("fanout_upstream_calls_total", ok)] == 3 + 2  # users, and the job's two
    failing = (("outcome", "error_status"), ("upstream", "flaky"))
    assert samples[("fanout_upstream_calls_total", failing)] == 2  # then the circuit opened
    refused = (("outcome", "circuit_open"), ("upstream", "flaky"))
    assert samples[("fanout_upstream_calls_total", refused)] == 1
    assert samples[("fanout_circuit_state", (("upstream", "flaky"),))] == 2  # open
    assert samples[("fanout_circuit_state", (("upstream", "fault"),))] == 0  # closed
    assert (
        samples[("fanout_jobs_finished_total", (("kind", "batch"), ("status", "succeeded")))] == 1
    )
    assert samples[("fanout_jobs_active", (("kind", "batch"), ("status", "running")))] == 0
    assert samples[("fanout_event_loop_lag_seconds_count", ())] >= 1
    assert ("fanout_http_requests_in_flight", ()) in samples
    # Client-chosen methods do not become label values (each would be a series).
    other = (("method", "other"), ("route", "unmatched"), ("status", "405"))
    assert samples[("fanout_http_requests_total", other)] == 2
    assert not [key for key in samples if ("method", "XFOO") in key[1]]


async def test_metrics_of_two_workers_are_scraped_together(
    fault: FaultUpstream, tmp_path: Path
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(_config(fault.url))
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {**os.environ, "FANOUT_CONFIG": str(config), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    process, url = await start_gateway(env, "--workers", "2")
    sent = 0
    try:
        # Which worker accepts a connection is the kernel's choice, and the
        # second may still be starting when the first answers /readyz: send
        # batches of new connections until both workers have written samples.
        for _ in range(100):
            answers = await asyncio.gather(*(_fresh_get(f"{url}/healthz") for _ in range(20)))
            assert answers == [200] * 20
            sent += 20
            if len(_counter_pids(metrics_dir)) == 2 and sent >= 60:
                break
            await asyncio.sleep(0.1)
        scrapes = []
        for _ in range(2):
            async with aiohttp.ClientSession() as client, client.get(f"{url}/metrics") as response:
                scrapes.append(_samples(await response.text()))
    finally:
        process.send_signal(signal.SIGTERM)
        await process.communicate()
    assert len(_counter_pids(metrics_dir)) == 2  # both workers served and wrote samples
    key = (
        "fanout_http_requests_total",
        (("method", "GET"), ("route", "/healthz"), ("status", "200")),
    )
    assert scrapes[0][key] == scrapes[1][key] == sent  # every worker's requests, from either


async def _fresh_get(url: str) -> int:
    """GET ``url`` on a connection of its own; the status."""
    async with aiohttp.ClientSession() as client, client.get(url) as response:
        return response.status


def _counter_pids(metrics_dir: Path) -> set[str]:
    """The processes that wrote counter samples into the multiprocess directory."""
    return {path.stem.rsplit("_", 1)[-1] for path in metrics_dir.glob("counter_*.db")}


async def test_every_log_line_of_a_request_carries_its_id(
    fault: FaultUpstream, tmp_path: Path
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(_config(fault.url))
    # DEBUG: successful upstream calls are logged at that level only.
    env = {**os.environ, "FANOUT_CONFIG": str(config), "FANOUT_LOG_LEVEL": "DEBUG"}
    process, url = await start_gateway(env, capture_stderr=True)
    try:
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{url}/profile/5", headers={"X-Request-ID": "trace-42"}) as r:
                assert r.status == 200
            async with client.get(f"{url}/profile/6", headers={"X-Request-ID": "other-43"}) as r:
                assert r.status == 200
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await process.communicate()
    lines = [json.loads(line) for line in stderr.decode().splitlines() if line.strip()]
    mine = [line for line in lines if line.get("request_id") == "trace-42"]
    access = [line for line in mine if line["logger"] == "hypercorn.access"]
    calls = [line for line in mine if line["message"] == "upstream call"]
    assert len(access) == 1 and access[0]["path"] == "/profile/5" and access[0]["status"] == 200
    assert {(c["upstream"], c["status"], c["level"]) for c in calls} == {
        ("fault", 200, "debug"),
        ("flaky", 503, "warning"),
    }
    assert all("duration_ms" in c for c in calls)
    # The other request's lines are not mixed in.
    assert not [line for line in mine if "/profile/6" in json.dumps(line)]


def test_log_level_reaches_every_top_level_module() -> None:
    modules = {path.stem for path in ROOT.glob("*.py")}
    packages = {path.parent.name for path in ROOT.glob("*/__init__.py")}
    assert (modules | packages) - {"tests", "bench"} == set(APP_LOGGERS)


def _outcomes_config(upstream_url: str) -> str:
    port = upstream_url.rsplit(":", 1)[1]
    return f"""
[upstreams.fault]
base_url = "{upstream_url}"
internal = true

[upstreams.slow]
base_url = "{upstream_url}"
internal = true
timeout = 0.3
connect_timeout = 0.3

# Loopback, and not declared internal: refused before any connection.
[upstreams.outside]
base_url = "http://127.0.0.2:{port}"

[[endpoints]]
path = "/outcomes"
  [[endpoints.backends]]
  upstream = "fault"
  path = "/users/1"
  group = "ok"
  [[endpoints.backends]]
  upstream = "slow"
  path = "/never"
  group = "timeout"
  [[endpoints.backends]]
  upstream = "fault"
  path = "/reset"
  group = "error"
  [[endpoints.backends]]
  upstream = "outside"
  path = "/users/1"
  group = "blocked"
"""


async def test_upstream_timeouts_errors_and_blocked_calls_are_counted(
    fault: FaultUpstream, tmp_path: Path
) -> None:
    async with gateway_serving(_outcomes_config(fault.url), tmp_path) as gateway:
        async with gateway.client.get("/outcomes") as response:
            assert response.status == 200
            assert response.headers["X-Fanout-Completed"] == "false"
            assert set((await response.json())["_errors"]) == {"timeout", "error", "blocked"}
        samples = await _scrape(gateway)
    calls = {
        (dict(labels)["upstream"], dict(labels)["outcome"]): value
        for (name, labels), value in samples.items()
        if name == "fanout_upstream_calls_total"
    }
    assert calls == {
        ("fault", "ok"): 1,
        ("slow", "timeout"): 1,
        ("fault", "error"): 1,
        ("outside", "blocked"): 1,
    }
    seconds = {
        dict(labels)["upstream"]: value
        for (name, labels), value in samples.items()
        if name == "fanout_upstream_call_seconds_count"
    }
    # Every call that went out is timed (the blocked one never left).
    assert seconds == {"fault": 2, "slow": 1}
    assert samples[("fanout_upstream_call_seconds_sum", (("upstream", "slow"),))] >= 0.3


async def _scrape_until(
    gateway: Gateway, condition: Callable[[Samples], bool], seconds: float = 10.0
) -> Samples:
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        found = await _scrape(gateway)
        if condition(found) or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.05)


async def test_jobs_waiting_for_a_slot_are_counted_pending(
    fault: FaultUpstream, tmp_path: Path
) -> None:
    config = _config(fault.url) + "\n[jobs]\nmax_running = 1\n"
    pending = ("fanout_jobs_active", (("kind", "batch"), ("status", "pending")))
    running = ("fanout_jobs_active", (("kind", "batch"), ("status", "running")))
    async with gateway_serving(config, tmp_path) as gateway:
        ids = []
        for _ in range(3):
            batch = {"upstream": "fault", "path": "/never?{item}", "items": [1]}
            async with gateway.client.post("/jobs/batch", json=batch) as response:
                assert response.status == 202
                ids.append((await response.json())["id"])
        busy = await _scrape_until(gateway, lambda found: found[running] == 1)
        assert (busy[running], busy[pending]) == (1, 2)  # one slot: the others wait
        for job_id in ids:
            async with gateway.client.post(f"/jobs/{job_id}/cancel") as response:
                assert (await response.json())["status"] == "cancelled"
        idle = await _scrape(gateway)
    assert (idle[running], idle[pending]) == (0, 0)
    cancelled = ("fanout_jobs_finished_total", (("kind", "batch"), ("status", "cancelled")))
    assert idle[cancelled] == 3


async def test_requests_refused_by_auth_are_timed_and_counted(
    fault: FaultUpstream, tmp_path: Path
) -> None:
    key = "k" * 24
    config = _config(fault.url) + f'\n[auth]\napi_keys = {{ ops = "{key}" }}\n'
    async with gateway_serving(config, tmp_path) as gateway:
        async with gateway.client.get("/jobs") as response:
            assert response.status == 401
        async with gateway.client.get("/jobs", headers={"Authorization": f"Bearer {key}"}) as r:
            assert r.status == 200
        samples = await _scrape(gateway)
    route = (("method", "GET"), ("route", "/jobs"))
    assert samples[("fanout_http_requests_total", (*route, ("status", "401")))] == 1
    assert samples[("fanout_http_requests_total", (*route, ("status", "200")))] == 1
    # Both are timed, the refused one included (the metrics hook runs before auth).
    assert samples[("fanout_http_request_seconds_count", route)] == 2
    assert samples[("fanout_http_requests_in_flight", ())] == 1  # the scrape only
