"""The gateway file's ``[app]`` table: import the blueprints and job kinds it names, register them.

The config parser checks only the form of ``module:attribute``: importing runs
the user's code, so it is done here, when the app is built. Every failure
(no such module, no such attribute, the wrong type, the import raising, a
name already taken) is a ``ConfigError`` naming the entry, e.g.
``gateway.toml: app.blueprints[0]: cannot import 'shop.views:bp' (No module
named 'shop')``, so a bad entry stops startup like any other config error.

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

from flask import Blueprint, Flask
from werkzeug.routing import Rule

from fanout.core.config import AppConfig, ConfigError, route_shape, split_import_string
from fanout.jobs.kinds import JobKind
from handlers.resources import job_kinds, register_job_kind

_T = TypeVar("_T")

#: How handlers/aggregate.py names the view of ``endpoints[i]``.
_ENDPOINT_PREFIX = "gateway_endpoint_"
#: The HTTP methods Werkzeug and Flask add to rules by themselves.
_AUTOMATIC_METHODS = frozenset({"HEAD", "OPTIONS"})


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


def register_app_code(app: Flask, code: AppCode, source: str) -> None:
    """Register the imported blueprints and job kinds on ``app``; a clash is a ConfigError."""
    for path, blueprint in code.blueprints:
        try:
            app.register_blueprint(blueprint)
        except ValueError as exc:  # Flask: another blueprint already has this name
            raise ConfigError(source, path, f"cannot register the blueprint: {exc}") from None
    for path, kind in code.job_kinds:
        if not kind.name or not all(ch.isalnum() or ch in "_-" for ch in kind.name):
            raise ConfigError(
                source,
                path,
                f"invalid job kind name {kind.name!r}; expected letters, digits, '_' or '-' "
                "(it is the last segment of POST /jobs/<name>)",
            )
        if kind.name in job_kinds(app):
            raise ConfigError(source, path, f"job kind {kind.name!r} is already registered")
        register_job_kind(app, kind)


def check_route_clashes(app: Flask, code: AppCode, source: str) -> None:
    """Refuse a blueprint route another route already answers (Werkzeug would pick one silently)."""
    owners = {blueprint.name: path for path, blueprint in code.blueprints}
    first: dict[tuple[str, str], Rule] = {}
    for rule in app.url_map.iter_rules():
        for method in sorted(set(rule.methods or ()) - _AUTOMATIC_METHODS):
            other = first.setdefault((method, route_shape(rule.rule)), rule)
            if other.endpoint == rule.endpoint:
                continue
            # Of two clashing rules, name the entry of the one from [app] (two
            # built-in routes cannot clash: the gateway file's are checked).
            for mine, theirs in ((rule, other), (other, rule)):
                path = owners.get(mine.endpoint.partition(".")[0])
                if path is not None:
                    raise ConfigError(
                        source,
                        path,
                        f"{method} {mine.rule} ({mine.endpoint}) clashes with "
                        f"{_route_name(theirs)} ({method} {theirs.rule})",
                    )


def _route_name(rule: Rule) -> str:
    """A rule's view, as the user knows it: an endpoint of the gateway file, or a view."""
    index = rule.endpoint.removeprefix(_ENDPOINT_PREFIX)
    return f"endpoints[{index}]" if index != rule.endpoint else rule.endpoint


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
    if isinstance(exc, ModuleNotFoundError):
        return str(exc)
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc}"
    frames = traceback.extract_tb(exc.__traceback__)
    # The last frame is where it was raised; importlib's own frames come first.
    where = f", at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _kind_of(value: object) -> str:
    """``a function``, ``an int``, ``a flask.app.Flask``: what the attribute is."""
    cls = type(value)
    name = cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__name__}"
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"
