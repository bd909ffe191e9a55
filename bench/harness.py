"""The harness: the simulated upstream, contenders started in turn, one measured run at a time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.contenders import REPO, Contender, gateway_toml, server_process
from bench.load import LoadGenerator, LoadResult, drive
from bench.plan import Plan
from bench.processes import (
    CpuMeter,
    ManagedProcess,
    RssSampler,
    free_port,
    machine_busy_seconds,
    running,
    wait_ready,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Run:
    """One measured load run and what the processes used meanwhile."""

    scenario: str
    contender: str
    variant: str
    workers: int
    clients: int
    round: int
    load: LoadResult
    upstream_requests: int
    upstream_connections: int
    server_cpu_s: float
    upstream_cpu_s: float
    machine_busy_s: float
    peak_rss_bytes: int
    #: The same counts over the run's second half only: the steady state.
    #: (The first half also re-opens the upstream connections that the end
    #: of the warm-up broke: the load generator drops its connections with
    #: requests in flight, and a cancelled call's connection is not reused.)
    settled_upstream_requests: int | None = None
    settled_upstream_connections: int | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain data for results.json."""
        return {
            "scenario": self.scenario,
            "contender": self.contender,
            "variant": self.variant,
            "workers": self.workers,
            "clients": self.clients,
            "round": self.round,
            "load": self.load.to_json(),
            "upstream_requests": self.upstream_requests,
            "upstream_connections": self.upstream_connections,
            "server_cpu_s": self.server_cpu_s,
            "upstream_cpu_s": self.upstream_cpu_s,
            "machine_busy_s": self.machine_busy_s,
            "peak_rss_bytes": self.peak_rss_bytes,
            "settled_upstream_requests": self.settled_upstream_requests,
            "settled_upstream_connections": self.settled_upstream_connections,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Run:
        """Rebuild from ``to_json``'s output."""
        fields = dict(data)
        fields["load"] = LoadResult.from_json(fields["load"])
        return cls(**fields)


@dataclass(frozen=True)
class Served:
    """A contender being served: its process and where it answers."""

    contender: Contender
    workers: int
    process: ManagedProcess
    base_url: str


@dataclass
class Bench:
    """Everything one benchmark run shares: plan, upstream, load generator, results."""

    plan: Plan
    generator: LoadGenerator
    work_dir: Path
    worker_class: str | None
    runs: list[Run] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sections: dict[str, Any] = field(default_factory=dict)
    upstream: ManagedProcess | None = None
    upstream_url: str = ""
    control_url: str = ""
    gateway_file: Path = Path()
    _http: aiohttp.ClientSession | None = None

    @contextlib.asynccontextmanager
    async def serving_upstream(self) -> AsyncIterator[None]:
        """Start the simulated upstream (and the harness's HTTP client) for the whole run."""
        port, control_port = free_port(), free_port()
        self.upstream_url = f"http://127.0.0.1:{port}"
        self.control_url = f"http://127.0.0.1:{control_port}"
        self.gateway_file = self.work_dir / "gateway.toml"
        self.gateway_file.write_text(gateway_toml(self.upstream_url, job_ttl=self.plan.job_ttl))
        upstream = ManagedProcess(
            "upstream",
            [
                sys.executable,
                "-m",
                "bench.upstream",
                f"--port={port}",
                f"--control-port={control_port}",
                f"--latency-ms={self.plan.latency_ms}",
                f"--body-bytes={self.plan.body_bytes}",
            ],
            cwd=REPO,
            env=dict(os.environ),
            log_path=self.work_dir / "upstream.log",
        )
        async with running(upstream), aiohttp.ClientSession() as http:
            self.upstream, self._http = upstream, http
            try:
                await wait_ready(upstream, f"{self.control_url}/stats")
                yield
            finally:
                self.upstream, self._http = None, None

    @property
    def http(self) -> aiohttp.ClientSession:
        """The harness's own client (stats, job starts and checks)."""
        if self._http is None:
            raise RuntimeError("the upstream is not being served")
        return self._http

    async def upstream_stats(self) -> tuple[int, int]:
        """Accepted connections and answered requests of the upstream so far."""
        async with self.http.get(f"{self.control_url}/stats") as answer:
            stats = await answer.json()
        return int(stats["connections"]), int(stats["requests"])

    @contextlib.asynccontextmanager
    async def serving(
        self,
        contender: Contender,
        workers: int,
        extra_env: Mapping[str, str] | None = None,
        ready_headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[Served]:
        """Start a contender under Hypercorn, wait until it answers, always stop it."""
        port = free_port()
        process = server_process(
            contender,
            workers=workers,
            port=port,
            work_dir=self.work_dir,
            gateway_file=self.gateway_file,
            upstream_url=self.upstream_url,
            worker_class=self.worker_class,
            extra_env=extra_env,
        )
        base_url = f"http://127.0.0.1:{port}"
        logger.info("starting %s with %d worker(s)", contender.label, workers)
        async with running(process):
            await wait_ready(
                process, f"{base_url}/fan/ready-{secrets.token_hex(4)}", headers=ready_headers
            )
            yield Served(contender, workers, process, base_url)

    async def measure(
        self,
        *,
        scenario: str,
        served: Served | None,
        path: str,
        clients: int,
        duration: float,
        warmup: float = 0.0,
        round_: int = 0,
        variant: str = "",
        paths_file: Path | None = None,
        request_timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
    ) -> Run:
        """Warm up, then one measured run; without ``served`` the load goes to the upstream."""
        assert self.upstream is not None
        base_url = served.base_url if served else self.upstream_url
        if warmup > 0:
            await drive(
                self.generator,
                base_url,
                connections=clients,
                duration=warmup,
                path=path,
                paths_file=paths_file,
                request_timeout=request_timeout,
                headers=headers,
            )
        connections_before, requests_before = await self.upstream_stats()
        server_cpu = CpuMeter(served.process.pid) if served else None
        upstream_cpu = CpuMeter(self.upstream.pid)
        busy_before = machine_busy_seconds()
        sampler = RssSampler(served.process.pid) if served else None
        async with contextlib.AsyncExitStack() as stack:
            if sampler is not None:
                await stack.enter_async_context(sampler)
            driving = asyncio.ensure_future(
                drive(
                    self.generator,
                    base_url,
                    connections=clients,
                    duration=duration,
                    path=path,
                    paths_file=paths_file,
                    request_timeout=request_timeout,
                    headers=headers,
                )
            )
            try:
                await asyncio.sleep(duration / 2)
                connections_mid, requests_mid = await self.upstream_stats()
                load = await driving
            finally:
                driving.cancel()
        busy = machine_busy_seconds() - busy_before
        connections_after, requests_after = await self.upstream_stats()
        run = Run(
            scenario=scenario,
            contender=served.contender.key if served else "floor",
            variant=variant,
            workers=served.workers if served else 0,
            clients=clients,
            round=round_,
            load=load,
            upstream_requests=requests_after - requests_before,
            upstream_connections=connections_after - connections_before,
            server_cpu_s=server_cpu.seconds() if server_cpu else 0.0,
            upstream_cpu_s=upstream_cpu.seconds(),
            machine_busy_s=busy,
            peak_rss_bytes=sampler.peak if sampler else 0,
            settled_upstream_requests=requests_after - requests_mid,
            settled_upstream_connections=connections_after - connections_mid,
        )
        self.runs.append(run)
        logger.info(
            "%s %s%s w%d c%d: %.0f req/s p50 %.1f ms p99 %.1f ms errors %d",
            scenario,
            run.contender,
            f" ({variant})" if variant else "",
            run.workers,
            clients,
            load.rps,
            load.p50_ms,
            load.p99_ms,
            load.errors,
        )
        await asyncio.sleep(self.plan.settle)
        return run


def token() -> str:
    """A short random key prefix, so no run reuses another's keys."""
    return secrets.token_hex(3)
