"""The ``fanout`` supervisor with real processes: a killed worker, a graceful stop, reloads.

Each test starts ``fanout --workers 2`` (about 2 s on 2 cores) against the
fault upstream, with its jobs in a SQLite file the test reads too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fault_upstream import FaultUpstream
from tests.processes import ROOT
from tests.supervised import (
    FANOUT,
    Line,
    base_env,
    gateway_text,
    job_rows,
    start_supervised,
    worker_id,
)

logger = logging.getLogger(__name__)

NEVER = {"upstream": "fault", "path": "/never?i={item}", "items": [1], "concurrency": 1}


def _fresh() -> aiohttp.ClientSession:
    # A new connection per request: the kernel hands each to a worker.
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


async def _start_job(client: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> str:
    async with client.post(f"{url}/jobs/batch", json=body) as response:
        assert response.status == 202, await response.text()
        job_id: str = (await response.json())["id"]
        return job_id


async def _status(client: aiohttp.ClientSession, url: str, job_id: str) -> str:
    async with client.get(f"{url}/jobs/{job_id}") as response:
        assert response.status == 200
        status: str = (await response.json())["status"]
        return status


async def _until_status(
    client: aiohttp.ClientSession, url: str, job_ids: list[str], wanted: str, seconds: float
) -> float:
    """Poll until every job has ``wanted``; the seconds it took (at most ``seconds``)."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        statuses = [await _status(client, url, job_id) for job_id in job_ids]
        if all(status == wanted for status in statuses):
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"not all {wanted} within {seconds} s: {statuses}")


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


def _message(prefix: str) -> Any:
    return lambda line: str(line.get("message", "")).startswith(prefix)


@pytest.mark.timeout(90)
async def test_a_killed_worker_is_replaced_and_its_jobs_interrupted_at_once(
    fault: FaultUpstream, tmp_path: Path
) -> None:
    gateway = tmp_path / "gateway.toml"
    gateway.write_text(gateway_text(fault.url))
    supervised = await start_supervised(base_env(tmp_path), gateway)
    try:
        url = supervised.url
        pids = supervised.workers()
        assert len(pids) == 2
        ids = {worker_id(pid): pid for pid in pids}
        async with _fresh() as client:
            # Jobs that run until stopped, until both workers hold some.
            for _ in range(40):
                await _start_job(client, url, NEVER)
                holders = {worker for worker, _ in job_rows(tmp_path / "jobs.db").values()}
                if len(holders) == 2:
                    break
            rows = job_rows(tmp_path / "jobs.db")
            victim = pids[0]
            doomed = [job for job, (worker, _) in rows.items() if ids[worker] == victim]
            spared = [job for job, (worker, _) in rows.items() if ids[worker] != victim]
            assert doomed and spared, rows
            await _until_status(client, url, [*doomed, *spared], "running", 10)

            outcomes: list[int | str] = []
            in_flight = asyncio.Semaphore(20)

            def answered_by(pid: int) -> int:
                return sum(
                    1
                    for line in supervised.lines
                    if line.get("logger") == "hypercorn.access"
                    and line.get("path") == "/quick"
                    and line["pid"] == pid
                )

            async def one(i: int) -> None:
                async with in_flight:
                    # Killed mid-load, once it has answered some of it (the
                    # kernel shares connections unevenly between workers).
                    if not killed_at and i >= 40 and answered_by(victim) >= 5:
                        os.kill(victim, signal.SIGKILL)
                        killed_at.append(time.monotonic())
                    try:
                        async with client.get(f"{url}/quick") as response:
                            await response.read()
                            outcomes.append(response.status)
                    except aiohttp.ClientError as exc:
                        outcomes.append(type(exc).__name__)

            killed_at: list[float] = []
            await asyncio.gather(*(one(i) for i in range(200)))
            served: Line = await supervised.logged(
                lambda line: (
                    str(line.get("message", "")).endswith(" serves")
                    and line.get("worker") not in pids
                )
            )
            interrupted_after = await _until_status(client, url, doomed, "interrupted", 5)
            # The other worker's jobs were left alone.
            assert {await _status(client, url, job) for job in spared} == {"running"}
            async with client.get(f"{url}/quick") as response:
                assert response.status == 200
        replaced_after = _seconds_since(served, killed_at[0])
        by_worker = {pid: answered_by(pid) for pid in supervised.workers() + pids}
        logger.info("/quick answered by worker: %s (killed: %d)", by_worker, victim)
        failed = [outcome for outcome in outcomes if outcome != 200]
        logger.info(
            "200 requests: %d failed %s; replacement served %.2f s after the kill; "
            "jobs interrupted %.2f s after it",
            len(failed),
            failed,
            replaced_after,
            interrupted_after,
        )
        assert killed_at, f"the worker to kill answered none of the load: {by_worker}"
        # At most the requests in flight at the kill (20 at a time), on the killed worker.
        assert len(outcomes) == 200 and len(failed) <= 20, failed
        assert replaced_after < 5.0
        assert supervised.process.returncode is None
        assert len(supervised.workers()) == 2
    finally:
        await supervised.close()


