"""``fanout``: start the bundled demo upstream, then serve the gateway with Hypercorn."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from hypercorn.config import Config
from hypercorn.run import run

logger = logging.getLogger(__name__)

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: The files prometheus_client writes in a multiprocess directory.
METRIC_FILES = ("counter_*.db", "gauge_*.db", "histogram_*.db", "summary_*.db")


def _wait_for_port(host: str, port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextmanager
def metrics_directory(workers: int) -> Iterator[None]:
    """With several workers, a metrics directory holding this run's samples only.

    Each worker writes its metrics there and ``/metrics`` on any of them
    reports all (set before the workers start). A directory given in
    PROMETHEUS_MULTIPROC_DIR is emptied of a previous run's files first;
    otherwise a fresh one is made, and removed when the run ends.
    """
    if workers <= 1:
        yield
        return
    given = os.environ.get(MULTIPROCESS_ENV)
    if given:
        # A previous run's files would be added to this run's (its counters,
        # and gauges of pids that may be reused).
        for pattern in METRIC_FILES:
            for path in Path(given).glob(pattern):
                path.unlink(missing_ok=True)
        yield
        return
    made = tempfile.mkdtemp(prefix="fanout-metrics-")
    os.environ[MULTIPROCESS_ENV] = made
    logger.info("metrics of the %d workers in %s", workers, made)
    try:
        yield
    finally:
        del os.environ[MULTIPROCESS_ENV]
        shutil.rmtree(made, ignore_errors=True)


def _stop(signum: int, _frame: FrameType | None) -> None:
    # Until Hypercorn installs its own handlers: SIGTERM unwinds like Ctrl-C,
    # so the demo upstream is stopped and the metrics directory removed.
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="hypercorn.toml", help="Hypercorn settings file")
    parser.add_argument(
        "--bind", action="append", help="address to serve on, HOST:PORT (default: the config's)"
    )
    parser.add_argument(
        "--workers", type=int, help="worker processes (default: the config's; 0: this process)"
    )
    parser.add_argument("--no-demo", action="store_true", help="do not start the demo upstream")
    parser.add_argument("--demo-port", type=int, default=8081)
    return parser


def main() -> int:
    """Run the demo upstream (unless --no-demo) and the gateway until interrupted."""
    args = _parser().parse_args()
    # Only the launcher's own logger: Hypercorn configures its own handlers,
    # and a root handler would print each of its lines twice.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    config = Config.from_toml(args.config)
    config.application_path = "app:app"
    if args.bind:
        config.bind = args.bind
    if args.workers is not None:
        config.workers = args.workers
    demo: subprocess.Popen[bytes] | None = None
    signal.signal(signal.SIGTERM, _stop)
    try:
        if not args.no_demo:
            demo = subprocess.Popen(
                [sys.executable, "-m", "fanout.demo", "--port", str(args.demo_port)]
            )
            _wait_for_port("127.0.0.1", args.demo_port, seconds=10)
            logger.info("demo upstream (pid %d) on http://127.0.0.1:%d", demo.pid, args.demo_port)
        with metrics_directory(config.workers):
            return run(config)
    except KeyboardInterrupt:
        return 0
    finally:
        if demo is not None:
            demo.terminate()
            demo.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
