"""Driving load: ``wrk`` with bench/wrk.lua, or the built-in generator when wrk is missing."""

from __future__ import annotations

import asyncio
import json
import math
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

WRK_SCRIPT = Path(__file__).with_name("wrk.lua")
#: Where ``python -m bench.loadgen`` is importable.
REPO = Path(__file__).resolve().parent.parent
SUMMARY_PREFIX = "BENCH_JSON "
# Past its duration and request timeout, a load run gets this long to report before it is killed.
EXIT_SLACK_SECONDS = 30.0


@dataclass(frozen=True)
class LoadGenerator:
    """Which load generator drives the runs."""

    kind: Literal["wrk", "builtin"]
    version: str
    #: Why the built-in generator is used, when it is.
    reason: str = ""

    @property
    def description(self) -> str:
        """One line for the report."""
        if self.kind == "wrk":
            return f"wrk ({self.version}), 2 threads"
        return (
            f"the built-in aiohttp load generator (bench/loadgen.py), because {self.reason}: "
            "it is slower than wrk and takes more of the shared CPU"
        )


@dataclass(frozen=True)
class LoadResult:
    """What one load run measured (wrk's categories; latencies in milliseconds)."""

    requests: int
    duration_s: float
    connect: int
    read: int
    write: int
    status: int
    timeout: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    #: CPU seconds the load generator itself used.
    cpu_s: float

    @property
    def errors(self) -> int:
        """Failed requests: socket errors, timeouts and answers >= 400."""
        return self.connect + self.read + self.write + self.timeout + self.status

    @property
    def ok(self) -> int:
        """Answers below 400."""
        return max(0, self.requests - self.status)

    @property
    def rps(self) -> float:
        """Answers below 400 per second."""
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def attempts(self) -> int:
        """Every request that ended, answered or not."""
        return self.requests + self.connect + self.read + self.write + self.timeout

    def to_json(self) -> dict[str, Any]:
        """The raw fields, for results.json."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoadResult:
        """Rebuild from ``to_json``'s output."""
        return cls(**data)


def find_load_generator(builtin: bool = False) -> LoadGenerator:
    """wrk when it is on PATH (and not refused), else the built-in generator."""
    wrk = shutil.which("wrk")
    if builtin:
        return LoadGenerator("builtin", "bench.loadgen", "--builtin-load asked for it")
    if wrk is None:
        return LoadGenerator("builtin", "bench.loadgen", "wrk is not installed")
    # wrk prints its version in the first line of its usage text (exit status 1).
    probe = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
    first = (probe.stdout or probe.stderr).splitlines()
    return LoadGenerator("wrk", first[0].strip() if first else "wrk")


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def drive(
    generator: LoadGenerator,
    base_url: str,
    *,
    connections: int,
    duration: float,
    path: str = "/",
    paths_file: Path | None = None,
    request_timeout: float = 10.0,
    headers: Mapping[str, str] | None = None,
) -> LoadResult:
    """Run one closed-loop load against ``base_url`` (127.0.0.1 only) and return its result.

    ``{n}`` in ``path`` becomes a key unique to each request; ``headers`` go with
    each. The generator's CPU is read from this process's reaped-children usage, so no other child
    may exit meanwhile (servers live across runs).
    """
    if urlsplit(base_url).hostname != "127.0.0.1":
        raise ValueError(f"load only goes to 127.0.0.1, not {base_url}")
    seconds = max(1, math.ceil(duration))
    if generator.kind == "wrk":
        argv = [
            "wrk",
            f"-t{min(2, connections)}",
            f"-c{connections}",
            f"-d{seconds}s",
            f"--timeout={max(1, math.ceil(request_timeout))}s",
            "-s",
            str(WRK_SCRIPT),
            *(f"-H{name}: {value}" for name, value in (headers or {}).items()),
            base_url,
        ]
    else:
        argv = [
            sys.executable,
            "-m",
            "bench.loadgen",
            f"--url={base_url}",
            f"--connections={connections}",
            f"--duration={seconds}",
            f"--timeout={request_timeout}",
            f"--path={path}",
        ]
        if paths_file is not None:
            argv.append(f"--paths-file={paths_file}")
        argv += [f"--header={name}: {value}" for name, value in (headers or {}).items()]
    env = dict(os.environ, BENCH_PATH=path, BENCH_PATHS_FILE=str(paths_file or ""))
    cpu_before = _children_cpu_seconds()
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    try:
        async with asyncio.timeout(seconds + request_timeout + EXIT_SLACK_SECONDS):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    cpu = _children_cpu_seconds() - cpu_before
    lines = [line for line in out.decode().splitlines() if line.startswith(SUMMARY_PREFIX)]
    if process.returncode != 0 or not lines:
        output = (err.decode() + out.decode())[-800:]
        raise RuntimeError(f"{argv[0]} failed (exit {process.returncode}): {output}")
    fields = json.loads(lines[-1][len(SUMMARY_PREFIX) :])
    return LoadResult(
        requests=int(fields["requests"]),
        duration_s=float(fields["duration_s"]),
        connect=int(fields["connect"]),
        read=int(fields["read"]),
        write=int(fields["write"]),
        status=int(fields["status"]),
        timeout=int(fields["timeout"]),
        p50_ms=float(fields["p50_ms"]),
        p90_ms=float(fields["p90_ms"]),
        p99_ms=float(fields["p99_ms"]),
        mean_ms=float(fields["mean_ms"]),
        max_ms=float(fields["max_ms"]),
        cpu_s=cpu,
    )
