"""One worker of the ``fanout`` supervisor: Hypercorn's ``serve()`` on inherited sockets.

Run as ``python -m fanout.process.workers FD``: FD is this worker's end of
its control socket (fanout/process/control.py). The worker serves the app
named in the settings it receives, on the sockets the supervisor bound, and
stops gracefully when the supervisor says so, when its supervisor is gone,
or on SIGTERM or SIGINT (telling the supervisor, so that the whole server
stops alike); a second SIGTERM or SIGINT ends it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any

from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.asyncio import serve
from hypercorn.config import Config
from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, Scope
from hypercorn.utils import LifespanFailureError, NoAppError, load_application

from fanout.process.control import (
    EXIT_IMMEDIATE,
    EXIT_STARTUP_FAILED,
    FAILED,
    READY,
    STOP,
    WorkerSpec,
)
from fanout.process.stopping import STOPPING_SCOPE_KEY

# Named, not __name__: run as a script, this module is __main__.
logger = logging.getLogger("fanout.process.workers")


class WorkerStop:
    """This worker's stop: one event, set by the supervisor, its absence, or a signal."""

    def __init__(self, control: Connection) -> None:
        self.event = asyncio.Event()
        self._control = control
        self._signals = 0

    def request(self, reason: str) -> None:
        """Begin the graceful stop (once)."""
        if not self.event.is_set():
            logger.info("stopping: %s", reason)
            self.event.set()

    def on_signal(self, signum: int) -> None:
        """First SIGTERM/SIGINT: stop gracefully, and tell the supervisor; second: exit now."""
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals > 1:
            logger.warning("%s again: stopping at once", name)
            logging.shutdown()
            os._exit(EXIT_IMMEDIATE)
        # The supervisor stops the other workers alike (a message, not a
        # signal: the workers count signals only).
        self.send(STOP, name)
        self.request(name)

    def on_control(self) -> None:
        """Read the supervisor's message; its end of the socket closed means it is gone."""
        try:
            message = self._control.recv()
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(self._control.fileno())
            self.request("the supervisor is gone")
            return
        if message[0] == STOP:
            self.request("asked by the supervisor")

    def send(self, *message: str) -> None:
        """Tell the supervisor (if it still listens)."""
        try:
            self._control.send(message)
        except OSError:
            logger.warning("the supervisor is gone; not told: %s", message[0])


class EarlySignals:
    """SIGTERM and SIGINT that arrive while the worker starts, before its loop handles them."""

    def __init__(self) -> None:
        self.received: list[int] = []

    def note(self, signum: int, _frame: FrameType | None) -> None:
        """Keep the signal for the loop (a worker killed while starting would exit unclean)."""
        self.received.append(signum)


class Announced:
    """The app, reporting its lifespan startup to the supervisor and sharing the stop event."""

    def __init__(self, app: ASGIFramework, stop: WorkerStop) -> None:
        self._app = app
        self._stop = stop

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        """Serve one ASGI scope."""
        if scope["type"] == "lifespan":
            await self._app(scope, receive, self._reporting(send))
            return
        if scope["type"] == "http":
            # Read by long streams (fanout/process/stopping.py) to end at once.
            scope[STOPPING_SCOPE_KEY] = self._stop.event  # type: ignore[literal-required]
        await self._app(scope, receive, send)

    def _reporting(self, send: ASGISendCallable) -> ASGISendCallable:
        async def reporting_send(message: Any) -> None:
            if message["type"] == "lifespan.startup.complete":
                self._stop.send(READY)
            elif message["type"] == "lifespan.startup.failed":
                self._stop.send(FAILED, str(message.get("message") or "startup failed"))
            await send(message)

        return reporting_send


def worker_config(spec: WorkerSpec) -> Config:
    """Hypercorn's settings for this worker: serve the inherited sockets (``fd://N``)."""
    config = spec.config
    secure = [f"fd://{fd}" for fd in spec.secure_fds]
    insecure = [f"fd://{fd}" for fd in spec.insecure_fds]
    if config.ssl_enabled:
        config.bind, config.insecure_bind = secure, insecure
    else:
        config.bind, config.insecure_bind = insecure, []
    config.quic_bind = []
    # This process serves; serve() warns about any other value.
    config.workers = 1
    return config


async def _serve(config: Config, control: Connection, early: EarlySignals) -> None:
    loop = asyncio.get_running_loop()
    stop = WorkerStop(control)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.on_signal, signum)
    for arrived in early.received:
        stop.on_signal(arrived)
    loop.add_reader(control.fileno(), stop.on_control)
    loaded = load_application(config.application_path, config.wsgi_max_body_size)
    if not isinstance(loaded, ASGIWrapper):
        raise NoAppError(f"{config.application_path} is not an ASGI app")
    await serve(Announced(loaded.app, stop), config, shutdown_trigger=stop.event.wait, mode="asgi")


def _loop_factory(config: Config) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if config.worker_class == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


def main(argv: list[str]) -> int:
    """Serve until stopped; the exit code tells the supervisor how it ended."""
    early = EarlySignals()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, early.note)
    # SIGHUP is the supervisor's (reload): a terminal hang-up reaches the group.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    control = Connection(int(argv[1]))
    spec: WorkerSpec = control.recv()
    config = worker_config(spec)
    # Hypercorn applies its logconfig_dict on first use: use it now, so that
    # the app's lines at startup are formatted as all later ones are.
    config.log  # noqa: B018 - the property configures logging
    try:
        with asyncio.Runner(loop_factory=_loop_factory(config)) as runner:
            runner.run(_serve(config, control, early))
    except LifespanFailureError as exc:
        # The app logged why, with its traceback, and the supervisor was told.
        logger.error("worker did not start: %s", exc)
        return EXIT_STARTUP_FAILED
    except Exception as exc:
        # The app cannot be imported, or another reason not told yet.
        reason = f"{type(exc).__name__}: {exc}"
        # The supervisor may be gone; the log line below says why anyway.
        with contextlib.suppress(OSError):
            control.send((FAILED, reason))
        logger.exception("worker did not start: %s", reason)
        return EXIT_STARTUP_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
