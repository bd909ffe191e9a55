"""The bundled demo upstream, started by ``fanout`` as a child process."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from fanout.process.config_files import StartError

DEMO_HOST = "127.0.0.1"
#: Seconds the demo upstream gets to listen.
DEMO_START_SECONDS = 10.0


def check_demo_port(port: int) -> None:
    """Refuse to start the demo upstream on a port something already listens on."""
    with socket.socket() as probe:
        # As aiohttp binds: a port in TIME_WAIT is free, a listened one is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((DEMO_HOST, port))
        except OSError as exc:
            raise StartError(
                f"cannot start the demo upstream on {DEMO_HOST}:{port}: {exc.strerror or exc} "
                "(choose another with --demo-port PORT, or run without it with --no-demo)"
            ) from None


def wait_for_demo(demo: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + DEMO_START_SECONDS
    while True:
        if demo.poll() is not None:
            raise StartError(
                f"the demo upstream stopped at startup (exit code {demo.returncode}; "
                "its error is above)"
            )
        try:
            with socket.create_connection((DEMO_HOST, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise StartError(
                    f"the demo upstream did not listen on {DEMO_HOST}:{port} "
                    f"within {DEMO_START_SECONDS:g} s"
                ) from None
            time.sleep(0.05)


def start_demo(port: int) -> subprocess.Popen[bytes]:
    """Start the demo upstream on ``port``; return it once it listens (StartError if not)."""
    demo = subprocess.Popen([sys.executable, "-m", "fanout.demo", "--port", str(port)])
    try:
        wait_for_demo(demo, port)
    except StartError:
        demo.kill()
        demo.wait()
        raise
    return demo