def _seconds_since(line: Line, monotonic_moment: float) -> float:
    # Log lines carry wall-clock times; the kill was timed on the monotonic clock.
    logged = datetime.fromisoformat(line["ts"]).timestamp()
    return logged - (time.time() - (time.monotonic() - monotonic_moment))


async def _first_sse_event(response: aiohttp.ClientResponse) -> str:
    async for raw in response.content:
        if raw.startswith(b"event: "):
            return raw.decode().strip()
    raise AssertionError("the stream ended without an event")


async def _shutdown_event(response: aiohttp.ClientResponse) -> float:
    """Read the stream to its end; when its ``event: shutdown`` came (monotonic)."""
    seen = None
    async for raw in response.content:
        if raw.startswith(b"event: shutdown"):
            seen = time.monotonic()
    assert seen is not None, "the stream ended without event: shutdown"
    return seen


@pytest.mark.timeout(90)
@pytest.mark.parametrize("target", ["group", "supervisor", "worker"])
async def test_sigterm_to_any_process_stops_gracefully(
    fault: FaultUpstream, tmp_path: Path, target: str
) -> None:
    gateway = tmp_path / "gateway.toml"
    gateway.write_text(gateway_text(fault.url))
    supervised = await start_supervised(base_env(tmp_path), gateway, own_group=True)
    try:
        url = supervised.url
        async with _fresh() as client, aiohttp.ClientSession() as streaming:
            short = {"upstream": "fault", "path": "/json?ms=300&i={item}", "items": [1, 2]}
            jobs = [
                await _start_job(client, url, short),
                await _start_job(client, url, NEVER),
                await _start_job(client, url, NEVER),
            ]
            await _until_status(client, url, jobs[1:], "running", 10)
            stream = await streaming.get(f"{url}/jobs/{jobs[1]}/events")
            assert await _first_sse_event(stream) == "event: job"
            slow = asyncio.create_task(client.get(f"{url}/slow"))
            await _until(lambda: fault.hits["/users/slow"] > 0)

            signalled = time.monotonic()
            if target == "group":
                os.killpg(supervised.process.pid, signal.SIGTERM)
            elif target == "supervisor":
                supervised.process.send_signal(signal.SIGTERM)
            else:
                os.kill(supervised.workers()[0], signal.SIGTERM)
            shutdown_at = await _shutdown_event(stream)
            stream.release()
            response = await slow
            assert response.status == 200
            body = await response.json()
            code = await supervised.wait(15)
        stopped_after = time.monotonic() - signalled
    finally:
        await supervised.close()
    assert code == 0, supervised.other[-20:]
    assert body["user"]["id"] == "slow"
    assert shutdown_at - signalled < 1.0
    statuses = {job: status for job, (_, status) in job_rows(tmp_path / "jobs.db").items()}
    assert statuses[jobs[1]] == statuses[jobs[2]] == "interrupted"
    assert statuses[jobs[0]] in ("succeeded", "failed", "interrupted")
    # graceful: the 1 s request, then the jobs' 1 s grace; never the 30 s graceful_timeout.
    assert stopped_after < 10.0, stopped_after
    # A clean stop: no error logged, no traceback (no stream cut by cancellation).
    errors = [line for line in supervised.lines if line["level"] in ("error", "critical")]
    assert not errors and not any("Traceback" in line for line in supervised.other), errors
    logger.info("SIGTERM to the %s: stopped in %.2f s", target, stopped_after)


@pytest.mark.timeout(60)
async def test_a_second_sigterm_stops_at_once(fault: FaultUpstream, tmp_path: Path) -> None:
    gateway = tmp_path / "gateway.toml"
    gateway.write_text(gateway_text(fault.url))
    supervised = await start_supervised(base_env(tmp_path), gateway)
    try:
        async with _fresh() as client:
            job = await _start_job(client, supervised.url, NEVER)
            await _until_status(client, supervised.url, [job], "running", 10)
            held = asyncio.create_task(client.get(f"{supervised.url}/proxy/fault/never"))
            await _until(lambda: fault.hits["/never"] >= 2)
            signalled = time.monotonic()
            supervised.process.send_signal(signal.SIGTERM)
            await supervised.logged(_message("stopping (SIGTERM)"))
            supervised.process.send_signal(signal.SIGTERM)
            code = await supervised.wait(10)
            stopped_after = time.monotonic() - signalled
            with pytest.raises(aiohttp.ClientError):
                await held
    finally:
        await supervised.close()
    assert code != 0
    # At once: not after the held request's 30 s graceful_timeout.
    assert stopped_after < 5.0
    ((_, status),) = job_rows(tmp_path / "jobs.db").values()
    assert status == "interrupted"


