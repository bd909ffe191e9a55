"""fanout: start the bundled demo upstream, then serve the gateway with Hypercorn."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import NoReturn

from hypercorn.config import Config
from hypercorn.run import run
from hypercorn.utils import LifespanFailureError, NoAppError

from fanout.process.config_files import (
    CONFIG_ENV,
    GATEWAY_FILE,
    HYPERCORN_FILE,
    StartError,
    check_binds,
    check_gateway,
    gateway_file,
    hypercorn_config,
    hypercorn_file,
    job_store_ref,
    reload_check,
    shown_path,
)
from fanout.process.demo_process import DEMO_HOST, check_demo_port, start_demo
from fanout.process.logs import JsonFormatter
from fanout.process.rescue import JobStoreRef
from fanout.process.settings import DEFAULTS, ENV_PREFIX
from fanout.process.supervisor import StartupFailed, Supervisor

logger = logging.getLogger(__name__)
#: The parent of the launcher's, the supervisor's and the job rescue's loggers.
PROCESS_LOGGER = "fanout.process"
#: The one line a failure to start prints (plain text, for a person or a process manager).
failure_logger = logging.getLogger("fanout.start")

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: The files prometheus_client writes in a multiprocess directory.
METRIC_FILES = ("counter_*.db", "gauge_*.db", "histogram_*.db", "summary_*.db")

#: The setting the shipped gateway.toml's demo upstream reads its address from.
DEMO_URL_ENV = f"{ENV_PREFIX}_DEMO_UPSTREAM_URL"
#: Worker classes the supervisor runs (Hypercorn's trio worker: with --workers 0 only).
SUPERVISED_CLASSES = ("asyncio", "uvloop")


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (the usage is in --help)."""

    def error(self, message: str) -> NoReturn:
        """Print the problem on one line and exit 2."""
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


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


def serve(config: Config, store: JobStoreRef) -> int:
    """Serve until told to stop: in this process (workers = 0) or with the supervisor."""
    if config.workers == 0:
        try:
            return run(config)
        except LifespanFailureError as exc:
            # The app logged why (with its traceback) before Hypercorn raised.
            raise StartError(f"the gateway did not start: {exc}") from None
        except NoAppError as exc:
            raise StartError(str(exc)) from None
        except OSError as exc:
            raise StartError(f"cannot serve: {exc}") from None
    supervisor = Supervisor(config, config.workers, store, reload_check)
    try:
        return supervisor.run()
    except StartupFailed as exc:
        raise StartError(str(exc)) from None


def _stop(signum: int, _frame: FrameType | None) -> None:
    # Until Hypercorn or the supervisor installs its own handlers: SIGTERM
    # unwinds like Ctrl-C, so the demo upstream is stopped and the metrics
    # directory removed.
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got {text}")
    return value


def _environment_help() -> str:
    settings = ", ".join(f"{ENV_PREFIX}_{name}" for name in DEFAULTS if name != "CONFIG")
    wrapped = textwrap.fill(settings, width=72, initial_indent="    ", subsequent_indent="    ")
    return f"""\
files:
  gateway file      --gateway FILE, else {CONFIG_ENV}, else {GATEWAY_FILE} in the
                    current directory or the nearest parent holding one
  Hypercorn's file  --hypercorn FILE, else {HYPERCORN_FILE} beside the gateway
                    file, else in the current directory or the nearest parent
  A relative sqlite:/// job store in the gateway file is taken from the gateway
  file's directory; the app is the project's app.py when the gateway file's
  directory holds one, else the installed one.

environment variables:
  {CONFIG_ENV}     the gateway file (when --gateway is not given)
  {DEMO_URL_ENV}
                    where the demo upstream is; the shipped {GATEWAY_FILE} reads it,
                    and fanout sets it to the demo it starts (--demo-port)
  {MULTIPROCESS_ENV}
                    with several workers: the directory their metrics are
                    kept in (emptied at start); default: a temporary one
  {ENV_PREFIX}_<SETTING>  the settings (README, "Settings"); an unknown one
                    stops startup:
{wrapped}

signals (with workers; to the supervisor, a worker or the whole group):
  SIGTERM, SIGINT   stop gracefully: in-flight requests are answered, job
                    streams end with event: shutdown, jobs get their grace;
                    exit 0. A second one stops at once (exit 4).
  SIGHUP            read the gateway file again: new workers start with it,
                    the old ones stop gracefully; an invalid file is logged
                    and the old workers keep serving.

Any failure to start prints one line and exits non-zero."""


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fanout",
        description=(
            "Serve the Fanout gateway with Hypercorn, after starting the bundled demo\n"
            f"upstream on {DEMO_HOST}:8081 (unless --no-demo)."
        ),
        epilog=_environment_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--gateway", metavar="FILE", help="the gateway file (default: see below)")
    parser.add_argument(
        "--hypercorn", metavar="FILE", help="Hypercorn's settings file (default: see below)"
    )
    # A natural guess, but for which of the two files? Refused by name.
    parser.add_argument("--config", nargs="?", const="", help=argparse.SUPPRESS)
    parser.add_argument(
        "--bind",
        action="append",
        metavar="HOST:PORT",
        help="address to serve on, repeatable (default: bind in Hypercorn's file)",
    )
    parser.add_argument(
        "--workers",
        type=_non_negative,
        metavar="N",
        help=(
            "worker processes (default: workers in Hypercorn's file, else one per CPU "
            "this process may use; 0: serve in this process, without the supervisor)"
        ),
    )
    parser.add_argument("--no-demo", action="store_true", help="do not start the demo upstream")
    parser.add_argument(
        "--demo-port",
        type=_port,
        default=8081,
        metavar="PORT",
        help=f"the demo upstream's port on {DEMO_HOST} (default: 8081)",
    )
    return parser


