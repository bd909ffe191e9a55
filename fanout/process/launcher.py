"""fanout: start the bundled demo upstream, then serve the gateway with Hypercorn."""

from __future__ import annotations

import argparse
import copy
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import NoReturn

from flask import Flask
from hypercorn.config import Config
from hypercorn.run import run
from hypercorn.utils import LifespanFailureError, NoAppError

from fanout.bridge.h2c import ALLOW_H2C_UPGRADE
from fanout.core.config import ConfigError, load_gateway_config
from fanout.process.app_code import import_app_code
from fanout.process.settings import DEFAULTS, ENV_PREFIX, SettingsError, load_settings

logger = logging.getLogger(__name__)

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: The files prometheus_client writes in a multiprocess directory.
METRIC_FILES = ("counter_*.db", "gauge_*.db", "histogram_*.db", "summary_*.db")

GATEWAY_FILE = "gateway.toml"
HYPERCORN_FILE = "hypercorn.toml"
CONFIG_ENV = f"{ENV_PREFIX}_CONFIG"
#: The setting the shipped gateway.toml's demo upstream reads its address from.
DEMO_URL_ENV = f"{ENV_PREFIX}_DEMO_UPSTREAM_URL"
DEMO_HOST = "127.0.0.1"
#: Hypercorn's worker classes (hypercorn.run.run refuses any other).
WORKER_CLASSES = ("asyncio", "uvloop", "trio")
#: Seconds the demo upstream gets to listen.
DEMO_START_SECONDS = 10.0


class StartError(Exception):
    """``fanout`` cannot start; the message is the one line it prints."""


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (the usage is in --help)."""

    def error(self, message: str) -> NoReturn:
        """Print the problem on one line and exit 2."""
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def find_upwards(name: str, start: Path) -> Path | None:
    """The file ``name`` in ``start`` or the nearest of its parents holding one, or None."""
    for directory in (start, *start.parents):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def _named(path: str, label: str) -> Path:
    """A file the user named (``label``: the flag or variable naming it): it must exist."""
    given = Path(path)
    if not given.is_file():
        problem = "is a directory" if given.is_dir() else "no such file"
        raise StartError(f"{label}: {problem}")
    return given


def gateway_file(given: str | None, env: Mapping[str, str], cwd: Path) -> Path:
    """The gateway file: --gateway, else FANOUT_CONFIG, else the nearest gateway.toml upwards."""
    if given is not None:
        return _named(given, f"--gateway {given}")
    named = env.get(CONFIG_ENV)
    if named:
        return _named(named, f"{CONFIG_ENV}={named}")
    found = find_upwards(GATEWAY_FILE, cwd)
    if found is None:
        raise StartError(
            f"no {GATEWAY_FILE} in {cwd} or its parents: "
            f"name the gateway file with --gateway FILE or {CONFIG_ENV}=FILE"
        )
    return found


def hypercorn_file(given: str | None, gateway: Path, cwd: Path) -> Path:
    """Hypercorn's file: --hypercorn, else hypercorn.toml beside the gateway file, else upwards."""
    if given is not None:
        return _named(given, f"--hypercorn {given}")
    beside = gateway.parent / HYPERCORN_FILE
    if beside.is_file():
        return beside
    found = find_upwards(HYPERCORN_FILE, cwd)
    if found is None:
        raise StartError(
            f"no {HYPERCORN_FILE} beside {gateway} nor in {cwd} or its parents: "
            "name Hypercorn's settings file with --hypercorn FILE"
        )
    return found


def _shown(path: Path, cwd: Path) -> str:
    """A path in messages: as the user named it; found in the current directory: its name."""
    return path.name if path.is_absolute() and path.parent == cwd else str(path)


_KIND_NAMES = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "a table",
}


def _same_kind(default: object) -> tuple[type, ...]:
    """The TOML value types a Hypercorn setting with this default accepts."""
    if default is None:
        # No default to compare with (certfile, logconfig_dict...): Hypercorn checks.
        return (object,)
    if isinstance(default, bool):
        return (bool,)
    if isinstance(default, float):
        return (int, float)
    if isinstance(default, list):
        # bind and the like take one address as a string too.
        return (list, str)
    return (type(default),)


