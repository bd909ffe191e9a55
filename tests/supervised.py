"""``fanout --workers N`` as a real process: start it, read its JSON log lines, find its workers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import sys
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.processes import ROOT, free_port, until_ready

#: The README's command, as installed in the virtualenv.
FANOUT = Path(sys.executable).with_name("fanout")
Line = dict[str, Any]


@dataclass
class Supervised:
    """A running ``fanout`` supervisor, its URL and what it has logged so far."""

    process: asyncio.subprocess.Process
    url: str
    lines: list[Line] = field(default_factory=list)
    #: Lines that were not JSON (tracebacks of workers, the one-line failure).
    other: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            text = raw.decode(errors="replace").rstrip("\n")
            try:
                self.lines.append(json.loads(text))
            except ValueError:
                self.other.append(text)

    def workers(self) -> list[int]:
        """The pids of the worker processes now (Linux /proc)."""
        found = []
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                with contextlib.suppress(OSError):
                    command = Path(f"/proc/{child}/cmdline").read_bytes()
                    if b"fanout.process.workers" in command:
                        found.append(int(child))
        return found

    async def logged(self, wanted: Callable[[Line], bool], seconds: float = 30.0) -> Line:
        """The first log line ``wanted`` accepts, waiting for it (polls)."""
        for _ in range(int(seconds / 0.02)):
            for line in self.lines:
                if wanted(line):
                    return line
            await asyncio.sleep(0.02)
        raise AssertionError(f"never logged; last lines: {self.lines[-5:]} {self.other[-5:]}")

    async def wait(self, seconds: float) -> int:
        """The exit code, waiting at most ``seconds`` (then killed, and AssertionError)."""
        try:
            code = await asyncio.wait_for(self.process.wait(), seconds)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise AssertionError(f"fanout did not exit within {seconds} s") from None
        if self.reader is not None:
            await self.reader
        return code

    async def close(self) -> None:
        """Stop it if still running (SIGTERM, then SIGKILL after 60 s)."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(AssertionError):
                await self.wait(60)
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader


async def start_supervised(
    env: dict[str, str], gateway: Path, *args: str, workers: int = 2, own_group: bool = False
) -> Supervised:
    """Start ``fanout --workers N --no-demo`` on a free port; return it once /readyz answers."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        str(FANOUT),
        "--no-demo",
        "--workers",
        str(workers),
        "--bind",
        f"127.0.0.1:{port}",
        "--gateway",
        str(gateway),
        "--hypercorn",
        str(ROOT / "hypercorn.toml"),
        *args,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        # Its own process group, for a signal to the whole group.
        start_new_session=own_group,
    )
    supervised = Supervised(process, f"http://127.0.0.1:{port}")
    supervised.reader = asyncio.create_task(supervised._read())
    if not await until_ready(supervised.url, process):
        await supervised.close()
        raise AssertionError(f"fanout never became ready: {supervised.other[-20:]}")
    # Every worker serves, not only the first (the supervisor says when).
    await supervised.logged(lambda line: line.get("message", "").startswith("all "))
    return supervised


def worker_id(pid: int) -> str:
    """The id a worker's jobs carry (the FANOUT_WORKER_ID its supervisor gave it)."""
    for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        if entry.startswith(b"FANOUT_WORKER_ID="):
            return entry.split(b"=", 1)[1].decode()
    raise AssertionError(f"process {pid} has no FANOUT_WORKER_ID")


def job_rows(database: Path) -> dict[str, tuple[str, str]]:
    """Each job in a SQLite job store: its worker and status, by id."""
    with closing(sqlite3.connect(database)) as conn:
        rows = conn.execute("SELECT id, worker, status FROM jobs").fetchall()
    return {row[0]: (row[1], row[2]) for row in rows}


def gateway_text(fault_url: str, *, extra: str = "") -> str:
    """A gateway file calling the fault upstream: /slow (1 s), /quick, and ``extra``."""
    return f"""
[upstreams.fault]
base_url = "{fault_url}"
internal = true
timeout = 30.0

[[endpoints]]
path = "/slow"
timeout = 20.0
  [[endpoints.backends]]
  upstream = "fault"
  path = "/users/slow?ms=1000"
  group = "user"

[[endpoints]]
path = "/quick"
  [[endpoints.backends]]
  upstream = "fault"
  path = "/users/quick?ms=10"
  group = "user"
{extra}
"""


def base_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a supervised fanout: jobs in a SQLite file, short job timings."""
    return {
        **os.environ,
        "FANOUT_JOB_STORE": f"sqlite:///{tmp_path / 'jobs.db'}",
        "FANOUT_JOB_POLL_SECONDS": "0.2",
        "FANOUT_JOB_GRACE_SECONDS": "1.0",
        # Longer than any test: a job marked interrupted was marked by the
        # supervisor, not by a lapsed lease.
        "FANOUT_JOB_LEASE_SECONDS": "60.0",
    }
