"""``fanout`` (launcher.main) as a real process: the demo upstream, the gateway, a clean stop."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from fanout.process.config_files import StartError, find_upwards, gateway_file, hypercorn_file
from tests.processes import ROOT, free_port, until_ready
from tests.worker_processes import samples

#: The README's command, as installed in the virtualenv.
FANOUT = Path(sys.executable).with_name("fanout")


async def _start(
    env: dict[str, str], *args: str, cwd: Path = ROOT
) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        str(FANOUT),
        "--bind",
        f"127.0.0.1:{port}",
        *args,
        cwd=cwd,
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
    temp = tmp_path / "tmp"  # where the launcher's mkdtemp lands
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    # Started in a subdirectory of the project: fanout finds its gateway.toml
    # and hypercorn.toml, and --demo-port points the shipped file's demo
    # upstream at the demo it starts.
    process, url = await _start(
        env, "--demo-port", str(demo_port), "--workers", "2", cwd=ROOT / "handlers"
    )
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


async def _run_to_end(*args: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``fanout`` expecting it to stop by itself; its exit code and stderr."""
    process = await asyncio.create_subprocess_exec(
        str(FANOUT),
        *args,
        cwd=cwd,
        env=os.environ if env is None else env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stderr.decode()


def _one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.timeout(120)
async def test_fanout_started_in_root_dir_serves_with_named_files(tmp_path: Path) -> None:
    project = tmp_path / "shop"
    project.mkdir()
    # The shipped file under another name, in a directory without app.py:
    # the installed app serves it.
    gateway = project / "shop.toml"
    gateway.write_text((ROOT / "gateway.toml").read_text())
    demo_port = free_port()
    env = dict(os.environ)
    env.pop("FANOUT_JOB_STORE")  # the file's own store: sqlite:///var/fanout/jobs.db
    process, url = await _start(
        env,
        "--gateway",
        str(gateway),
        "--hypercorn",
        str(ROOT / "hypercorn.toml"),
        "--demo-port",
        str(demo_port),
        cwd=Path("/"),
    )
    stopped = False
    try:
        async with aiohttp.ClientSession(url) as client:
            async with client.get("/healthz") as response:
                assert response.status == 200
            async with client.get("/profiles/7") as response:
                assert response.status == 200
                assert response.headers["X-Fanout-Completed"] == "true"
                profile = await response.json()
        stderr = await _stop(process, signal.SIGTERM)
        stopped = True
    finally:
        if not stopped:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr
    assert profile["user"]["id"] == 7
    # The relative sqlite path is the gateway file's directory's, not /'s.
    assert (project / "var" / "fanout" / "jobs.db").is_file()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", ["0", "2"])
async def test_a_broken_gateway_file_is_one_line_and_a_failure(
    tmp_path: Path, workers: str
) -> None:
    (tmp_path / "gateway.toml").write_text('[server]\nmax_body_bytes = "big"\n')
    (tmp_path / "hypercorn.toml").write_text((ROOT / "hypercorn.toml").read_text())
    code, stderr = await _run_to_end(
        "--no-demo", "--bind", "127.0.0.1:0", "--workers", workers, cwd=tmp_path
    )
    assert code != 0
    problem = "gateway.toml: server.max_body_bytes: expected an integer >= 0, got 'big'"
    assert _one_line(stderr) == f"fanout: {problem}"


@pytest.mark.timeout(60)
async def test_without_a_gateway_file_one_line_says_how_to_name_one(tmp_path: Path) -> None:
    code, stderr = await _run_to_end("--no-demo", cwd=tmp_path)
    assert code != 0
    line = _one_line(stderr)
    assert f"no gateway.toml in {tmp_path} or its parents" in line
    assert "--gateway FILE" in line and "FANOUT_CONFIG" in line

    code, stderr = await _run_to_end("--gateway", "shop.toml", cwd=tmp_path)
    assert code != 0
    assert _one_line(stderr) == "fanout: --gateway shop.toml: no such file"


@pytest.mark.timeout(60)
async def test_without_a_hypercorn_file_one_line_says_how_to_name_one(tmp_path: Path) -> None:
    (tmp_path / "gateway.toml").write_text("")
    code, stderr = await _run_to_end("--no-demo", cwd=tmp_path)
    assert code != 0
    line = _one_line(stderr)
    assert "no hypercorn.toml" in line and "--hypercorn FILE" in line


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("bind = [\n", "hypercorn.toml: invalid TOML: "),
        (
            'bind = ["127.0.0.1:0"]\nwrokers = 2\n',
            "hypercorn.toml: wrokers: not a Hypercorn setting",
        ),
        ('workers = "2"\n', "hypercorn.toml: workers: expected an integer, got '2'"),
    ],
)
async def test_a_broken_hypercorn_file_is_one_line_and_a_failure(
    tmp_path: Path, text: str, problem: str
) -> None:
    (tmp_path / "gateway.toml").write_text("")
    (tmp_path / "hypercorn.toml").write_text(text)
    code, stderr = await _run_to_end("--no-demo", cwd=tmp_path)
    assert code != 0
    assert _one_line(stderr).startswith(f"fanout: {problem}")


