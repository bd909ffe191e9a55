"""``fanout`` (launcher.main) as a real process: the demo upstream, the gateway, a clean stop."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.processes import ROOT, free_port, until_ready
from tests.worker_processes import samples

#: The README's command, as installed in the virtualenv.
FANOUT = Path(sys.executable).with_name("fanout")


async def _start(env: dict[str, str], *args: str) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        str(FANOUT),
        "--bind",
        f"127.0.0.1:{port}",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    if await until_ready(url, process):
        return process, url
    # It stopped (the error is on stderr), or never got ready.
    if process.returncode is None:
        process.kill()
    _, stderr = await process.communicate()
    raise AssertionError(f"fanout never became ready: {stderr.decode()[-2000:]}")


async def _stop(process: asyncio.subprocess.Process, signum: signal.Signals) -> str:
    process.send_signal(signum)
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    return stderr.decode()


def _children(pid: int) -> dict[int, str]:
    """The child processes of ``pid``, with their command lines (Linux /proc)."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            command = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
            found[int(child)] = command.decode()
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(180)
async def test_fanout_serves_the_demo_profile_then_stops_its_children_and_metrics_dir(
    tmp_path: Path,
) -> None:
    assert FANOUT.exists(), f"{FANOUT}: the package is not installed (pip install -e .)"
    demo_port = free_port()
    # The shipped gateway file, pointed at this run's demo upstream port.
    shipped = (ROOT / "gateway.toml").read_text()
    assert "http://127.0.0.1:8081" in shipped
    config = tmp_path / "gateway.toml"
    config.write_text(shipped.replace("http://127.0.0.1:8081", f"http://127.0.0.1:{demo_port}"))
    temp = tmp_path / "tmp"  # where the launcher's mkdtemp lands
    temp.mkdir()
    env = {**os.environ, "FANOUT_CONFIG": str(config), "TMPDIR": str(temp)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    process, url = await _start(env, "--demo-port", str(demo_port), "--workers", "2")
    stopped = False
    try:
        async with aiohttp.ClientSession(url) as client:
            async with client.get("/profiles/7") as response:
                assert response.status == 200
                assert response.headers["X-Fanout-Completed"] == "true"
                profile = await response.json()
            async with client.get("/metrics") as response:
                found = samples(await response.text())
        demos = [
            pid for pid, command in _children(process.pid).items() if "-m fanout.demo" in command
        ]
        (made,) = list(temp.glob("fanout-metrics-*"))
        assert list(made.glob("counter_*.db"))  # the workers write their samples there
        stderr = await _stop(process, signal.SIGTERM)
        stopped = True
    finally:
        if not stopped:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr
    assert set(profile) == {"user", "orders", "recommendations"}
    assert profile["user"]["id"] == 7
    route = (("method", "GET"), ("route", "/profiles/<int:user_id>"), ("status", "200"))
    assert found[("fanout_http_requests_total", route)] == 1
    assert len(demos) == 1
    assert not _alive(demos[0])  # the demo upstream was stopped with the gateway
    assert not made.exists() and not list(temp.iterdir())  # the metrics directory is gone


#: A previous run's samples left in a metrics directory.
PREVIOUS_RUN = """
from prometheus_client import Counter

Counter("fanout_http_requests", "", ["route", "method", "status"]).labels(
    "/healthz", "GET", "200"
).inc(1000)
"""


@pytest.mark.timeout(180)
async def test_fanout_clears_a_given_metrics_dir_of_a_previous_run(tmp_path: Path) -> None:
    given = tmp_path / "metrics"
    given.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(given)}
    previous = await asyncio.create_subprocess_exec(sys.executable, "-c", PREVIOUS_RUN, env=env)
    assert await previous.wait() == 0
    (left,) = list(given.glob("counter_*.db"))
    process, url = await _start(env, "--no-demo", "--workers", "2")
    stopped = False
    try:
        async with aiohttp.ClientSession(url) as client:
            for _ in range(3):
                async with client.get("/healthz") as response:
                    assert response.status == 200
            async with client.get("/metrics") as response:
                found = samples(await response.text())
        stderr = await _stop(process, signal.SIGINT)
        stopped = True
    finally:
        if not stopped:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr
    route = (("method", "GET"), ("route", "/healthz"), ("status", "200"))
    assert found[("fanout_http_requests_total", route)] == 3  # this run's only
    assert given.is_dir() and not left.exists()  # the given directory is kept, emptied
