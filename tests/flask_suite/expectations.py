"""The expected-failures list and the comparison of a run's outcomes with it (pure)."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

#: The runs, in order; each one also expects the failures of the runs before it
#: (a test failing on plain Flask fails with the bridge too, for the same reason).
RUNS = ("plain", "class", "served")

#: How each run is named in its summary line.
TITLES = {"plain": "plain flask", "class": "bridge class", "served": "bridge served"}

#: The outcomes the plugin records for a test (or a module that failed to import);
#: CRASHED: the server's loop died during the test, which no entry can excuse.
PASSED, FAILED, SKIPPED, CRASHED = "passed", "failed", "skipped", "crashed"


class ExpectationsError(ValueError):
    """The expected-failures file is malformed."""


@dataclass(frozen=True)
class Expected:
    """Tests expected to fail in a run: node id -> why."""

    reasons: dict[str, str]


@dataclass
class Comparison:
    """A run's outcomes set against what was expected of it."""

    run: str
    passed: int = 0
    skipped: list[str] = field(default_factory=list)
    expected_failures: list[str] = field(default_factory=list)
    unexpected_failures: list[str] = field(default_factory=list)
    #: Tests during which the server's loop died (also unexpected failures).
    crashed: list[str] = field(default_factory=list)
    #: Listed tests that did not fail, with what happened to them instead.
    stale: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when nothing failed unexpectedly and no listed test stopped failing."""
        return not self.unexpected_failures and not self.stale

    def summary(self) -> str:
        """The one summary line of the run."""
        return (
            f"flask suite ({TITLES[self.run]}): {self.passed} passed, "
            f"{len(self.expected_failures)} expected failures, "
            f"{len(self.unexpected_failures)} unexpected failures, "
            f"{len(self.skipped)} skipped"
        )

    def details(self) -> list[str]:
        """The lines naming what is wrong (unexpected failures, stale entries)."""
        lines = [
            f"  unexpected failure: {node}"
            + (
                " (the server's loop died: an exception escaped the bridge)"
                if node in self.crashed
                else ""
            )
            for node in self.unexpected_failures
        ]
        lines += [
            f"  stale entry in expected_failures.toml [{self.run}]: {node} ({what})"
            for node, what in self.stale.items()
        ]
        return lines


def load_expected(path: Path) -> dict[str, Expected]:
    """Read the list: per run, groups of ``reason`` and ``tests``; return what each run expects."""
    with path.open("rb") as file:
        data = tomllib.load(file)
    unknown = set(data) - set(RUNS)
    if unknown:
        raise ExpectationsError(f"{path.name}: unknown run(s) {sorted(unknown)}; runs: {RUNS}")
    expected: dict[str, Expected] = {}
    inherited: dict[str, str] = {}
    for run in RUNS:
        own = _groups(path.name, run, data.get(run, []))
        clash = set(own) & set(inherited)
        if clash:
            raise ExpectationsError(f"{path.name}: [{run}] repeats {sorted(clash)}")
        inherited = {**inherited, **own}
        expected[run] = Expected(dict(inherited))
    return expected


def _groups(name: str, run: str, groups: object) -> dict[str, str]:
    if not isinstance(groups, list):
        raise ExpectationsError(f"{name}: [{run}] must be an array of tables ([[{run}]])")
    reasons: dict[str, str] = {}
    for index, group in enumerate(groups):
        where = f"{name}: {run}[{index}]"
        if not isinstance(group, dict) or set(group) != {"reason", "tests"}:
            raise ExpectationsError(f"{where}: needs exactly 'reason' and 'tests'")
        reason, tests = group["reason"], group["tests"]
        if not isinstance(reason, str) or not reason.strip():
            raise ExpectationsError(f"{where}: 'reason' must be a non-empty string")
        if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
            raise ExpectationsError(f"{where}: 'tests' must be a non-empty list of node ids")
        for node in tests:
            if node in reasons:
                raise ExpectationsError(f"{where}: {node} is listed twice")
            reasons[node] = reason
    return reasons


def compare(run: str, outcomes: Mapping[str, str], expected: Expected) -> Comparison:
    """Set a run's outcomes (node id -> passed/failed/skipped) against what it expects."""
    result = Comparison(run)
    for node, outcome in sorted(outcomes.items()):
        listed = node in expected.reasons
        if outcome == PASSED:
            result.passed += 1
            if listed:
                result.stale[node] = "now passes"
        elif outcome == SKIPPED:
            result.skipped.append(node)
            if listed:
                result.stale[node] = "now skipped"
        elif outcome == CRASHED:
            result.unexpected_failures.append(node)
            result.crashed.append(node)
        elif listed:
            result.expected_failures.append(node)
        else:
            result.unexpected_failures.append(node)
    for node in sorted(set(expected.reasons) - set(outcomes)):
        result.stale[node] = "not run: renamed or removed?"
    return result


def failures_as_toml(run: str, failures: list[str], known: Mapping[str, str]) -> str:
    """The ``[[run]]`` groups for ``failures``: known reasons kept, new ones marked to write."""
    by_reason: dict[str, list[str]] = {}
    for node in failures:
        reason = known.get(node, "TODO: why a server cannot carry this (or report a bug)")
        by_reason.setdefault(reason, []).append(node)
    blocks = []
    for reason, tests in by_reason.items():
        listed = "".join(f'    "{node}",\n' for node in tests)
        blocks.append(f"[[{run}]]\nreason = {_toml_string(reason)}\ntests = [\n{listed}]\n")
    return "\n".join(blocks)


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