def _prepare(args: argparse.Namespace) -> tuple[Config, JobStoreRef]:
    """Find and check everything before anything starts; StartError names what is wrong."""
    cwd = Path.cwd()
    gateway = gateway_file(args.gateway, os.environ, cwd)
    hypercorn = hypercorn_file(args.hypercorn, gateway, cwd)
    config = hypercorn_config(hypercorn, shown_path(hypercorn, cwd))
    if args.bind:
        config.bind = args.bind
    if args.workers is not None:
        config.workers = args.workers
    if config.workers > 0 and config.worker_class not in SUPERVISED_CLASSES:
        raise StartError(
            f"worker_class {config.worker_class!r} runs with --workers 0 only "
            f"(the supervisor's workers are {' or '.join(SUPERVISED_CLASSES)})"
        )
    if config.workers > 0 and not hasattr(os, "pidfd_open"):
        raise StartError("the supervisor needs Linux (pidfd_open): serve with --workers 0")
    if config.workers > 0 and config.quic_bind:
        raise StartError("quic_bind is served with --workers 0 only")
    # The workers (this process, or spawned ones) read these from the environment.
    os.environ[CONFIG_ENV] = str(gateway.absolute())
    if not args.no_demo:
        os.environ[DEMO_URL_ENV] = f"http://{DEMO_HOST}:{args.demo_port}"
    # Checked before any worker starts: a bad file is one line, not N tracebacks.
    checked = check_gateway(shown_path(gateway, cwd))
    # Served as `hypercorn app:app` started in the gateway file's directory
    # would be: its app.py if there is one, else the installed app; modules
    # beside the gateway file are importable ([app] blueprints and job kinds).
    config.application_path = f"{gateway.absolute().parent / 'app'}:app"
    check_binds(config, shown_path(hypercorn, cwd))
    if not args.no_demo:
        check_demo_port(args.demo_port)
    return config, job_store_ref(checked, str(gateway.absolute()))


def _log_to_stderr() -> None:
    # Own handlers, not propagated: with --workers 0 Hypercorn configures the
    # root logger in this process too, and would print each line twice.
    lines = logging.StreamHandler()
    lines.setFormatter(JsonFormatter())
    process = logging.getLogger(PROCESS_LOGGER)
    process.addHandler(lines)
    process.setLevel(logging.INFO)
    process.propagate = False
    plain = logging.StreamHandler()
    plain.setFormatter(logging.Formatter("fanout: %(message)s"))
    failure_logger.addHandler(plain)
    failure_logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo upstream (unless --no-demo) and the gateway until interrupted."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.config is not None:
        parser.error(
            "--config is not an option: name the gateway file with --gateway FILE, "
            "Hypercorn's settings with --hypercorn FILE"
        )
    _log_to_stderr()

    demo: subprocess.Popen[bytes] | None = None
    signal.signal(signal.SIGTERM, _stop)
    try:
        config, store = _prepare(args)
        if not args.no_demo:
            demo = start_demo(args.demo_port)
            logger.info(
                "demo upstream (pid %d) on http://%s:%d", demo.pid, DEMO_HOST, args.demo_port
            )
        with metrics_directory(config.workers):
            return serve(config, store)
    except StartError as exc:
        failure_logger.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if demo is not None:
            demo.terminate()
            demo.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
