"""The files ``fanout`` reads (the gateway's, Hypercorn's): found and checked before it starts."""

from __future__ import annotations

import copy
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path

from flask import Flask
from hypercorn.config import Config

from fanout.bridge.h2c import ALLOW_H2C_UPGRADE
from fanout.core.config import ConfigError, GatewayConfig, load_gateway_config
from fanout.jobs.store_factory import job_store_url
from fanout.process.app_code import import_app_code
from fanout.process.rescue import JobStoreRef
from fanout.process.settings import ENV_PREFIX, SettingsError, load_settings

GATEWAY_FILE = "gateway.toml"
HYPERCORN_FILE = "hypercorn.toml"
CONFIG_ENV = f"{ENV_PREFIX}_CONFIG"
#: Hypercorn's worker classes (hypercorn.run.run refuses any other).
WORKER_CLASSES = ("asyncio", "uvloop", "trio")


class StartError(Exception):
    """``fanout`` cannot start; the message is the one line it prints."""


def default_workers() -> int:
    """fanout's worker count unless told: one per CPU it may use; 0 where it cannot supervise."""
    # The supervisor waits on its workers through pidfds (Linux 5.3+).
    return available_cpus() if hasattr(os, "pidfd_open") else 0


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity, which containers and taskset narrow)."""
    affinity = getattr(os, "sched_getaffinity", None)
    if affinity is None:
        # Not on Linux (macOS): every CPU of the machine.
        return os.cpu_count() or 1
    return len(affinity(0))


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


def shown_path(path: Path, cwd: Path) -> str:
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
    values.setdefault("workers", default_workers())
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


def check_gateway(shown: str) -> GatewayConfig:
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
    return gateway


def job_store_ref(gateway: GatewayConfig, path: str) -> JobStoreRef:
    """The job store the workers will open (the JOB_STORE setting, else the file's)."""
    setting = os.environ.get(f"{ENV_PREFIX}_JOB_STORE", "")
    url = job_store_url(setting, gateway.jobs.store, path)
    return JobStoreRef(url, gateway.jobs.result_ttl)


def reload_check(env: Mapping[str, str] | None = None) -> JobStoreRef:
    """Read the gateway file (FANOUT_CONFIG) again for a reload; ConfigError if invalid.

    The [app] modules are not imported here (this process imported them
    once, and would not see them change): a new worker failing to start
    with them fails the reload.
    """
    environ = os.environ if env is None else env
    path = environ[CONFIG_ENV]
    gateway = load_gateway_config(path, environ)
    load_settings(Flask(__name__))
    return job_store_ref(gateway, path)


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
