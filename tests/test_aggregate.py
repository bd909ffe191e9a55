"""Aggregate endpoints through the real stack, against a fault-injecting upstream."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fault_upstream import FaultUpstream
from tests.gateway_serving import Gateway, gateway_serving
from tests.test_safety import Listener, listening
from tests.upstream import full_backlog_listener


@dataclass(frozen=True)
class Fault:
    """A fault of the "fault" upstream, and what the gateway reports for its backend."""

    path: str
    status: int  # the backend's _errors entry (and the endpoint's, when required)
    title: str
    detail: str  # how the entry's detail starts: names the cause, not just the status


#: Every fault of the issue. The fault upstream has timeout 0.5 s, one retry,
#: a 1 MiB body cap and follows 3 redirects; the endpoints' deadline is 1.5 s.
FAULTS: dict[str, Fault] = {
    "delay": Fault("/json?ms=2000", 504, "Gateway Timeout", "fault did not answer within 0.5s"),
    "never": Fault("/never", 504, "Gateway Timeout", "fault did not answer within 0.5s"),
    "reset": Fault("/reset", 502, "Bad Gateway", "fault is unavailable: "),
    "trickle": Fault("/trickle", 504, "Gateway Timeout", "fault did not answer within 0.5s"),
    "invalid_json": Fault("/invalid-json", 502, "Bad Gateway", "invalid JSON from fault"),
    "html_error": Fault("/html-error", 502, "Upstream Error Status", "fault answered HTTP 500"),
    "html_ok": Fault("/html-ok", 502, "Bad Gateway", "invalid JSON from fault"),
    "huge": Fault("/huge?mb=20", 502, "Bad Gateway", "fault answered more than 1048576 bytes"),
    "bomb": Fault("/bomb", 502, "Bad Gateway", "fault answered more than 1048576 bytes"),
    "redirect_loop": Fault("/loop", 502, "Bad Gateway", "fault: more than 3 redirects"),
    "redirect_away": Fault(
        "/redirect?to=http://192.0.2.1/x",
        502,
        "Blocked Destination",
        "fault: redirect to another origin refused",
    ),
    "storm": Fault("/storm", 502, "Upstream Error Status", "fault answered HTTP 503"),
}

#: The endpoints' deadline, and the slack a loaded machine gets past it.
FAULT_DEADLINE = 1.5
SLACK = 3.0


_CAPPED_BACKENDS = "".join(
    f"""
  [[endpoints.backends]]
  upstream = "capped"
  path = "/json?ms=200&c={n}"
  group = "g{n}"
"""
    for n in range(6)
)


def _config(upstream_url: str) -> str:
    endpoints = []
    for name, fault in FAULTS.items():
        for required in ("true", "false"):
            prefix = "required" if required == "true" else "optional"
            endpoints.append(
                f"""
[[endpoints]]
path = "/{prefix}/{name}"
timeout = {FAULT_DEADLINE}
  [[endpoints.backends]]
  upstream = "healthy"
  path = "/users/1"
  group = "user"
  required = true
  [[endpoints.backends]]
  upstream = "fault"
  path = "{fault.path}"
  group = "bad"
  required = {required}
"""
            )
    return f"""
# The healthy backend beside each fault: a timeout a loaded machine never reaches.
[upstreams.healthy]
base_url = "{upstream_url}"
internal = true
timeout = 5.0

[upstreams.fault]
base_url = "{upstream_url}"
internal = true
timeout = 0.5
retries = 1
max_body_bytes = 1048576
follow_redirects = 3
circuit_breaker = {{ failures = 1000, reset_after = 1.0 }}

[upstreams.fragile]
base_url = "{upstream_url}"
internal = true
timeout = 0.5
retries = 0
circuit_breaker = {{ failures = 3, reset_after = 2.0 }}

[upstreams.retrying]
base_url = "{upstream_url}"
internal = true
timeout = 0.5
retries = 2
retry_budget = 1.0

[upstreams.stormy]
base_url = "{upstream_url}"
internal = true
timeout = 0.5
retries = 10
retry_budget = 1.0
circuit_breaker = {{ failures = 1000, reset_after = 1.0 }}

[[endpoints]]
path = "/stormy"
timeout = 1.0
  [[endpoints.backends]]
  upstream = "stormy"
  path = "/storm"

[upstreams.budgeted]
base_url = "{upstream_url}"
internal = true
timeout = 0.5
retries = 10
retry_budget = 0.1
circuit_breaker = {{ failures = 1000, reset_after = 1.0 }}

