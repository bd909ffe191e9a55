"""The installed layout: a wheel built from the project holds exactly the four top-level names."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.processes import ROOT

TOP_LEVEL = {"app", "handlers", "clients", "fanout"}


@pytest.mark.timeout(300)
def test_a_wheel_installs_exactly_app_handlers_clients_and_fanout(tmp_path: Path) -> None:
    # Built from a copy: a build writes build/ and *.egg-info beside the sources.
    source = tmp_path / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "*.egg-info", "build", "__pycache__", "*_cache", "var"
        ),
    )
    out = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
        check=True,
        timeout=280,
    )
    (wheel,) = out.glob("fanout-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0].removesuffix(".py") for name in names}
    top = {name for name in top if not name.endswith(".dist-info")}
    assert top == TOP_LEVEL, sorted(top)
    # The package data and the subpackages came along.
    assert "handlers/jobs_ui.html" in names
    for package in ("fanout/bridge", "fanout/core", "fanout/jobs", "fanout/process", "fanout/demo"):
        assert f"{package}/__init__.py" in names, package
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert (
        "fanout = fanout.process.launcher:main"
        in zipfile.ZipFile(wheel).read(entry_points).decode()
    )