def hypercorn_config(path: Path, shown: str) -> Config:
    """Read Hypercorn's file, refusing what Hypercorn itself would silently ignore."""
    try:
        with path.open("rb") as file:
            values = tomllib.load(file)
    except tomllib.TOMLDecodeError as exc:
        raise StartError(f"{shown}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise StartError(f"{shown}: cannot read the file: {exc.strerror or exc}") from None
    defaults = Config()
    for key, value in values.items():
        # Config.from_mapping sets any name, so a typo would go unnoticed.
        if key == ALLOW_H2C_UPGRADE:
            default: object = False
        elif hasattr(defaults, key):
            default = getattr(defaults, key)
        else:
            raise StartError(f"{shown}: {key}: not a Hypercorn setting")
        # Hypercorn takes values as they are: a wrong type fails later, in a worker.
        expected = _same_kind(default)
        if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
            names = " or ".join(_KIND_NAMES.get(kind, kind.__name__) for kind in expected)
            raise StartError(f"{shown}: {key}: expected {names}, got {value!r}")
    try:
        config = Config.from_mapping(values)
    except (TypeError, ValueError) as exc:
        raise StartError(f"{shown}: {exc}") from None
    if config.worker_class not in WORKER_CLASSES:
        raise StartError(
            f"{shown}: worker_class: expected one of {', '.join(WORKER_CLASSES)}, "
            f"got {config.worker_class!r}"
        )
    return config


def check_gateway(shown: str) -> None:
    """Validate the gateway file and the FANOUT_* settings as the app will read them."""
    try:
        gateway = load_gateway_config(shown, os.environ)
        # The [app] entries too: a bad one is then this one line, not a
        # worker's startup traceback (the workers import them again).
        import_app_code(gateway.app, shown)
        # Only the environment's settings: the file's were just checked.
        load_settings(Flask(__name__))
    except (ConfigError, SettingsError) as exc:
        raise StartError(str(exc)) from None


def check_binds(config: Config, shown: str) -> None:
    """Refuse to start when an address to serve on is taken (one line, not a traceback)."""
    for bind in [*config.bind, *config.insecure_bind]:
        if bind.startswith(("unix:", "fd://")):
            continue
        probe = copy.copy(config)
        probe.bind, probe.insecure_bind, probe.quic_bind = [bind], [], []
        try:
            sockets = probe.create_sockets()
        except OSError as exc:
            raise StartError(
                f"cannot serve on {bind}: {exc.strerror or exc} "
                f"(choose another with --bind HOST:PORT or bind in {shown})"
            ) from None
        for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
            sock.close()


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


def _wait_for_demo(demo: subprocess.Popen[bytes], port: int) -> None:
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


@contextmanager
def _stop_signals() -> Iterator[Callable[[], bool]]:
    """Tell afterwards whether SIGINT or SIGTERM arrived, whoever handled it.

    The wakeup fd receives the number of every signal that has a Python
    handler, Hypercorn's supervisor's included.
    """
    read, write = os.pipe()
    os.set_blocking(read, False)
    os.set_blocking(write, False)
    previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)

    def arrived() -> bool:
        received = bytearray()
        while True:
            try:
                chunk = os.read(read, 4096)
            except BlockingIOError:
                break
            if not chunk:
                break
            received += chunk
        return signal.SIGINT in received or signal.SIGTERM in received

    try:
        yield arrived
    finally:
        signal.set_wakeup_fd(previous)
        os.close(read)
        os.close(write)


def serve(config: Config) -> int:
    """Run Hypercorn until told to stop; StartError if the server could not start."""
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
    # Hypercorn 0.18's supervisor returns when told to stop or when a worker
    # exited non-zero, but returns 0 either way (pgjones/hypercorn#269).
    with _stop_signals() as stop_arrived:
        code = run(config)
        if code == 0 and not stop_arrived():
            raise StartError("a worker process stopped with an error (see above)")
    return code


def _stop(signum: int, _frame: FrameType | None) -> None:
    # Until Hypercorn installs its own handlers: SIGTERM unwinds like Ctrl-C,
    # so the demo upstream is stopped and the metrics directory removed.
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
        help="worker processes (default: workers in Hypercorn's file; 0: this process)",
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


def _prepare(args: argparse.Namespace) -> Config:
    """Find and check everything before anything starts; StartError names what is wrong."""
    cwd = Path.cwd()
    gateway = gateway_file(args.gateway, os.environ, cwd)
    hypercorn = hypercorn_file(args.hypercorn, gateway, cwd)
    config = hypercorn_config(hypercorn, _shown(hypercorn, cwd))
    if args.bind:
        config.bind = args.bind
    if args.workers is not None:
        config.workers = args.workers
    # The workers (this process, or spawned ones) read these from the environment.
    os.environ[CONFIG_ENV] = str(gateway.absolute())
    if not args.no_demo:
        os.environ[DEMO_URL_ENV] = f"http://{DEMO_HOST}:{args.demo_port}"
    check_gateway(_shown(gateway, cwd))
    # Served as `hypercorn app:app` started in the gateway file's directory
    # would be: its app.py if there is one, else the installed app; modules
    # beside the gateway file are importable ([app] blueprints and job kinds).
    config.application_path = f"{gateway.absolute().parent / 'app'}:app"
    check_binds(config, _shown(hypercorn, cwd))
    if not args.no_demo:
        check_demo_port(args.demo_port)
    return config


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo upstream (unless --no-demo) and the gateway until interrupted."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.config is not None:
        parser.error(
            "--config is not an option: name the gateway file with --gateway FILE, "
            "Hypercorn's settings with --hypercorn FILE"
        )
    # Only the launcher's own logger, not propagated: Hypercorn configures the
    # root logger in this process too, and would print each line twice.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("fanout: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False

    demo: subprocess.Popen[bytes] | None = None
    signal.signal(signal.SIGTERM, _stop)
    try:
        config = _prepare(args)
        if not args.no_demo:
            demo = subprocess.Popen(
                [sys.executable, "-m", "fanout.demo", "--port", str(args.demo_port)]
            )
            _wait_for_demo(demo, args.demo_port)
            logger.info(
                "demo upstream (pid %d) on http://%s:%d", demo.pid, DEMO_HOST, args.demo_port
            )
        with metrics_directory(config.workers):
            return serve(config)
    except StartError as exc:
        logger.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if demo is not None:
            demo.terminate()
            demo.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