[[endpoints]]
path = "/budgeted/<n>"
timeout = 3.0
  [[endpoints.backends]]
  upstream = "budgeted"
  path = "/storm?n={{n}}"

[upstreams.single]
base_url = "{upstream_url}"
internal = true
timeout = 0.8
max_connections = 1
circuit_breaker = {{ failures = 2, reset_after = 30.0 }}

[[endpoints]]
path = "/single/<n>"
timeout = 3.0
  [[endpoints.backends]]
  upstream = "single"
  path = "/json?ms=300&n={{n}}"

[upstreams.capped]
base_url = "{upstream_url}"
internal = true
max_connections = 2

[[endpoints]]
path = "/capped"
timeout = 3.0
{_CAPPED_BACKENDS}

[[endpoints]]
path = "/profile/<user_id>"
  [[endpoints.backends]]
  upstream = "fault"
  path = "/users/{{user_id}}"
  group = "user"
  allow = ["id", "name", "address.city"]
  [[endpoints.backends]]
  upstream = "fault"
  path = "/orders?user={{user_id}}"
  group = "orders"
  deny = ["items.secret"]

[[endpoints]]
path = "/merged/<user_id>"
  [[endpoints.backends]]
  upstream = "fault"
  path = "/users/{{user_id}}"
  [[endpoints.backends]]
  upstream = "fault"
  path = "/orders?user={{user_id}}"

[[endpoints]]
path = "/slow-three"
  [[endpoints.backends]]
  upstream = "fault"
  path = "/json?ms=300&b=1"
  group = "a"
  [[endpoints.backends]]
  upstream = "fault"
  path = "/json?ms=300&b=2"
  group = "b"
  [[endpoints.backends]]
  upstream = "fault"
  path = "/json?ms=300&b=3"
  group = "c"

[[endpoints]]
path = "/all-fail"
timeout = 1.0
  [[endpoints.backends]]
  upstream = "fault"
  path = "/never"
  group = "a"
  [[endpoints.backends]]
  upstream = "fault"
  path = "/never?x=2"
  group = "b"

[[endpoints]]
path = "/fragile"
  [[endpoints.backends]]
  upstream = "fragile"
  path = "/storm"
  required = true

[[endpoints]]
path = "/recovering/<key>"
  [[endpoints.backends]]
  upstream = "fragile"
  path = "/flaky?key={{key}}&fail=3"
  required = true

[[endpoints]]
path = "/retried/<key>"
  [[endpoints.backends]]
  upstream = "retrying"
  path = "/flaky?key={{key}}&fail=1"

[[endpoints]]
path = "/posted/<key>"
method = "POST"
  [[endpoints.backends]]
  upstream = "retrying"
  path = "/flaky?key={{key}}&fail=1"

[[endpoints]]
path = "/hot"
  [[endpoints.backends]]
  # A 1 s answer: all 100 requests arrive while it is in flight, even on a loaded machine.
  upstream = "healthy"
  path = "/json?ms=1000&hot=1"

[[endpoints]]
path = "/patient/<ms>"
timeout = 3.0
  [[endpoints.backends]]
  upstream = "healthy"
  path = "/json?ms={{ms}}&shared=1"

[[endpoints]]
path = "/hasty/<ms>"
timeout = 0.5
  [[endpoints.backends]]
  upstream = "healthy"
  path = "/json?ms={{ms}}&shared=1"

[[endpoints]]
path = "/cached"
cache_ttl = 60
  [[endpoints.backends]]
  upstream = "fault"
  path = "/cache?max_age=60"

[[endpoints]]
path = "/cached-long"
cache_ttl = 60
  [[endpoints.backends]]
  upstream = "fault"
  path = "/cache?max_age=600&shared=1"

[[endpoints]]
path = "/cached-short"
cache_ttl = 1
  [[endpoints.backends]]
  upstream = "fault"
  path = "/cache?max_age=600&shared=1"

[[endpoints]]
path = "/cached-briefly"
cache_ttl = 60
  [[endpoints.backends]]
  upstream = "fault"
  path = "/cache?max_age=1"

