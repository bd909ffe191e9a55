"""Register what the gateway file's ``[app]`` table names on the app, refusing clashes.

The import itself is ``fanout.process.app_code``'s; a clash (a blueprint
name or job kind name already taken, a route another route answers) is a
``ConfigError`` naming the entry, like a failed import.
"""

from __future__ import annotations

import re

from flask import Flask
from werkzeug.routing import Rule

from fanout.core.config import ConfigError, route_shape
from fanout.process.app_code import AppCode
from handlers.aggregate import ENDPOINT_PREFIX
from handlers.resources import job_kinds, register_job_kind

#: A job kind's name: the last segment of POST /jobs/<name>, as is.
_KIND_NAME = re.compile(r"[A-Za-z0-9_-]+")
#: The HTTP methods Werkzeug and Flask add to rules by themselves.
_AUTOMATIC_METHODS = frozenset({"HEAD", "OPTIONS"})


def register_app_code(app: Flask, code: AppCode, source: str) -> None:
    """Register the imported blueprints and job kinds on ``app``; a clash is a ConfigError."""
    for path, blueprint in code.blueprints:
        try:
            app.register_blueprint(blueprint)
        except ValueError as exc:  # Flask: another blueprint already has this name
            raise ConfigError(source, path, f"cannot register the blueprint: {exc}") from None
    for path, kind in code.job_kinds:
        if not _KIND_NAME.fullmatch(kind.name):
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
    index = rule.endpoint.removeprefix(ENDPOINT_PREFIX)
    return f"endpoints[{index}]" if index != rule.endpoint else rule.endpoint
