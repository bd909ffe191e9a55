"""Print the Flask suite's summary lines at the end of Fanout's own pytest run."""

from __future__ import annotations

import pytest


class SummaryReporter:
    """A pytest plugin holding summary lines; prints them in the terminal summary."""

    name = "flask-suite-summary"

    def __init__(self) -> None:
        self.lines: list[str] = []

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        """Print the lines under their own heading (in the CI log too, with -q)."""
        if self.lines:
            terminalreporter.write_sep("-", "Flask's own test suite")
            for line in self.lines:
                terminalreporter.write_line(line)


def show_at_end(config: pytest.Config, lines: list[str]) -> None:
    """Have ``lines`` printed in this session's terminal summary."""
    reporter = config.pluginmanager.get_plugin(SummaryReporter.name)
    if not isinstance(reporter, SummaryReporter):
        reporter = SummaryReporter()
        config.pluginmanager.register(reporter, SummaryReporter.name)
    reporter.lines.extend(lines)
