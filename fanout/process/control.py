"""What the supervisor and each of its workers tell each other, over one socket pair."""

from __future__ import annotations

from dataclasses import dataclass

from hypercorn.config import Config

#: The environment variable naming a worker's id on its jobs (the WORKER_ID setting).
WORKER_ID_ENV = "FANOUT_WORKER_ID"

#: Worker -> supervisor: lifespan startup completed, the worker serves.
READY = "ready"
#: Worker -> supervisor: startup failed; the message's second item is why.
FAILED = "failed"
#: Both ways: stop gracefully. From a worker: it got SIGTERM or SIGINT, so
#: the whole server stops (as if the supervisor had got it).
STOP = "stop"

#: A worker's exit code when its startup failed (gunicorn's WORKER_BOOT_ERROR).
EXIT_STARTUP_FAILED = 3
#: A worker's exit code when a second SIGTERM or SIGINT ended it at once.
EXIT_IMMEDIATE = 4


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs, sent by the supervisor once it has started."""

    #: Hypercorn's settings (bind ignored: the worker serves the sockets below).
    config: Config
    #: The listening sockets the supervisor bound, inherited at these fds.
    secure_fds: tuple[int, ...]
    insecure_fds: tuple[int, ...]