[[endpoints]]
path = "/uncacheable"
cache_ttl = 60
  [[endpoints.backends]]
  upstream = "fault"
  path = "/cache?cc=no-store"
{"".join(endpoints)}
"""


@pytest.fixture
async def gateway(fault: FaultUpstream, tmp_path: Path) -> AsyncIterator[Gateway]:
    """The gateway, configured against the fault upstream."""
    async with gateway_serving(_config(fault.url), tmp_path) as served:
        yield served


async def _get(gateway: Gateway, path: str, method: str = "GET") -> tuple[int, Any, Any]:
    async with gateway.client.request(method, path) as response:
        return response.status, response.headers, await response.json(content_type=None)


async def test_backends_are_called_at_once_and_merged_under_their_groups(
    gateway: Gateway, fault: FaultUpstream
) -> None:
    status, headers, body = await _get(gateway, "/profile/7")
    assert status == 200
    assert headers["X-Fanout-Completed"] == "true"
    assert body == {
        "user": {"id": "7", "name": "user 7", "address": {"city": "Lyon"}},
        "orders": {"user": "7", "items": [{"id": 1, "total": 10}, {"id": 2, "total": 20}]},
    }
    # The request id reached both backends.
    assert fault.request_ids[-1] == fault.request_ids[-2] == headers["X-Request-ID"]


async def test_backends_without_group_merge_at_top_level(gateway: Gateway) -> None:
    status, _, body = await _get(gateway, "/merged/3")
    assert status == 200
    assert body["name"] == "user 3" and body["user"] == "3" and len(body["items"]) == 2


async def test_three_300ms_backends_are_called_at_once(
    gateway: Gateway, fault: FaultUpstream
) -> None:
    status, _, body = await _get(gateway, "/slow-three")
    assert status == 200 and set(body) == {"a", "b", "c"}
    # Concurrency, not a timing: the upstream held all three calls together.
    assert fault.peak_in_flight == 3


@pytest.mark.parametrize("name", list(FAULTS))
async def test_each_fault_fails_an_optional_backend_and_keeps_the_rest(
    gateway: Gateway, name: str
) -> None:
    fault = FAULTS[name]
    started = time.monotonic()
    status, headers, body = await _get(gateway, f"/optional/{name}")
    elapsed = time.monotonic() - started
    assert status == 200, body
    assert headers["X-Fanout-Completed"] == "false"
    assert body["user"]["id"] == "1"  # the healthy backend's data is intact
    error = body["_errors"]["bad"]
    assert (error["status"], error["title"]) == (fault.status, fault.title), error
    assert error["detail"].startswith(fault.detail), error
    # Bounded by the endpoint's deadline ("never" would hang until the test's
    # timeout); the slack is for a loaded machine, not a speed claim.
    assert elapsed < FAULT_DEADLINE + SLACK, elapsed


@pytest.mark.parametrize("name", list(FAULTS))
async def test_each_fault_of_a_required_backend_fails_the_endpoint(
    gateway: Gateway, name: str
) -> None:
    fault = FAULTS[name]
    started = time.monotonic()
    status, headers, body = await _get(gateway, f"/required/{name}")
    elapsed = time.monotonic() - started
    endpoint_status = 504 if fault.status == 504 else 502
    assert status == endpoint_status, body
    assert headers["Content-Type"] == "application/problem+json"
    assert headers["X-Fanout-Completed"] == "false"
    assert body["status"] == endpoint_status
    assert body["detail"] == "required backend failed: bad"
    error = body["errors"]["bad"]
    assert (error["status"], error["title"]) == (fault.status, fault.title), error
    assert error["detail"].startswith(fault.detail), error
    assert "Traceback" not in str(body) and "<html>" not in str(body)
    assert elapsed < FAULT_DEADLINE + SLACK, elapsed


async def test_every_backend_timing_out_is_a_504(gateway: Gateway) -> None:
    started = time.monotonic()
    status, _, body = await _get(gateway, "/all-fail")
    # Bounded by the endpoint's 1 s deadline, though both backends never answer.
    assert time.monotonic() - started < 1.0 + 3.0
    assert status == 504
    assert body["detail"] == "every backend failed: a, b"


@pytest.mark.parametrize("name", ["huge", "bomb"])
async def test_memory_stays_bounded_on_huge_and_bomb_bodies(gateway: Gateway, name: str) -> None:
    await _get(gateway, "/profile/1")  # warm up
    tracemalloc.start()
    try:
        status, _, body = await _get(gateway, f"/optional/{name}")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status == 200
    assert "more than 1048576 bytes" in body["_errors"]["bad"]["detail"]
    # 20 MiB sent, or 200 MiB once inflated; the cap is 1 MiB.
    assert peak < 16 * 1024 * 1024, peak


async def test_circuit_opens_fails_fast_then_half_opens(
    gateway: Gateway, fault: FaultUpstream
) -> None:
    for _ in range(3):
        status, _, body = await _get(gateway, "/fragile")
        assert status == 502
    assert fault.hits["/storm"] == 3
    status, _, body = await _get(gateway, "/fragile")
    assert status == 502
    assert body["errors"]["fragile"]["status"] == 503
    assert "circuit open" in body["errors"]["fragile"]["detail"]
    assert fault.hits["/storm"] == 3  # failed fast: no call made
    await asyncio.sleep(2.1)  # past reset_after: the next call is the trial
    await _get(gateway, "/fragile")  # the half-open trial goes through, fails again
    assert fault.hits["/storm"] == 4
    await _get(gateway, "/fragile")
    assert fault.hits["/storm"] == 4  # open again


async def test_circuit_closes_again_after_a_successful_trial(
    gateway: Gateway, fault: FaultUpstream
) -> None:
    for _ in range(3):
        assert (await _get(gateway, "/recovering/k"))[0] == 502
    assert (await _get(gateway, "/recovering/k"))[0] == 502  # open: not called
    assert fault.hits["/flaky:k"] == 3
    await asyncio.sleep(2.1)  # past reset_after: the next call is the trial
    status, _, body = await _get(gateway, "/recovering/k")
    assert status == 200 and body["ok"] is True
    for _ in range(3):
        assert (await _get(gateway, "/recovering/k"))[0] == 200
    assert fault.hits["/flaky:k"] == 7


async def test_get_is_retried_and_post_never_is(gateway: Gateway, fault: FaultUpstream) -> None:
    status, _, body = await _get(gateway, "/retried/g")
    assert status == 200 and body["ok"] is True
    assert fault.hits["/flaky:g"] == 2
    status, _, _ = await _get(gateway, "/posted/p", method="POST")
    assert status == 502
    assert fault.hits["/flaky:p"] == 1


async def test_a_503_storm_is_retried_only_within_the_deadline(
    gateway: Gateway, fault: FaultUpstream
) -> None:
    # retries = 10; their backoff (up to 1 s each) would take about 3 s.
    started = time.monotonic()
    status, _, body = await _get(gateway, "/stormy")
    elapsed = time.monotonic() - started
    assert status == 502, body
    assert body["errors"]["stormy"]["detail"] == "stormy answered HTTP 503"
    assert 2 <= fault.hits["/storm"] <= 11  # retried, never past its retries
    assert elapsed < 1.0 + 2.0, elapsed  # the 1 s deadline, and slack


async def test_the_retry_budget_caps_retries_across_requests(
    gateway: Gateway, fault: FaultUpstream
) -> None:
    # 20 requests (distinct URLs: no coalescing) to an upstream that always
    # answers 503, each allowed 10 retries: about 9 tries each in 3 s without
    # a budget. The budget allows 0.1 retries per request plus 3/s over its
    # 10 s window: 0.1 * 20 + 30 = 32 retries in all.
    results = await asyncio.gather(*(_get(gateway, f"/budgeted/{n}") for n in range(20)))
    assert all(status == 502 for status, _, _ in results)
    assert 20 <= fault.hits["/storm"] <= 20 + 32, fault.hits["/storm"]


async def test_identical_concurrent_gets_make_one_upstream_call(
    gateway: Gateway, fault: FaultUpstream
) -> None:
    results = await asyncio.gather(*(_get(gateway, "/hot") for _ in range(100)))
    assert all(status == 200 for status, _, _ in results)
    assert fault.hits["/json"] == 1


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):  # a generous budget: the machine is shared
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


async def test_a_request_joining_a_slower_ones_call_gives_up_at_its_own_deadline(
    gateway: Gateway, fault: FaultUpstream
) -> None:
    # The upstream answers in 2 s: within /patient's 3 s, past /hasty's 0.5 s.
    patient = asyncio.create_task(_get(gateway, "/patient/2000"))
    await _until(lambda: fault.hits["/json"] == 1)
    status, _, body = await _get(gateway, "/hasty/2000")  # joins the call in flight
    assert status == 504, body
    assert body["errors"]["healthy"]["detail"] == "healthy did not answer within 0.5s"
    assert not patient.done()  # answered long before the slow answer came
    status, _, body = await patient
    assert status == 200 and body["path"] == "/json"
    assert fault.hits["/json"] == 1  # one upstream call, shared


async def test_a_request_joining_a_hastier_ones_call_outlives_its_deadline(
    gateway: Gateway, fault: FaultUpstream
) -> None:
    # The upstream answers in 0.8 s: /hasty's call is cut at 0.5 s by its
    # deadline, which /patient (3 s) does not share.
    hasty = asyncio.create_task(_get(gateway, "/hasty/800"))
    await _until(lambda: fault.hits["/json"] == 1)
    patient = asyncio.create_task(_get(gateway, "/patient/800"))
    status, _, _ = await hasty
    assert status == 504
    status, _, body = await patient
    assert status == 200, body
    assert fault.hits["/json"] == 2  # called again for the patient request


async def test_cache_honours_the_upstream_cache_control(
    gateway: Gateway, fault: FaultUpstream
) -> None:
    for _ in range(3):
        status, _, body = await _get(gateway, "/cached")
        assert status == 200 and body == {"n": 1}
    assert fault.hits["/cache"] == 1
    for _ in range(3):
        await _get(gateway, "/uncacheable")
    assert fault.hits["/cache"] == 4  # no-store: every request went upstream


async def test_each_endpoint_honours_its_own_cache_ttl(
    gateway: Gateway, fault: FaultUpstream
) -> None:
    # Both endpoints ask for one URL (the upstream allows 600 s): /cached-long
    # keeps it 60 s, /cached-short 1 s.
    assert (await _get(gateway, "/cached-long"))[2] == {"n": 1}
    assert (await _get(gateway, "/cached-short"))[2] == {"n": 1}  # one answer, shared
    assert fault.hits["/cache"] == 1
    await asyncio.sleep(1.1)
    # Older than /cached-short's ttl, though /cached-long stored it for 60 s.
    assert (await _get(gateway, "/cached-short"))[2] == {"n": 2}
    assert (await _get(gateway, "/cached-long"))[2] == {"n": 2}  # the fresher answer
    assert fault.hits["/cache"] == 2


async def test_an_upstream_max_age_shorter_than_cache_ttl_shortens_it(
    gateway: Gateway, fault: FaultUpstream
) -> None:
    # cache_ttl = 60, max-age = 1.
    assert (await _get(gateway, "/cached-briefly"))[2] == {"n": 1}
    assert (await _get(gateway, "/cached-briefly"))[2] == {"n": 1}
    await asyncio.sleep(1.1)
    assert (await _get(gateway, "/cached-briefly"))[2] == {"n": 2}
    assert fault.hits["/cache"] == 2


async def test_at_most_max_connections_calls_run_at_once_per_upstream(
    gateway: Gateway, fault: FaultUpstream
) -> None:
    started = time.monotonic()
    status, _, body = await _get(gateway, "/capped")
    elapsed = time.monotonic() - started
    assert status == 200 and len(body) == 6
    assert fault.peak_in_flight == 2
    assert elapsed >= 0.55  # three rounds of two 200 ms calls


async def test_waiting_for_a_connection_slot_is_not_an_upstream_failure(gateway: Gateway) -> None:
    # One connection, 300 ms answers, a 0.8 s timeout: the fourth call waits
    # 0.9 s for the slot (longer than the timeout), within the endpoint's 3 s deadline.
    results = await asyncio.gather(*(_get(gateway, f"/single/{n}") for n in range(4)))
    assert [status for status, _, _ in results] == [200] * 4
    status, _, _ = await _get(gateway, "/single/9")
    assert status == 200  # the circuit stayed closed


# --- the gateway's own redirect following, and connect_timeout ---------------


def _edge_config(upstream_url: str, listener_port: int, dark_port: int) -> str:
    return f"""
