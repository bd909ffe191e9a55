"""Child processes of the harness (servers, the upstream) and what they use: CPU and memory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import aiohttp
import psutil

logger = logging.getLogger(__name__)

#: How often the RSS sampler looks at a process tree, in seconds.
SAMPLE_SECONDS = 0.1


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ManagedProcess:
    """A child started in its own session, so ``stop`` can end it and all it spawned."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        log_path: Path,
    ) -> None:
        self.name = name
        self._argv = list(argv)
        self._cwd = cwd
        self._env = dict(env)
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The process id (of the tree's root)."""
        if self._process is None:
            raise RuntimeError(f"{self.name} was not started")
        return self._process.pid

    def start(self) -> None:
        """Start the process, its output going to its log file."""
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self._argv,
                cwd=self._cwd,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def exited(self) -> int | None:
        """Its exit status, or None while it runs."""
        return None if self._process is None else self._process.poll()

    def log_tail(self, characters: int = 1500) -> str:
        """The end of its output, for error messages."""
        try:
            return self.log_path.read_text(errors="replace")[-characters:]
        except OSError:
            return ""

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then after ``grace`` seconds SIGKILL to its whole process group."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(process.wait, grace)
        # Its session's group may still hold workers it spawned (Hypercorn's
        # supervisor); the group id is this child's pid, started by us.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        if process.poll() is None:
            process.kill()
        await asyncio.to_thread(process.wait)


@contextlib.asynccontextmanager
async def running(process: ManagedProcess) -> AsyncIterator[ManagedProcess]:
    """Start ``process`` and always stop it when the block ends."""
    try:
        process.start()
        yield process
    finally:
        await process.stop()


async def wait_ready(
    process: ManagedProcess,
    url: str,
    seconds: float = 30.0,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Wait until ``url`` answers 200 (sent ``headers``), failing early if the process exits."""
    deadline = time.monotonic() + seconds
    last = "no answer"
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            status = process.exited()
            if status is not None:
                raise RuntimeError(f"{process.name} exited ({status}):\n{process.log_tail()}")
            try:
                async with session.get(
                    url, headers=headers, timeout=aiohttp.ClientTimeout(total=5)
                ) as answer:
                    if answer.status == 200:
                        return
                    last = f"HTTP {answer.status}: {(await answer.text())[:300]}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{process.name} not ready at {url}: {last}\n{process.log_tail()}")


def tree(pid: int) -> list[psutil.Process]:
    """The process and its descendants (those still alive)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def rss_bytes(pid: int) -> int:
    """Resident memory of the process tree, summed."""
    total = 0
    for member in tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += member.memory_info().rss
    return total


class CpuMeter:
    """CPU seconds a process tree used since the meter was made."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._start = self._read()

    def _read(self) -> dict[int, float]:
        seconds: dict[int, float] = {}
        for member in tree(self._pid):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                times = member.cpu_times()
                seconds[member.pid] = times.user + times.system
        return seconds

    def seconds(self) -> float:
        """CPU seconds used since construction by the tree's members still alive."""
        now = self._read()
        return sum(max(0.0, value - self._start.get(pid, 0.0)) for pid, value in now.items())


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


class RssSampler:
    """Samples a process tree's RSS in the background; ``peak`` is the highest seen."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            # psutil reads /proc: a few hundred microseconds, fine on the loop.
            self.peak = max(self.peak, rss_bytes(self._pid))
            await asyncio.sleep(SAMPLE_SECONDS)

    async def __aenter__(self) -> RssSampler:
        self.peak = rss_bytes(self._pid)
        self._task = asyncio.get_running_loop().create_task(self._sample())
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.peak = max(self.peak, rss_bytes(self._pid))
