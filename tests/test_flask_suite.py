"""Flask's own test suite through the bridge (tests/flask_suite), and its comparison rules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.flask_suite.expectations import (
    CRASHED,
    FAILED,
    PASSED,
    SKIPPED,
    Expected,
    compare,
    failures_as_toml,
    load_expected,
)
from tests.flask_suite.report import show_at_end
from tests.flask_suite.runner import EXPECTED_FILE, ROOT, run_suite


@pytest.mark.timeout(600)  # a first run fetches the sdist; then about 30 s
def test_flask_suite_fails_only_where_expected(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    summary = tmp_path / "summary.txt"
    done = subprocess.run(
        [sys.executable, "-m", "tests.flask_suite", "--summary-file", str(summary)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=580,
        check=False,
    )
    output = f"{done.stdout}\n{done.stderr}"
    assert done.returncode == 0, output
    lines = summary.read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "flask suite (plain flask)",
        "flask suite (bridge class)",
        "flask suite (bridge served)",
    ], output
    assert all(" 0 unexpected failures" in line for line in lines), output
    show_at_end(request.config, lines)


def test_a_server_loop_that_dies_fails_its_test_and_the_next_test_is_served(
    tmp_path: Path,
) -> None:
    # A suite of two tests, run as the Flask suite's served run is: the first
    # app kills the loop it is served on (a callback raising SystemExit, which
    # asyncio lets out of the loop); the next test gets a new server.
    (tmp_path / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\nfilterwarnings = ["error"]\n'
    )
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_two.py").write_text(
        "import asyncio\n"
        "import flask\n"
        "\n"
        "def exit_now():\n"
        "    raise SystemExit(3)\n"
        "\n"
        "def test_kills_the_loop():\n"
        "    app = flask.Flask(__name__)\n"
        "    @app.get('/')\n"
        "    async def index():\n"
        "        asyncio.get_running_loop().call_soon(exit_now)\n"
        "        await asyncio.sleep(1)\n"
        "        return 'never'\n"
        "    app.test_client().get('/')\n"
        "\n"
        "def test_served_after():\n"
        "    app = flask.Flask(__name__)\n"
        "    @app.get('/')\n"
        "    def index():\n"
        "        return type(app).__name__\n"
        "    assert app.test_client().get('/').data == b'BridgeFlask'\n"
    )
    result = run_suite(tmp_path, "served", tmp_path)
    assert result.outcomes == {
        "tests/test_two.py::test_kills_the_loop": CRASHED,
        "tests/test_two.py::test_served_after": PASSED,
    }, result.output
    comparison = compare(
        "served", result.outcomes, Expected({"tests/test_two.py::test_kills_the_loop": "listed"})
    )
    # Listed or not, a test that killed the server is an unexpected failure.
    assert comparison.unexpected_failures == ["tests/test_two.py::test_kills_the_loop"]
    assert "the server's loop died" in "\n".join(comparison.details())


def test_compare_counts_and_names_what_is_not_as_expected() -> None:
    outcomes = {
        "t::expected": FAILED,
        "t::new": FAILED,
        "t::fixed": PASSED,
        "t::ok": PASSED,
        "t::skipped": SKIPPED,
    }
    expected = Expected({"t::expected": "why", "t::fixed": "why", "t::gone": "why"})
    comparison = compare("served", outcomes, expected)
    assert comparison.summary() == (
        "flask suite (bridge served): 2 passed, 1 expected failures, "
        "1 unexpected failures, 1 skipped"
    )
    assert comparison.unexpected_failures == ["t::new"]
    assert comparison.stale == {"t::fixed": "now passes", "t::gone": "not run: renamed or removed?"}
    assert not comparison.ok
    assert compare("served", {"t::expected": FAILED}, Expected({"t::expected": "why"})).ok


def test_the_expected_list_loads_and_print_failures_writes_it_back(tmp_path: Path) -> None:
    expected = load_expected(EXPECTED_FILE)
    plain, served = expected["plain"].reasons, expected["served"].reasons
    # Each run expects the failures of the runs before it.
    assert plain and set(plain) <= set(expected["class"].reasons) <= set(served)
    own = sorted(set(served) - set(expected["class"].reasons))
    copy = tmp_path / "copy.toml"
    copy.write_text(failures_as_toml("served", own, served))
    assert load_expected(copy)["served"].reasons == {node: served[node] for node in own}
