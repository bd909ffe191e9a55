"""Several hosts per upstream: least-outstanding choice, outlier ejection, through the stack."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import aiohttp

from clients.upstream_client import UpstreamClient
from fanout.core.circuit import CircuitState
from fanout.core.config import OutlierDetectionConfig, UpstreamConfig
from fanout.core.outlier import HostPool
from tests.composition_upstream import composition_upstream
from tests.gateway_serving import gateway_serving
from tests.worker_processes import samples


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_least_outstanding_then_turns_then_ejection_that_grows() -> None:
    clock = _Clock()
    rule = OutlierDetectionConfig(consecutive_failures=2, base_ejection_seconds=10.0)
    pool = HostPool(["http://a", "http://b"], rule, clock)
    a, b = pool.hosts
    a.outstanding = 3
    assert pool.pick() is b  # the fewest calls outstanding
    a.outstanding = 0
    assert {pool.pick().base_url for _ in range(2)} == {"http://a", "http://b"}  # ties take turns
    assert not pool.failed(b)
    assert pool.failed(b)  # the second in a row ejects it
    assert [pool.pick() for _ in range(3)] == [a, a, a]
    clock.now += 10.0
    assert not pool.ejected(b)  # back after base_ejection_seconds
    pool.failed(b)
    pool.failed(b)
    clock.now += 10.0
    assert pool.ejected(b)  # ejected a second time: for twice as long
    clock.now += 10.0
    assert not pool.ejected(b)
    pool.failed(a)
    pool.failed(a)
    assert not pool.all_out()
    pool.failed(b)
    pool.failed(b)
    assert pool.all_out()


async def test_two_hosts_one_down_every_request_succeeds_once_it_is_ejected(
    tmp_path: Path,
) -> None:
    async with composition_upstream() as good, composition_upstream() as bad:
        bad.down = True
        config = f"""
[upstreams.users]
base_urls = ["{good.url}", "{bad.url}"]
internal = true
outlier_detection = {{ consecutive_failures = 2, base_ejection_seconds = 0.5 }}

[[endpoints]]
path = "/user/<int:n>"
  [[endpoints.backends]]
  upstream = "users"
  path = "/users/{{n}}"
  required = true
"""
        async with gateway_serving(config, tmp_path) as gateway:

            async def status() -> int:
                async with gateway.client.get("/user/1") as response:
                    return response.status

            statuses = [await status() for _ in range(12)]
            # Turns between two idle hosts: the bad one's two failures come
            # within the first four requests, then it is out.
            assert statuses.count(502) == 2, statuses
            assert 502 not in statuses[4:], statuses
            assert bad.hits["users"] == 2
            await asyncio.sleep(0.6)  # its ejection is over: it is tried again
            again = [await status() for _ in range(4)]
            # Two more failures in a row eject it again (for twice as long:
            # the unit test above shows the growth without a clock to race).
            assert bad.hits["users"] == 4, again
            assert again.count(502) == 2, again
            assert [await status() for _ in range(6)] == [200] * 6
            assert bad.hits["users"] == 4
            async with gateway.client.get("/metrics") as response:
                found = samples(await response.text())
        calls = "fanout_upstream_host_calls_total"
        bad_host = (("host", bad.url), ("outcome", "failure"), ("upstream", "users"))
        good_host = (("host", good.url), ("outcome", "success"), ("upstream", "users"))
        assert found[(calls, bad_host)] == 4
        assert found[(calls, good_host)] == 18
        ejected = (("host", bad.url), ("upstream", "users"))
        assert found[("fanout_upstream_host_ejected", ejected)] == 1


async def test_the_circuit_opens_only_once_every_host_is_out(tmp_path: Path) -> None:
    async with composition_upstream() as first, composition_upstream() as second:
        first.down = second.down = True
        config = f"""
[upstreams.users]
base_urls = ["{first.url}", "{second.url}"]
internal = true
outlier_detection = {{ consecutive_failures = 1, base_ejection_seconds = 30.0 }}
circuit_breaker = {{ failures = 2, reset_after = 30.0 }}

[[endpoints]]
path = "/user"
  [[endpoints.backends]]
  upstream = "users"
  path = "/users/1"
  required = true
"""
        async with gateway_serving(config, tmp_path) as gateway:
            statuses = []
            for _ in range(4):
                async with gateway.client.get("/user") as response:
                    body = await response.json(content_type=None)
                    statuses.append(body["errors"]["users"]["status"])
            # The first failure ejects one host (the circuit does not count it);
            # the second leaves none, and from then on failures count: two open it.
            assert statuses == [502, 502, 502, 503], statuses
            assert first.hits["users"] + second.hits["users"] == 3


class _Recorder:
    """An observer that keeps what it is told of hosts."""

    def __init__(self) -> None:
        self.hosts: list[tuple[str, str, str, bool]] = []

    def observe_upstream(self, upstream: str, outcome: str, seconds: float) -> None:
        """Not needed here."""

    def observe_circuit(self, upstream: str, state: CircuitState) -> None:
        """Not needed here."""

    def observe_host(self, upstream: str, host: str, outcome: str, ejected: bool) -> None:
        """One call's outcome on one host."""
        self.hosts.append((upstream, host, outcome, ejected))


async def test_each_call_is_reported_per_host_with_its_ejection() -> None:
    async with composition_upstream() as good, composition_upstream() as bad:
        bad.down = True
        config = UpstreamConfig(
            name="users",
            base_url=good.url,
            base_urls=(good.url, bad.url),
            internal=True,
            outlier_detection=OutlierDetectionConfig(consecutive_failures=1),
        )
        recorder = _Recorder()
        async with aiohttp.ClientSession() as session:
            client = UpstreamClient(config, session, random.Random(0), recorder)
            until = asyncio.get_running_loop().time() + 5
            statuses = [
                (await client.fetch("GET", "/users/1", deadline=until)).status for _ in range(3)
            ]
        assert sorted(statuses) == [200, 200, 503]
        assert sorted(recorder.hosts) == sorted(
            [
                ("users", bad.url, "failure", True),
                ("users", good.url, "success", False),
                ("users", good.url, "success", False),
            ]
        )
