"""The pytest plugin the Flask suite runs under (``-p tests.flask_suite.plugin``).

``--flask-suite-mode``:

- ``plain``: Flask as installed (the control run);
- ``class``: ``flask.Flask`` is ``fanout.bridge.BridgeFlask``, set before
  Flask's conftest and test modules import it;
- ``served``: that, and every test-client request is served through
  ``ASGIBridge`` on an event loop in a background thread (``served.py``).

Every mode records each test's outcome to ``--flask-suite-outcomes`` (JSON)
for the runner, and applies two shims for this environment, neither about
the bridge: pytest 9 dropped ``_pytest.monkeypatch.notset`` (Flask 3.1.3's
tests import it), and Fanout installs a top-level module named ``app``,
which Flask's CLI discovery (``import app``) would find where its tests
expect none.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Generator
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import TYPE_CHECKING, Any

import _pytest.monkeypatch
import pytest
from _pytest.compat import NOTSET

from tests.flask_suite.expectations import CRASHED, FAILED, PASSED, SKIPPED

if TYPE_CHECKING:
    from tests.flask_suite.served import ServedApps

MODES = ("plain", "class", "served")


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add the plugin's options."""
    group = parser.getgroup("flask-suite")
    group.addoption("--flask-suite-mode", choices=MODES, default="plain")
    group.addoption("--flask-suite-outcomes", default=None, help="write outcomes (JSON) here")


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    """Before Flask's conftest is imported: apply the shims and the mode's swaps."""
    options = early_config.known_args_namespace
    plugin = FlaskSuitePlugin(options.flask_suite_mode, options.flask_suite_outcomes)
    early_config.pluginmanager.register(plugin, "flask-suite")
    plugin.install()


class FlaskSuitePlugin:
    """The shims, the mode's swaps, and the outcome record, undone at the end."""

    def __init__(self, mode: str, outcomes_path: str | None) -> None:
        self.mode = mode
        self._outcomes_path = outcomes_path
        self._patch = pytest.MonkeyPatch()
        self._outcomes: dict[str, str] = {}
        self._skips: dict[str, str] = {}
        #: Tests during which the server's loop died, with what killed it.
        self._crashes: dict[str, str] = {}
        self._served: ServedApps | None = None
        self._added_notset = False

    def install(self) -> None:
        """Apply the shims and, per mode, swap the class and serve the test client."""
        # The bridge is imported only by the modes that use it: the plain run
        # is Flask as installed, nothing of Fanout's but the two shims.
        if not hasattr(_pytest.monkeypatch, "notset"):
            # Not through MonkeyPatch.setattr: it takes NOTSET as "no value given".
            _pytest.monkeypatch.notset = NOTSET  # type: ignore[attr-defined]
            self._added_notset = True
        self._hide_fanout_app()
        if self.mode in ("class", "served"):
            import flask

            from fanout.bridge import BridgeFlask

            self._patch.setattr(flask, "Flask", BridgeFlask)
        if self.mode == "served":
            self._serve_test_client()

    def _hide_fanout_app(self) -> None:
        import fanout

        fanout_app = (Path(fanout.__file__).parent.parent / "app.py").resolve()
        finders = [
            HideModule(finder, "app", fanout_app) if _finds(finder, "app", fanout_app) else finder
            for finder in sys.meta_path
        ]
        self._patch.setattr(sys, "meta_path", finders)

    def _serve_test_client(self) -> None:
        import werkzeug.test
        from flask.app import Flask

        from tests.flask_suite.served import ServedApps

        self._served = served = ServedApps()
        client_run = werkzeug.test.Client.run_wsgi_app

        def run_wsgi_app(client: Any, environ: dict[str, Any], buffered: bool = False) -> Any:
            # The client's own method (cookies in and out) around the served
            # app; not werkzeug.test.run_wsgi_app, which Werkzeug also uses
            # inside a request (Response.force_type on an HTTPException).
            app = client.application
            if not isinstance(app, Flask):
                raise TypeError(f"the served run serves Flask apps only, not {app!r}")
            client.application = served.wsgi(app)
            try:
                return client_run(client, environ, buffered)
            finally:
                client.application = app

        self._patch.setattr(werkzeug.test.Client, "run_wsgi_app", run_wsgi_app)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, object, object]:
        """After the test's own teardown, shut down the lifespans of the apps it served."""
        result = yield
        if self._served is not None:
            died_of = self._served.end_test()
            if died_of is not None:
                # Never an expected failure: a server process would have ended.
                self._crashes[item.nodeid] = repr(died_of)
        return result

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Record the test's outcome: failed if any phase failed."""
        if report.failed:
            self._outcomes[report.nodeid] = FAILED
        elif report.skipped:
            self._outcomes.setdefault(report.nodeid, SKIPPED)
            if isinstance(report.longrepr, tuple):
                self._skips[report.nodeid] = str(report.longrepr[2])
        elif report.when == "call":
            self._outcomes.setdefault(report.nodeid, PASSED)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        """Record a module that failed to import as a failure."""
        if report.failed:
            self._outcomes[report.nodeid] = FAILED

    def pytest_sessionfinish(self) -> None:
        """Write the outcomes for the runner."""
        if self._outcomes_path is not None:
            outcomes = {**self._outcomes, **dict.fromkeys(self._crashes, CRASHED)}
            record = {
                "mode": self.mode,
                "outcomes": outcomes,
                "skips": self._skips,
                "crashes": self._crashes,
                "served": self._served.counts if self._served is not None else None,
            }
            Path(self._outcomes_path).write_text(json.dumps(record, indent=1))

    def pytest_unconfigure(self) -> None:
        """Stop the server thread and undo every patch."""
        if self._served is not None:
            self._served.close()
        self._patch.undo()
        if self._added_notset:
            del _pytest.monkeypatch.notset  # type: ignore[attr-defined]


def _finds(finder: object, name: str, origin: Path) -> bool:
    find_spec = getattr(finder, "find_spec", None)
    if find_spec is None:
        return False
    spec = find_spec(name, None)
    return spec is not None and spec.origin is not None and Path(spec.origin).resolve() == origin


class HideModule:
    """A meta path finder that finds what ``inner`` does, except one module file.

    Returning None (rather than raising) lets the import fail the way an
    absent module does, which Flask's CLI discovery tells apart from an
    error raised inside the module.
    """

    def __init__(self, inner: Any, name: str, origin: Path) -> None:
        self._inner = inner
        self._name = name
        self._origin = origin

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        """Find ``fullname`` as ``inner`` does, unless that is the hidden module."""
        spec: ModuleSpec | None = self._inner.find_spec(fullname, path, target)
        if (
            fullname == self._name
            and spec is not None
            and spec.origin is not None
            and Path(spec.origin).resolve() == self._origin
        ):
            return None
        return spec

    def __getattr__(self, name: str) -> Any:
        # invalidate_caches, find_distributions (importlib.metadata), ...
        return getattr(self._inner, name)