[upstreams.follower]
base_url = "{upstream_url}"
internal = true
follow_redirects = 2

[upstreams.nofollow]
base_url = "{upstream_url}"
internal = true

[upstreams.direct]
# The counting listener: on an internal host, so only the redirect check
# stands between a redirect and a connection to it.
base_url = "http://127.0.0.1:{listener_port}"
internal = true

[upstreams.dark]
base_url = "http://127.0.0.1:{dark_port}"
internal = true
connect_timeout = 0.2
timeout = 4.0
circuit_breaker = {{ failures = 1000, reset_after = 30.0 }}

[upstreams.dark_fragile]
base_url = "http://127.0.0.1:{dark_port}"
internal = true
connect_timeout = 0.2
timeout = 4.0
circuit_breaker = {{ failures = 1, reset_after = 30.0 }}

[[endpoints]]
path = "/follow"
  [[endpoints.backends]]
  upstream = "follower"
  path = "/redirect?to=/users/5"

[[endpoints]]
path = "/nofollow"
  [[endpoints.backends]]
  upstream = "nofollow"
  path = "/redirect?to=/users/5"

[[endpoints]]
path = "/follow-loop"
  [[endpoints.backends]]
  upstream = "follower"
  path = "/loop"

[[endpoints]]
path = "/follow-away"
  [[endpoints.backends]]
  upstream = "follower"
  path = "/redirect?to=http://127.0.0.1:{listener_port}/x"