async def _steady_load(url: str, stop: asyncio.Event, outcomes: list[int | str]) -> None:
    """Requests until ``stop``: 2 clients on a new connection each time, 2 on keep-alive ones."""

    async def one_client(client: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            try:
                async with client.get(f"{url}/quick") as response:
                    await response.read()
                    outcomes.append(response.status)
            except aiohttp.ClientError as exc:
                outcomes.append(type(exc).__name__)

    async with _fresh() as fresh, aiohttp.ClientSession() as kept:
        await asyncio.gather(*(one_client(client) for client in (fresh, fresh, kept, kept)))


@pytest.mark.timeout(120)
async def test_sighup_reloads_without_a_failed_request_and_keeps_serving_on_a_bad_file(
    fault: FaultUpstream, tmp_path: Path
) -> None:
    gateway = tmp_path / "gateway.toml"
    gateway.write_text(gateway_text(fault.url))
    supervised = await start_supervised(base_env(tmp_path), gateway)
    stop = asyncio.Event()
    outcomes: list[int | str] = []
    load = asyncio.create_task(_steady_load(supervised.url, stop, outcomes))
    try:
        old = supervised.workers()
        added = '[[endpoints]]\npath = "/added"\n  [[endpoints.backends]]\n'
        added += '  upstream = "fault"\n  path = "/users/added"\n  group = "user"\n'
        gateway.write_text(gateway_text(fault.url, extra=added))
        supervised.process.send_signal(signal.SIGHUP)
        await supervised.logged(_message("reloaded:"))
        for pid in old:
            await supervised.logged(_message(f"worker {pid} stopped (exit code 0)"))
        new = supervised.workers()
        assert len(new) == 2 and not set(new) & set(old)
        async with _fresh() as client, client.get(f"{supervised.url}/added") as response:
            assert response.status == 200

        # Invalid: refused before any worker starts.
        gateway.write_text('[server]\nmax_body_bytes = "big"\n')
        supervised.process.send_signal(signal.SIGHUP)
        refused = await supervised.logged(_message("reload refused"))
        assert "max_body_bytes" in refused["message"]
        # Valid, but its [app] code cannot be imported: the new workers fail.
        gateway.write_text(
            gateway_text(fault.url, extra=added) + '\n[app]\nblueprints = ["nowhere:bp"]\n'
        )
        supervised.process.send_signal(signal.SIGHUP)
        await supervised.logged(_message("reload failed"))
        async with _fresh() as client, client.get(f"{supervised.url}/added") as response:
            assert response.status == 200
        # The other new worker, told to stop, exits too; the old ones stay.
        for _ in range(500):
            if sorted(supervised.workers()) == sorted(new):
                break
            await asyncio.sleep(0.02)
        assert sorted(supervised.workers()) == sorted(new)
        await asyncio.sleep(0.5)  # more requests after the failed reload
    finally:
        stop.set()
        await load
        await supervised.close()
    failed = [outcome for outcome in outcomes if outcome != 200]
    logger.info("steady load through 3 reloads: %d requests, %d failed", len(outcomes), len(failed))
    assert len(outcomes) > 100 and not failed, failed
    assert supervised.process.returncode == 0


#: An [app] module that hangs at import in a worker (not in the supervisor's check).
HANGS_IN_WORKERS = """
import os
import time

from flask import Blueprint

blueprint = Blueprint("hangs", __name__)
if os.environ.get("FANOUT_WORKER_ID"):
    time.sleep(60)
"""


@pytest.mark.timeout(60)
async def test_a_worker_not_ready_within_startup_timeout_fails_the_start(tmp_path: Path) -> None:
    (tmp_path / "hangs.py").write_text(HANGS_IN_WORKERS)
    (tmp_path / "gateway.toml").write_text('[app]\nblueprints = ["hangs:blueprint"]\n')
    hypercorn = (
        (ROOT / "hypercorn.toml")
        .read_text()
        .replace("startup_timeout = 30.0", "startup_timeout = 2.0")
    )
    assert "startup_timeout = 2.0" in hypercorn
    (tmp_path / "hypercorn.toml").write_text(hypercorn)
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        str(FANOUT),
        "--no-demo",
        "--workers",
        "2",
        "--bind",
        "127.0.0.1:0",
        cwd=tmp_path,
        env=base_env(tmp_path),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    took = time.monotonic() - started
    assert process.returncode == 1
    plain = [line for line in stderr.decode().splitlines() if not line.startswith("{")]
    assert len(plain) == 1 and plain[0].startswith("fanout: worker "), plain
    assert plain[0].endswith("did not start within 2 s")
    # Within startup_timeout, and the workers told to stop (then killed) a few seconds after.
    assert took < 2.0 + 8.0, took


#: An [app] module that fails at import while its marker file exists.
FAILS_WITH_MARKER = """
from pathlib import Path

from flask import Blueprint

blueprint = Blueprint("flaky", __name__)
if (Path(__file__).parent / "broken").exists():
    raise RuntimeError("broken on purpose")
"""


@pytest.mark.timeout(90)
async def test_a_replacement_that_cannot_start_is_retried_later_and_later(
    fault: FaultUpstream, tmp_path: Path
) -> None:
    (tmp_path / "flaky.py").write_text(FAILS_WITH_MARKER)
    gateway = tmp_path / "gateway.toml"
    gateway.write_text(gateway_text(fault.url) + '\n[app]\nblueprints = ["flaky:blueprint"]\n')
    supervised = await start_supervised(base_env(tmp_path), gateway)
    try:
        first, second = supervised.workers()
        (tmp_path / "broken").write_text("")
        os.kill(first, signal.SIGKILL)
        spawned: list[Line] = []
        failed: list[Line] = []
        for _ in range(2):
            spawned.append(await _next_spawn(supervised, {first, second}, spawned))
            pid = _spawned_pid(spawned[-1])
            failed.append(await supervised.logged(_message(f"worker {pid} did not start")))
        # Meanwhile the other worker serves.
        async with _fresh() as client, client.get(f"{supervised.url}/quick") as response:
            assert response.status == 200
        (tmp_path / "broken").unlink()
        spawned.append(await _next_spawn(supervised, {first, second}, spawned))
        await supervised.logged(
            lambda line: (
                str(line.get("message", "")).endswith(" serves")
                and line.get("worker") == _spawned_pid(spawned[-1])
            )
        )
        assert len(supervised.workers()) == 2
    finally:
        await supervised.close()
    assert all("RuntimeError: broken on purpose" in line["message"] for line in failed)
    assert [line["message"][-1] for line in failed] == ["1", "2"]
    # Each retry waited longer than the one before: at least 0.5 s, then 1 s
    # after the failure (lower bounds only: a busy machine makes them longer).
    waits = [_ts(spawned[n + 1]) - _ts(failed[n]) for n in range(2)]
    assert waits[0] >= 0.5 - 0.01 and waits[1] >= 1.0 - 0.01, waits


def _ts(line: Line) -> float:
    return datetime.fromisoformat(line["ts"]).timestamp()


def _spawned_pid(line: Line) -> int:
    return int(line["message"].split()[1])


async def _next_spawn(supervised: Any, known: set[int], spawned: list[Line]) -> Line:
    """The supervisor's log line of the next worker it starts in place of a dead one."""
    seen = known | {_spawned_pid(line) for line in spawned}
    found: Line = await supervised.logged(
        lambda line: (
            str(line.get("message", "")).endswith("in place of a dead one")
            and _spawned_pid(line) not in seen
        )
    )
    return found


#: An [app] module whose import takes a while in a worker, saying when it began.
SLOW_IN_WORKERS = """
import os
import time
from pathlib import Path

from flask import Blueprint

blueprint = Blueprint("slow", __name__)
if os.environ.get("FANOUT_WORKER_ID"):
    (Path(__file__).parent / f"starting-{os.getpid()}").write_text("")
    time.sleep(1.5)
"""


@pytest.mark.timeout(60)
async def test_sigterm_to_the_group_while_the_workers_start_is_a_clean_stop(
    tmp_path: Path,
) -> None:
    (tmp_path / "slow.py").write_text(SLOW_IN_WORKERS)
    (tmp_path / "gateway.toml").write_text('[app]\nblueprints = ["slow:blueprint"]\n')
    process = await asyncio.create_subprocess_exec(
        str(FANOUT),
        "--no-demo",
        "--workers",
        "2",
        "--bind",
        "127.0.0.1:0",
        "--hypercorn",
        str(ROOT / "hypercorn.toml"),
        cwd=tmp_path,
        env=base_env(tmp_path),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        # Both workers are importing the app's code (systemctl stop right after start).
        await _until(lambda: len(list(tmp_path.glob("starting-*"))) == 2)
        os.killpg(process.pid, signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = stderr.decode()
    assert process.returncode == 0, text[-3000:]
    assert "killed by" not in text and "did not start" not in text
