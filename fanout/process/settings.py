"""Process settings: defaults, then ``FANOUT_*`` environment variables, then a mapping."""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from flask import Flask

ENV_PREFIX = "FANOUT"

#: Every setting with its default; the default's type is the setting's type.
DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        # Path of the gateway file (FANOUT_CONFIG).
        "CONFIG": "gateway.toml",
        # Request bodies larger than this get 413 (Flask's own setting name).
        "MAX_CONTENT_LENGTH": 1_048_576,
        # A declared Content-Length over MAX_CONTENT_LENGTH gets 413 before
        # the view runs, on every route (true), or only once something reads
        # the body, as plain Flask does (false).
        "REFUSE_OVERSIZED_BODY_EARLY": True,
        # Threads for plain def views in each worker process.
        "SYNC_THREADS": 64,
        # The shared aiohttp connector: connections in all and per host.
        "CONNECTOR_LIMIT": 1024,
        "CONNECTOR_LIMIT_PER_HOST": 256,
        "DNS_CACHE_SECONDS": 10,
        "KEEPALIVE_SECONDS": 30.0,
        # Where the bundled demo upstream listens: the shipped gateway.toml's
        # demo upstream reads FANOUT_DEMO_UPSTREAM_URL, and `fanout
        # --demo-port` sets it to the demo it starts.
        "DEMO_UPSTREAM_URL": "http://127.0.0.1:8081",
        # Level of the app's logs (DEBUG, INFO, WARNING, ERROR).
        "LOG_LEVEL": "INFO",
        # The job store URL; empty: the gateway file's [jobs] store.
        "JOB_STORE": "",
        # Seconds running jobs get to finish at shutdown before being interrupted.
        "JOB_GRACE_SECONDS": 10.0,
        # A worker's claim on its jobs, and how often it is renewed (and
        # remote cancels looked for); a crashed worker's jobs are marked
        # interrupted about JOB_LEASE_SECONDS after it died.
        "JOB_LEASE_SECONDS": 10.0,
        "JOB_POLL_SECONDS": 0.5,
        "JOB_SWEEP_SECONDS": 60.0,
        # This worker's name on its jobs (their leases); empty: a random one.
        # The `fanout` supervisor sets it for each worker it starts, so it
        # can mark a dead worker's jobs interrupted at once.
        "WORKER_ID": "",
        # The served process's garbage collector: allocations between young
        # passes (Python's default is 700), with what startup built frozen
        # out of every pass; 0 leaves the collector as Python sets it.
        "GC_THRESHOLD": 50_000,
        # [auth.jwt] jwks_url: a token signed by a key the cached set lacks
        # refetches the set, at most once per this many seconds; the set is
        # also refetched when older than JWKS_MAX_AGE_SECONDS.
        "JWKS_REFETCH_SECONDS": 60.0,
        "JWKS_MAX_AGE_SECONDS": 3600.0,
    }
)


#: Settings whose least valid value is above 0 (the rest must be >= 0).
MINIMUMS: Mapping[str, int] = MappingProxyType(
    {
        # A pool of no threads cannot run a plain def view.
        "SYNC_THREADS": 1,
    }
)


class SettingsError(ValueError):
    """A setting is unknown or has a value of the wrong type."""


def config_path(overrides: Mapping[str, Any] | None = None) -> str:
    """The gateway file's path: from ``overrides``, else FANOUT_CONFIG, else the default."""
    path = (overrides or {}).get("CONFIG") or os.environ.get(f"{ENV_PREFIX}_CONFIG")
    return str(path or DEFAULTS["CONFIG"])


def load_settings(
    app: Flask,
    overrides: Mapping[str, Any] | None = None,
    file_values: Mapping[str, Any] | None = None,
) -> None:
    """Fill ``app.config``: defaults, then the gateway file's, the environment, ``overrides``."""
    app.config.update(DEFAULTS)
    app.config.update(file_values or {})
    unknown_env = sorted(
        name
        for name in os.environ
        if name.startswith(f"{ENV_PREFIX}_") and name[len(ENV_PREFIX) + 1 :] not in DEFAULTS
    )
    if unknown_env:
        raise SettingsError(f"unknown setting(s) in the environment: {', '.join(unknown_env)}")
    # Values are parsed as JSON when they parse (8 -> int), else kept as strings.
    app.config.from_prefixed_env(ENV_PREFIX)
    if overrides:
        app.config.update(overrides)
    for key, default in DEFAULTS.items():
        _check_type(key, app.config[key], default)


def _check_type(key: str, value: Any, default: Any) -> None:
    expected: tuple[type, ...] = (int, float) if isinstance(default, float) else (type(default),)
    # bool is an int to isinstance: only a bool setting takes true/false.
    if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, expected):
        raise SettingsError(
            f"setting {key} (env {ENV_PREFIX}_{key}) must be {expected[0].__name__}, got {value!r}"
        )
    minimum = MINIMUMS.get(key, 0)
    if isinstance(value, int | float) and value < minimum:
        raise SettingsError(
            f"setting {key} (env {ENV_PREFIX}_{key}) must be >= {minimum}, got {value!r}"
        )
