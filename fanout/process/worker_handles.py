"""The supervisor's handle on one worker process: started, told, watched through a pidfd."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from multiprocessing.connection import Connection

from hypercorn.config import Config, Sockets

from fanout.process.control import STOP, WORKER_ID_ENV, WorkerSpec


@dataclass(eq=False)
class Worker:
    """One worker process, as the supervisor sees it."""

    process: subprocess.Popen[bytes]
    control: Connection
    pidfd: int
    worker_id: str
    generation: int
    started: float
    ready: bool = False
    #: Told to stop (reload, shutdown, failed startup): its exit is expected.
    stopping: bool = False
    #: Why its startup failed, as it said.
    failure: str | None = None

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.process.pid

    def tell(self, *message: str) -> None:
        """Send a message; a worker that cannot take it is exiting (its pidfd says when)."""
        with contextlib.suppress(OSError):
            self.control.send(message)

    def ask_to_stop(self) -> None:
        """Tell it to stop gracefully (once); its exit is expected from now on."""
        if not self.stopping:
            self.stopping = True
            self.tell(STOP)

    def readable(self) -> bool:
        """Whether a message from it waits to be read."""
        try:
            return self.control.poll(0)
        except (EOFError, OSError):
            return False


def spawn_worker(config: Config, sockets: Sockets, generation: int) -> Worker:
    """Start a worker process serving ``sockets`` (inherited) with ``config``."""
    ours, theirs = socket.socketpair()
    secure = tuple(sock.fileno() for sock in sockets.secure_sockets)
    insecure = tuple(sock.fileno() for sock in sockets.insecure_sockets)
    worker_id = uuid.uuid4().hex
    with theirs:
        process = subprocess.Popen(
            [sys.executable, "-m", "fanout.process.workers", str(theirs.fileno())],
            pass_fds=(theirs.fileno(), *secure, *insecure),
            env={**os.environ, WORKER_ID_ENV: worker_id},
        )
    control = Connection(ours.detach())
    control.send(WorkerSpec(config, secure, insecure))
    return Worker(
        process=process,
        control=control,
        pidfd=os.pidfd_open(process.pid),
        worker_id=worker_id,
        generation=generation,
        started=time.monotonic(),
    )


def exit_description(code: int) -> str:
    """How a worker ended, for the log: its exit code or the signal that killed it."""
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"
