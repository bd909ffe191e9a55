"""Run Flask's own tests three ways and compare each run with the expected failures.

``python -m tests.flask_suite [--print-failures] [--summary-file FILE] [--refetch]``

1. ``plain``: Flask as installed, the control: what fails here fails
   because of this environment (a newer Werkzeug or pytest), not the bridge;
2. ``class``: ``flask.Flask`` is ``BridgeFlask``;
3. ``served``: that, and every test-client request served through
   ``ASGIBridge`` on a real event loop.

Each run prints one summary line. The exit status is 1 when a test failed
that is not listed for its run in ``expected_failures.toml``, or a listed
test did not fail (a stale entry), and 2 when a run could not be made.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.flask_suite.expectations import (
    FAILED,
    RUNS,
    Comparison,
    Expected,
    compare,
    failures_as_toml,
    load_expected,
)
from tests.flask_suite.sdist import SdistError, flask_sdist, forget, installed_flask_version

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
EXPECTED_FILE = HERE / "expected_failures.toml"
CACHE = ROOT / ".cache" / "flask-suite"

#: The most seconds one run of Flask's suite may take (about 10 s each here).
RUN_TIMEOUT = 300

#: Per Flask test, so a hang fails its test instead of the whole run.
TEST_TIMEOUT = 30


class RunError(RuntimeError):
    """A run of the suite did not complete (pytest itself failed, or timed out)."""


@dataclass
class RunResult:
    """One run's outcomes, skip reasons and pytest output."""

    run: str
    outcomes: dict[str, str]
    skips: dict[str, str]
    #: In the served run: requests served through ASGIBridge, apps, apps not BridgeFlask.
    served: dict[str, int] | None
    output: str
    seconds: float


def run_suite(sdist: Path, run: str, scratch: Path) -> RunResult:
    """Run the sdist's tests under the plugin in ``run`` mode, in a subprocess."""
    outcomes_file = scratch / f"{run}.json"
    command = [
        sys.executable,
        "-P",  # no current directory on sys.path, as with Flask's own `pytest` command
        "-m",
        "pytest",
        "tests",
        # The sdist's own configuration (filterwarnings = error), no cache written.
        "-c",
        "pyproject.toml",
        "-p",
        "no:cacheprovider",
        "-p",
        "tests.flask_suite.plugin",
        f"--flask-suite-mode={run}",
        f"--flask-suite-outcomes={outcomes_file}",
        "-p",
        "pytest_timeout",
        f"--timeout={TEST_TIMEOUT}",
        "-q",
        "-rfEs",
        "--tb=short",
    ]
    env = dict(os.environ)
    # Only the plugins named here: Fanout's dev plugins (asyncio, playwright,
    # schemathesis's) are not Flask's test environment.
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    started = time.monotonic()
    try:
        done = subprocess.run(
            command,
            cwd=sdist,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise RunError(f"{run}: Flask's suite did not finish within {RUN_TIMEOUT} s") from exc
    seconds = time.monotonic() - started
    output = done.stdout + done.stderr
    # 0: all passed, 1: some failed; anything else is pytest failing to run.
    if done.returncode not in (0, 1) or not outcomes_file.exists():
        raise RunError(f"{run}: pytest exited {done.returncode}\n{output}")
    record = json.loads(outcomes_file.read_text())
    if not record["outcomes"]:
        raise RunError(f"{run}: no test ran\n{output}")
    served = record["served"]
    if run == "served" and (served is None or not served["requests"]):
        # The served run's patch of the test client no longer takes effect.
        raise RunError(f"{run}: no request was served through ASGIBridge\n{output}")
    return RunResult(run, record["outcomes"], record["skips"], served, output, seconds)


def report(result: RunResult, comparison: Comparison) -> list[str]:
    """The lines printed for a run: its summary, then what is wrong and what was skipped."""
    lines = [comparison.summary(), *comparison.details()]
    lines += [f"  skipped: {node} ({why})" for node, why in sorted(result.skips.items())]
    return lines


def failure_sections(output: str, nodes: list[str]) -> list[str]:
    """pytest's report of each of ``nodes`` (its FAILURES/ERRORS section), cut from ``output``."""
    # A section opens with "____ head ____", head being the test's name past
    # the module ("Class.test[param]"), and runs to the next rule of "_" or "=".
    wanted = {node.split("::", 1)[-1].replace("::", ".") for node in nodes}
    sections: list[str] = []
    keep = False
    for line in output.splitlines():
        rule = re.fullmatch(r"_{3,} (.+?) _{3,}", line)
        if rule is not None:
            keep = rule.group(1) in wanted
        elif re.fullmatch(r"={3,}.*={3,}", line):
            keep = False
        if keep:
            sections.append(line)
    return sections


def own_failures(result: RunResult, expected: dict[str, Expected]) -> list[str]:
    """The run's failures not already expected of an earlier run."""
    index = RUNS.index(result.run)
    earlier = expected[RUNS[index - 1]].reasons if index else {}
    return sorted(
        node
        for node, outcome in result.outcomes.items()
        if outcome == FAILED and node not in earlier
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite three ways; print one summary line per run; 0 if all is as expected."""
    parser = argparse.ArgumentParser(prog="python -m tests.flask_suite", description=__doc__)
    parser.add_argument(
        "--print-failures",
        action="store_true",
        help="print every run's current failures as expected_failures.toml groups",
    )
    parser.add_argument("--summary-file", type=Path, help="also write the summary lines here")
    parser.add_argument(
        "--runs", nargs="+", choices=RUNS, default=list(RUNS), help="run only these"
    )
    parser.add_argument("--refetch", action="store_true", help="fetch the sdist again")
    parser.add_argument(
        "--show-output", action="store_true", help="print pytest's output of every run"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    expected = load_expected(EXPECTED_FILE)
    if args.refetch:
        forget(CACHE)
    try:
        sdist = flask_sdist(CACHE)
    except SdistError as exc:
        logger.error("%s", exc)
        return 2
    logger.info("Flask %s's own tests, from %s", installed_flask_version(), sdist)

    ok = True
    summaries: list[str] = []
    with tempfile.TemporaryDirectory(prefix="flask-suite-") as scratch:
        for run in args.runs:
            try:
                result = run_suite(sdist, run, Path(scratch))
            except RunError as exc:
                logger.error("%s", exc)
                return 2
            logger.info("%s run: %.1f s", run, result.seconds)
            if result.served is not None:
                logger.info(
                    "%s run: %d requests served through ASGIBridge, to %d apps "
                    "(%d of them not BridgeFlask)",
                    run,
                    result.served["requests"],
                    result.served["apps"],
                    result.served["apps_not_bridge_flask"],
                )
            comparison = compare(run, result.outcomes, expected[run])
            lines = report(result, comparison)
            summaries.append(comparison.summary())
            _say(lines)
            if not comparison.ok:
                ok = False
                if not args.show_output:
                    _say(failure_sections(result.output, comparison.unexpected_failures))
            if args.show_output:
                _say([result.output])
            if args.print_failures:
                failures = own_failures(result, expected)
                _say([failures_as_toml(run, failures, expected[run].reasons)])
    if args.summary_file is not None:
        args.summary_file.write_text("".join(f"{line}\n" for line in summaries))
    if not ok:
        _say(
            [
                "flask suite: FAILED: fix the unexpected failures (or report them), and remove "
                f"stale entries from {EXPECTED_FILE.relative_to(ROOT)}"
            ]
        )
    return 0 if ok else 1


def _say(lines: list[str]) -> None:
    # The runner's report is its standard output (the test shows it on failure).
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    sys.stdout.flush()