@pytest.mark.timeout(60)
async def test_a_busy_port_is_one_line_and_a_failure(tmp_path: Path) -> None:
    (tmp_path / "gateway.toml").write_text("")
    (tmp_path / "hypercorn.toml").write_text((ROOT / "hypercorn.toml").read_text())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, stderr = await _run_to_end("--no-demo", "--bind", f"127.0.0.1:{port}", cwd=tmp_path)
        demo_code, demo_stderr = await _run_to_end(
            "--bind", "127.0.0.1:0", "--demo-port", str(port), cwd=tmp_path
        )
    assert code != 0
    line = _one_line(stderr)
    assert line.startswith(f"fanout: cannot serve on 127.0.0.1:{port}: ")
    assert "--bind" in line
    assert demo_code != 0
    line = _one_line(demo_stderr)
    assert line.startswith(f"fanout: cannot start the demo upstream on 127.0.0.1:{port}: ")
    assert "--demo-port" in line and "--no-demo" in line


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", ["0", "2"])
async def test_a_gateway_that_fails_at_startup_exits_non_zero(tmp_path: Path, workers: str) -> None:
    # Valid, but the store cannot be opened: the workers' startup fails, and
    # Hypercorn's own supervisor would exit 0 (pgjones/hypercorn#269).
    (tmp_path / "gateway.toml").write_text('[jobs]\nstore = "sqlite:////proc/fanout/jobs.db"\n')
    (tmp_path / "hypercorn.toml").write_text((ROOT / "hypercorn.toml").read_text())
    env = dict(os.environ)
    env.pop("FANOUT_JOB_STORE")
    code, stderr = await _run_to_end(
        "--no-demo", "--bind", "127.0.0.1:0", "--workers", workers, cwd=tmp_path, env=env
    )
    assert code != 0, stderr
    assert "StoreUnavailable" in stderr  # the worker's reason, logged
    last = stderr.splitlines()[-1]
    assert last.startswith("fanout: "), stderr


@pytest.mark.timeout(60)
async def test_config_is_refused_with_the_two_flags_to_use(tmp_path: Path) -> None:
    (tmp_path / "shop.toml").write_text("")
    code, stderr = await _run_to_end("--config", "shop.toml", cwd=tmp_path)
    assert code == 2
    line = _one_line(stderr)
    assert "--config" in line and "--gateway FILE" in line and "--hypercorn FILE" in line


@pytest.mark.timeout(60)
async def test_help_is_plain_text_naming_the_environment_variables(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        str(FANOUT), "--help", cwd=tmp_path, stdout=asyncio.subprocess.PIPE
    )
    stdout, _ = await process.communicate()
    assert process.returncode == 0
    text = stdout.decode()
    for name in (
        "FANOUT_CONFIG",
        "FANOUT_JOB_STORE",
        "FANOUT_LOG_LEVEL",
        "PROMETHEUS_MULTIPROC_DIR",
    ):
        assert name in text
    for flag in ("--gateway FILE", "--hypercorn FILE", "--demo-port PORT", "--no-demo"):
        assert flag in text
    assert "``" not in text  # no reStructuredText markup


def test_files_are_found_upwards(tmp_path: Path) -> None:
    (tmp_path / "gateway.toml").write_text("")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    (tmp_path / "a" / "hypercorn.toml").write_text("")
    gateway = gateway_file(None, {}, deep)
    assert gateway == tmp_path / "gateway.toml"
    # Beside the gateway file first, then upwards from the current directory.
    assert hypercorn_file(None, gateway, deep) == tmp_path / "a" / "hypercorn.toml"
    (tmp_path / "hypercorn.toml").write_text("")
    assert hypercorn_file(None, gateway, deep) == tmp_path / "hypercorn.toml"
    # Named files win, and must exist.
    assert gateway_file(None, {"FANOUT_CONFIG": str(gateway)}, Path("/")) == gateway
    with pytest.raises(StartError, match=r"^FANOUT_CONFIG=nope\.toml: no such file$"):
        gateway_file(None, {"FANOUT_CONFIG": "nope.toml"}, deep)
    assert find_upwards("absent.toml", deep) is None
