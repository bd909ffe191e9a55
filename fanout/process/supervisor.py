"""The ``fanout`` supervisor: worker processes on sockets bound once, kept alive, stopped gently.

Anchored on gunicorn's arbiter and uvicorn's multiprocess supervisor: one
loop in the main thread waits on a self-pipe of signals, on each worker's
exit (a pidfd) and on each worker's control socket. The supervisor binds the
listening sockets once; every worker (fanout/process/workers.py) serves
them, so a worker that exits or is replaced never refuses a connection.

- A worker that dies is replaced (after a growing delay while replacements
  keep failing at startup); its pending and running jobs are marked
  interrupted at once.
- SIGTERM or SIGINT, to the supervisor or to any worker: every worker stops
  gracefully; the second one ends everything at once.
- SIGHUP: the gateway file is read again; valid, a new set of workers
  starts with it and the old ones stop gracefully once all the new ones
  serve; invalid (or the new workers fail to start), the old ones go on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import FrameType
from typing import Any

from hypercorn.config import Config, Sockets

from fanout.process.control import (
    EXIT_IMMEDIATE,
    FAILED,
    READY,
    STOP,
)
from fanout.process.rescue import JobStoreRef, interrupt_jobs_of
from fanout.process.worker_handles import Worker, exit_description, spawn_worker

logger = logging.getLogger(__name__)

#: The first delay before replacing a worker that failed at startup; it
#: doubles with each further failure, up to the maximum.
BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0
#: After the graceful timeout and the lifespan shutdown, how long the
#: supervisor waits for a stopping worker before killing it.
STOP_MARGIN_SECONDS = 5.0
#: How long workers told to stop after a failed startup get before being killed.
ABORT_SECONDS = 5.0


class StartupFailed(Exception):
    """A worker could not start while the server was starting; the message says why."""


class Phase(Enum):
    """Where the supervisor is in its life."""

    STARTING = "starting"
    SERVING = "serving"
    STOPPING = "stopping"


@dataclass
class Supervisor:
    """Run ``count`` workers serving ``config`` until told to stop (``run``: the exit code)."""

    config: Config
    count: int
    store: JobStoreRef
    #: Re-reads and checks the gateway file (SIGHUP); raises with the reason when invalid.
    check_gateway: Callable[[], JobStoreRef]
    workers: list[Worker] = field(default_factory=list)
    phase: Phase = Phase.STARTING
    generation: int = 0
    #: The new generation's workers while a reload is under way.
    incoming: list[Worker] = field(default_factory=list)
    failures_in_a_row: int = 0
    respawn_at: float | None = None
    stop_deadline: float | None = None
    stop_signals: int = 0
    clean_stop: bool = True
    _selector: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)
    _sockets: Sockets | None = None
    _wakeup: tuple[int, int] | None = None

    def run(self) -> int:
        """Bind, start the workers, supervise them; the exit code (StartupFailed at startup)."""
        if self.config.pid_path is not None:
            # As Hypercorn's own run does: the pid to signal is this process's.
            Path(self.config.pid_path).write_text(str(os.getpid()))
        try:
            self._sockets = self.config.create_sockets()
        except OSError as exc:
            raise StartupFailed(f"cannot serve: {exc.strerror or exc}") from None
        listening = (*self._sockets.secure_sockets, *self._sockets.insecure_sockets)
        for sock in listening:
            # Listening before any worker does: connections wait in the backlog.
            sock.listen(self.config.backlog)
        previous = self._install_signals()
        try:
            for _ in range(self.count):
                self.workers.append(self._spawn(self.generation))
            logger.info(
                "supervisor started %d workers: %s",
                self.count,
                " ".join(str(worker.pid) for worker in self.workers),
            )
            return self._loop()
        finally:
            self._kill_all()
            self._restore_signals(previous)
            for sock in listening:
                sock.close()
            self._selector.close()

    # Signals

    def _install_signals(self) -> dict[int, Any]:
        read, write = os.pipe()
        os.set_blocking(read, False)
        os.set_blocking(write, False)
        self._wakeup = (read, write)
        self._selector.register(read, selectors.EVENT_READ, "signals")
        previous: dict[int, Any] = {-1: signal.set_wakeup_fd(write, warn_on_full_buffer=False)}
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            # Handled in the loop, from the wakeup fd; the handler only has to exist.
            previous[signum] = signal.signal(signum, _noted)
        return previous

    def _restore_signals(self, previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            if signum == -1:
                signal.set_wakeup_fd(handler)
            else:
                signal.signal(signum, handler)
        if self._wakeup is not None:
            for fd in self._wakeup:
                os.close(fd)

    def _signals(self) -> None:
        assert self._wakeup is not None
        try:
            received = os.read(self._wakeup[0], 4096)
        except BlockingIOError:
            return
        for signum in received:
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.stop_signals += 1
                if self.stop_signals > 1:
                    self._stop_now(signal.Signals(signum).name)
                else:
                    self._stop(signal.Signals(signum).name)
            elif signum == signal.SIGHUP:
                self._reload()

    # Workers

    def _spawn(self, generation: int) -> Worker:
        assert self._sockets is not None
        worker = spawn_worker(self.config, self._sockets, generation)
        self._selector.register(worker.pidfd, selectors.EVENT_READ, ("exit", worker))
        self._selector.register(worker.control.fileno(), selectors.EVENT_READ, ("control", worker))
        return worker

    def _message(self, worker: Worker) -> None:
        try:
            message = worker.control.recv()
        except (EOFError, OSError):
            self._selector.unregister(worker.control.fileno())
            return
        self._handle(worker, message)

    def _handle(self, worker: Worker, message: tuple[str, ...]) -> None:
        if message[0] == READY:
            self._ready(worker)
        elif message[0] == FAILED:
            # The first reason is the root one (the app's, before Hypercorn's wrapping).
            worker.failure = worker.failure or message[1]
        elif message[0] == STOP:
            # The worker got SIGTERM or SIGINT itself: the whole server stops.
            self._stop(f"{message[1]} to worker {worker.pid}")

    def _ready(self, worker: Worker) -> None:
        worker.ready = True
        logger.info("worker %d serves", worker.pid, extra={"worker": worker.pid})
        if worker in self.incoming:
            if all(new.ready for new in self.incoming):
                self._switch_generation()
            return
        if worker.generation == self.generation:
            self.failures_in_a_row = 0
        if self.phase is Phase.STARTING and all(w.ready for w in self.workers):
            self.phase = Phase.SERVING
            logger.info("all %d workers serve", len(self.workers))

    def _exited(self, worker: Worker) -> None:
        code = worker.process.wait()
        # Messages sent just before exiting (ready, why startup failed) are still to be read.
        while worker.readable():
            try:
                message = worker.control.recv()
            except (EOFError, OSError):
                break
            if message[0] != STOP:
                self._handle(worker, message)
        was_incoming = worker in self.incoming
        self._forget(worker)
        how = exit_description(code)
        if code != 0 and worker.ready:
            # Only a worker that served can have taken jobs.
            marked = interrupt_jobs_of(self.store, [worker.worker_id])
            if marked:
                logger.warning("worker %d: %d of its jobs marked interrupted", worker.pid, marked)
        if self.phase is Phase.STOPPING:
            if code != 0:
                self.clean_stop = False
            logger.info("worker %d stopped (%s)", worker.pid, how)
            return
        if worker.stopping:
            logger.info("worker %d stopped (%s)", worker.pid, how)
            return
        reason = worker.failure or how
        if was_incoming:
            self._reload_failed(f"worker {worker.pid} did not start: {reason}")
            return
        if self.phase is Phase.STARTING:
            raise StartupFailed(f"worker {worker.pid} did not start: {reason}")
        if worker.ready:
            # Exit code 0 unasked: Hypercorn's max_requests recycled it.
            level = logging.INFO if code == 0 else logging.ERROR
            logger.log(level, "worker %d exited (%s); starting another", worker.pid, how)
            self.failures_in_a_row = 0
        else:
            self.failures_in_a_row += 1
            logger.error(
                "worker %d did not start (%s); failures in a row: %d",
                worker.pid,
                reason,
                self.failures_in_a_row,
            )
        self._schedule_respawn()

    def _forget(self, worker: Worker) -> None:
        for fd in (worker.pidfd, worker.control.fileno()):
            # Unregistered already when its control socket closed first.
            with contextlib.suppress(KeyError):
                self._selector.unregister(fd)
        os.close(worker.pidfd)
        worker.control.close()
        if worker in self.workers:
            self.workers.remove(worker)
        if worker in self.incoming:
            self.incoming.remove(worker)

    def _schedule_respawn(self) -> None:
        at = time.monotonic() + backoff_seconds(self.failures_in_a_row)
        self.respawn_at = at if self.respawn_at is None else min(self.respawn_at, at)

    def _respawn(self) -> None:
        self.respawn_at = None
        serving = [w for w in self.workers if w.generation == self.generation and not w.stopping]
        for _ in range(self.count - len(serving)):
            worker = self._spawn(self.generation)
            self.workers.append(worker)
            logger.info("worker %d started in place of a dead one", worker.pid)

    # Reload

    def _reload(self) -> None:
        if self.phase is not Phase.SERVING:
            logger.warning("SIGHUP while %s: ignored", self.phase.value)
            return
        if self.incoming:
            logger.warning("SIGHUP while reloading: ignored")
            return
        try:
            store = self.check_gateway()
        except Exception as exc:  # noqa: BLE001 - any reason the file is refused is logged
            logger.error("reload refused, the workers keep serving: %s", exc)
            return
        self.store = store
        logger.info("reloading: starting %d new workers", self.count)
        self.incoming = [self._spawn(self.generation + 1) for _ in range(self.count)]

    def _switch_generation(self) -> None:
        old = [w for w in self.workers if w.generation == self.generation]
        self.generation += 1
        self.workers.extend(self.incoming)
        self.incoming = []
        for worker in old:
            worker.ask_to_stop()
        logger.info("reloaded: %d new workers serve, %d old ones stopping", self.count, len(old))

    def _reload_failed(self, reason: str) -> None:
        logger.error("reload failed, the old workers keep serving: %s", reason)
        for worker in list(self.incoming):
            worker.ask_to_stop()
            # Out of the reload, still watched until it exits.
            self.incoming.remove(worker)
            self.workers.append(worker)

    # Stop

    def _stop(self, why: str) -> None:
        if self.phase is Phase.STOPPING:
            return
        self.phase = Phase.STOPPING
        self.respawn_at = None
        everyone = [*self.workers, *self.incoming]
        logger.info("stopping (%s): %d workers finishing their work", why, len(everyone))
        self.workers, self.incoming = everyone, []
        for worker in everyone:
            worker.ask_to_stop()
        grace = self.config.graceful_timeout + self.config.shutdown_timeout + STOP_MARGIN_SECONDS
        self.stop_deadline = time.monotonic() + grace

    def _stop_now(self, why: str) -> None:
        logger.warning("%s again: stopping at once", why)
        self.clean_stop = False
        self._kill_all()

    def _kill_all(self) -> None:
        everyone = [*self.workers, *self.incoming]
        for worker in everyone:
            if worker.process.poll() is None:
                worker.process.kill()
        for worker in everyone:
            worker.process.wait()
            self._forget(worker)
        served = [worker.worker_id for worker in everyone if worker.ready]
        if served:
            interrupt_jobs_of(self.store, served)

    def abort(self, reason: str) -> None:
        """Stop every worker after a failed startup: killed if not serving yet, else asked."""
        for worker in self.workers:
            if worker.ready:
                worker.ask_to_stop()
            elif worker.process.poll() is None:
                # It has no request nor job yet, and may be stuck starting.
                worker.process.kill()
        deadline = time.monotonic() + ABORT_SECONDS
        for worker in list(self.workers):
            try:
                worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("worker %d did not stop: killed (%s)", worker.pid, reason)
        self._kill_all()

    # The loop

    def _loop(self) -> int:
        while True:
            if self.phase is Phase.STOPPING and not self.workers:
                return 0 if self.clean_stop else 1
            if self.phase is Phase.STOPPING and self.stop_signals > 1:
                return EXIT_IMMEDIATE
            events = self._selector.select(self._timeout())
            try:
                for key, _ in events:
                    self._dispatch(key.data)
                self._timers()
            except StartupFailed as failed:
                self.abort(str(failed))
                raise

    def _dispatch(self, what: Any) -> None:
        if what == "signals":
            self._signals()
            return
        kind, worker = what
        if worker not in self.workers and worker not in self.incoming:
            return  # forgotten earlier in this round
        if kind == "exit":
            self._exited(worker)
        elif kind == "control":
            self._message(worker)

    def _timeout(self) -> float | None:
        deadlines = [d for d in (self.respawn_at, self.stop_deadline) if d is not None]
        startup = self.config.startup_timeout
        deadlines += [w.started + startup for w in (*self.workers, *self.incoming) if not w.ready]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic()) + 0.01

    def _timers(self) -> None:
        now = time.monotonic()
        if self.phase is Phase.STOPPING:
            if self.stop_deadline is not None and now >= self.stop_deadline and self.workers:
                logger.error("workers still running after the graceful stop: killed")
                self.clean_stop = False
                self._kill_all()
            return
        if self.respawn_at is not None and now >= self.respawn_at:
            self._respawn()
        startup = self.config.startup_timeout
        for worker in [*self.workers, *self.incoming]:
            if worker.ready or worker.stopping or now < worker.started + startup:
                continue
            reason = f"worker {worker.pid} did not start within {startup:g} s"
            worker.failure = f"not ready within {startup:g} s"
            worker.process.kill()
            if self.phase is Phase.STARTING:
                raise StartupFailed(reason)
            # Its exit (seen through its pidfd) counts it as failed.


def backoff_seconds(failures_in_a_row: int) -> float:
    """How long to wait before replacing a worker, after this many failed startups in a row."""
    if failures_in_a_row <= 0:
        return 0.0
    return float(min(BACKOFF_SECONDS * 2 ** (failures_in_a_row - 1), MAX_BACKOFF_SECONDS))


def _noted(_signum: int, _frame: FrameType | None) -> None:
    # The signal's number reaches the loop through the wakeup fd.
    return
