"""Where a server's CPU goes under the fan-out load: py-spy samples, summed by area."""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from bench.contenders import FANOUT, QUART, Contender
from bench.harness import Bench, token
from bench.load import drive
from bench.processes import CpuMeter
from bench.scenarios import RUN_FAILURES

logger = logging.getLogger(__name__)

PROFILE_CLIENTS = 100
SAMPLES_PER_SECOND = 200
# A stack frame in py-spy's raw output: "function (path/to/file.py:line)".
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^():]*)(?::\d+)?\)$")

#: Areas a sample is charged to: the innermost frame in one of them wins,
#: so stdlib code (asyncio, ssl, socket) is charged to whoever called it.
AREAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("JSON encode/decode", ("json/", "orjson")),
    ("Fanout bridge (greenlet, ASGI)", ("bridge/",)),
    ("greenlet", ("greenlet",)),
    ("prometheus_client (metrics)", ("prometheus_client/",)),
    (
        "Fanout gateway (handlers, clients, core, jobs)",
        (
            "handlers/",
            "clients/",
            "core/",
            "jobs/",
            "app.py",
            "resources.py",
            "errors.py",
            "request_ids.py",
            "auth.py",
            "metrics.py",
            "settings.py",
            "job_kinds.py",
        ),
    ),
    ("peer app (bench/peers)", ("bench/peers/", "peers/")),
    ("Quart", ("quart/",)),
    ("Flask + Werkzeug", ("flask/", "werkzeug/")),
    (
        "aiohttp client (+ yarl, multidict)",
        ("aiohttp/", "yarl/", "multidict/", "aiohappyeyeballs/"),
    ),
    ("Hypercorn + h11", ("hypercorn/", "h11/", "wsproto/", "h2/")),
)
OTHER = "event loop and stdlib (asyncio, uvloop, ...)"


def _area(file: str) -> str | None:
    for area, markers in AREAS:
        for marker in markers:
            # "x.py" names a top-level module exactly (quart/app.py is not app.py).
            if file == marker if marker.endswith(".py") else marker in file:
                return area
    return None


def summarize(raw: str, top: int = 12) -> dict[str, Any]:
    """Shares of samples by area and the busiest leaf functions, from py-spy's raw output."""
    areas: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    # The function each sample was charged to (its area's innermost frame).
    charged: collections.Counter[tuple[str, str]] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_FRAME.match(frame) for frame in stack.split(";")]
        known = [(match, _area(match.group("file"))) for match in reversed(frames) if match]
        owner = next(((match, area) for match, area in known if area), None)
        area = owner[1] if owner and owner[1] else OTHER
        areas[area] += count
        if owner:
            match = owner[0]
            charged[(area, f"{match.group('function')} ({match.group('file')})")] += count
        leaf = frames[-1]
        if leaf:
            leaves[f"{leaf.group('function')} ({leaf.group('file')})"] += count
        total += count
    return {
        "samples": total,
        "areas": [(name, count / total) for name, count in areas.most_common()] if total else [],
        "top_leaves": [(name, count / total) for name, count in leaves.most_common(top)]
        if total
        else [],
        "top_charged": [
            (area, name, count / total) for (area, name), count in charged.most_common(4 * top)
        ]
        if total
        else [],
    }


def _py_spy() -> str | None:
    found = shutil.which("py-spy")
    beside = Path(sys.executable).with_name("py-spy")
    return found or (str(beside) if beside.exists() else None)


async def profile(bench: Bench, out_dir: Path) -> None:
    """Sample Fanout and the Quart peer (1 worker, 100 clients); runs not counted elsewhere."""
    seconds = bench.plan.profile_seconds
    py_spy = _py_spy()
    if not seconds:
        return
    if py_spy is None:
        bench.sections["profile"] = {"skipped": "py-spy is not installed"}
        return
    results: dict[str, Any] = {}
    for contender in (FANOUT, QUART):
        try:
            results[contender.key] = await _profile_one(bench, contender, py_spy, seconds, out_dir)
        except RUN_FAILURES as exc:
            logger.exception("profile of %s failed", contender.label)
            results[contender.key] = {"skipped": f"{type(exc).__name__}: {str(exc)[:300]}"}
    bench.sections["profile"] = results


async def _profile_one(
    bench: Bench, contender: Contender, py_spy: str, seconds: float, out_dir: Path
) -> dict[str, Any]:
    raw_path = out_dir / f"profile-{contender.key}-{PROFILE_CLIENTS}.txt"
    async with bench.serving(contender, 1) as served:
        path = f"/fan/{token()}-{{n}}"
        await drive(
            bench.generator,
            served.base_url,
            connections=PROFILE_CLIENTS,
            duration=bench.plan.warmup or 1.0,
            path=path,
        )
        spy = await asyncio.create_subprocess_exec(
            py_spy,
            "record",
            f"--pid={served.process.pid}",
            f"--duration={max(1, round(seconds))}",
            f"--rate={SAMPLES_PER_SECOND}",
            "--format=raw",
            # Not pausing the process: the profile costs the server nothing.
            "--nonblocking",
            f"--output={raw_path}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            cpu = CpuMeter(served.process.pid)
            load = await drive(
                bench.generator,
                served.base_url,
                connections=PROFILE_CLIENTS,
                duration=seconds + 1,
                path=path,
            )
            cpu_seconds = cpu.seconds()
            async with asyncio.timeout(seconds + 30):
                output, _ = await spy.communicate()
        finally:
            if spy.returncode is None:
                spy.kill()
                await spy.wait()
    if spy.returncode != 0 or not raw_path.exists():
        raise RuntimeError(f"py-spy failed ({spy.returncode}): {output.decode()[-300:]}")
    summary = summarize(raw_path.read_text())
    summary.update(
        requests=load.requests,
        rps=load.rps,
        cpu_ms_per_request=cpu_seconds / load.requests * 1000 if load.requests else None,
        seconds=seconds,
        rate=SAMPLES_PER_SECOND,
        raw_file=raw_path.name,
    )
    return summary