[[endpoints]]
path = "/direct"
  [[endpoints.backends]]
  upstream = "direct"
  path = "/x"

[[endpoints]]
path = "/dark"
timeout = 6.0
  [[endpoints.backends]]
  upstream = "dark"
  path = "/x"

[[endpoints]]
path = "/dark-fragile"
# Shorter than the upstream's timeout: every try is cut to this deadline.
timeout = 1.0
  [[endpoints.backends]]
  upstream = "dark_fragile"
  path = "/x"
"""


@dataclass
class Edge:
    """The gateway for the redirect and connect tests, and what they watch."""

    gateway: Gateway
    listener: Listener


@pytest.fixture
async def edge(fault: FaultUpstream, tmp_path: Path) -> AsyncIterator[Edge]:
    """The gateway with redirect-following and unreachable upstreams."""
    with full_backlog_listener() as dark_port:
        async with listening() as listener:
            config = _edge_config(fault.url, listener.port, dark_port)
            async with gateway_serving(config, tmp_path) as served:
                yield Edge(served, listener)


async def test_a_same_origin_redirect_is_followed_when_configured(
    edge: Edge, fault: FaultUpstream
) -> None:
    status, _, body = await _get(edge.gateway, "/follow")
    assert status == 200, body
    assert body["id"] == "5"
    assert (fault.hits["/redirect"], fault.hits["/users/5"]) == (1, 1)


async def test_redirects_are_not_followed_by_default(edge: Edge, fault: FaultUpstream) -> None:
    status, _, body = await _get(edge.gateway, "/nofollow")
    assert status == 502, body
    error = body["errors"]["nofollow"]
    assert (error["title"], error["detail"]) == (
        "Upstream Error Status",
        "nofollow answered HTTP 302",
    )
    assert (fault.hits["/redirect"], fault.hits["/users/5"]) == (1, 0)


async def test_redirects_are_followed_only_as_far_as_configured(
    edge: Edge, fault: FaultUpstream
) -> None:
    status, _, body = await _get(edge.gateway, "/follow-loop")
    assert status == 502
    assert body["errors"]["follower"]["detail"] == "follower: more than 2 redirects"
    assert fault.hits["/loop"] == 3  # the first answer and two hops


async def test_a_redirect_to_another_origin_is_refused_without_a_connection(
    edge: Edge,
) -> None:
    status, _, body = await _get(edge.gateway, "/follow-away")
    assert status == 502
    error = body["errors"]["follower"]
    assert error["title"] == "Blocked Destination"
    assert "redirect to another origin refused" in error["detail"]
    await asyncio.sleep(0.05)  # an accept in flight would land now
    assert edge.listener.accepted == 0
    # The listener does count: called directly, it is reached.
    await _get(edge.gateway, "/direct")
    assert edge.listener.accepted == 1


async def test_a_connect_that_never_completes_ends_at_connect_timeout(edge: Edge) -> None:
    # connect_timeout = 0.2 s, timeout = 4 s, the endpoint's deadline 6 s.
    started = time.monotonic()
    status, _, body = await _get(edge.gateway, "/dark")
    elapsed = time.monotonic() - started
    assert status == 504, body
    assert body["errors"]["dark"]["detail"] == "dark did not accept a connection within 0.2s"
    assert elapsed < 2.0, elapsed  # about connect_timeout (and slack), well short of 4 s


async def test_a_connect_timeout_counts_against_the_upstream_under_any_deadline(
    edge: Edge,
) -> None:
    # The endpoint's 1 s deadline cuts every try short of the upstream's 4 s
    # timeout, yet the connect timed out on its own: the circuit (1 failure) opens.
    status, _, body = await _get(edge.gateway, "/dark-fragile")
    assert status == 504, body
    status, _, body = await _get(edge.gateway, "/dark-fragile")
    assert status == 502, body
    error = body["errors"]["dark_fragile"]
    assert error["status"] == 503 and "circuit open" in error["detail"]
