"""Import the code the gateway file's ``[app]`` table names: blueprints and job kinds.

The config parser checks only the form of ``module:attribute``: importing runs
the user's code, so it is done when the app is built (and may be done before,
by a process that wants to report a bad entry early). Every failure (no such
module, no such attribute, the wrong type, the import raising) is a
``ConfigError`` naming the entry, e.g. ``gateway.toml: app.blueprints[0]:
cannot import 'shop.views:bp' (No module named 'shop')``, so a bad entry stops
startup like any other config error.

User modules are found on ``sys.path``; the gateway file's directory is put
first on it (when it is not there already), so that a project's own modules
beside its gateway file import, wherever the server is started from.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from flask import Blueprint

from fanout.core.config import AppConfig, ConfigError, split_import_string
from fanout.jobs.kinds import JobKind

_T = TypeVar("_T")


@dataclass(frozen=True)
class AppCode:
    """What the ``[app]`` table named, imported: each object with its key path."""

    blueprints: tuple[tuple[str, Blueprint], ...] = ()
    job_kinds: tuple[tuple[str, JobKind], ...] = ()


def project_directory(source: str | os.PathLike[str]) -> str:
    """The directory of the gateway file: where a project's own modules are looked for."""
    return str(Path(source).resolve().parent)


def import_app_code(config: AppConfig, source: str) -> AppCode:
    """Import what ``[app]`` names (the gateway file ``source``'s directory first on sys.path)."""
    if not (config.blueprints or config.job_kinds):
        return AppCode()
    directory = project_directory(source)
    # Process-wide, as the script's directory is for `python script.py`; added once.
    if directory not in sys.path:
        sys.path.insert(0, directory)
    # A module written since the last import (a test's, or an edit) must be seen.
    importlib.invalidate_caches()
    blueprints = tuple(
        (path, _resolve(entry, source, path, Blueprint, "a flask.Blueprint"))
        for path, entry in _entries(config.blueprints, "app.blueprints")
    )
    kinds = tuple(
        (path, _resolve(entry, source, path, JobKind, "a fanout.jobs.JobKind"))
        for path, entry in _entries(config.job_kinds, "app.job_kinds")
    )
    return AppCode(blueprints=blueprints, job_kinds=kinds)


def _entries(entries: tuple[str, ...], key: str) -> list[tuple[str, str]]:
    return [(f"{key}[{index}]", entry) for index, entry in enumerate(entries)]


def _resolve(entry: str, source: str, path: str, expected: type[_T], what: str) -> _T:
    parts = split_import_string(entry)
    if parts is None:  # the parser refused it already; kept for direct callers
        raise ConfigError(source, path, f"expected 'module:attribute', got {entry!r}")
    module_name, attribute = parts
    try:
        found: object = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - the user's module may raise anything; reported
        raise ConfigError(source, path, f"cannot import {entry!r} ({_why(exc)})") from None
    owner = f"module {module_name!r}"
    for name in attribute.split("."):
        if not hasattr(found, name):
            raise ConfigError(
                source, path, f"cannot import {entry!r} ({owner} has no attribute {name!r})"
            )
        found = getattr(found, name)
        owner = _kind_of(found)
    if not isinstance(found, expected):
        raise ConfigError(source, path, f"{entry!r} is {_kind_of(found)}; expected {what}")
    return found


def _why(exc: Exception) -> str:
    """One line: the error, and where in the user's code it was raised."""
    # Startup prints one line: a message spanning several is joined.
    message = " ".join(str(exc).split())
    if isinstance(exc, ModuleNotFoundError):
        return message
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {message}"
    frames = traceback.extract_tb(exc.__traceback__)
    # The last frame is where it was raised; importlib's own frames come first.
    where = f", at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}: {message}{where}"


def _kind_of(value: object) -> str:
    """``a function``, ``an int``, ``a flask.app.Flask``: what the attribute is."""
    cls = type(value)
    name = cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__name__}"
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"
