"""The sdist of the installed Flask, fetched from the package registry once and kept."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

#: Seconds pip may take to fetch the sdist (it also builds its metadata).
DOWNLOAD_TIMEOUT = 300


class SdistError(RuntimeError):
    """The Flask sdist could not be fetched or is not the expected one."""


def installed_flask_version() -> str:
    """Return the version of the Flask installed in this environment."""
    return importlib.metadata.version("flask")


def flask_sdist(cache: Path, version: str | None = None) -> Path:
    """Return the extracted sdist of Flask ``version`` (default: installed), fetching it once.

    The extracted tree is ``cache/flask-VERSION``. A tree is moved into
    place whole, so a run that is interrupted, or two runs at once, never
    leave a half-extracted tree behind to be reused.
    """
    version = version or installed_flask_version()
    target = cache / f"flask-{version}"
    if (target / "tests").is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".fetch-") as scratch:
        archive = _download(version, Path(scratch))
        extracted = Path(scratch) / "extracted"
        _extract(archive, extracted)
        roots = list(extracted.iterdir())
        if len(roots) != 1 or not (roots[0] / "tests").is_dir():
            raise SdistError(f"{archive.name}: expected one top directory holding tests/")
        try:
            os.rename(roots[0], target)
        except OSError:
            # Another run put it there first: use that one.
            if not (target / "tests").is_dir():
                raise
    return target


def _download(version: str, into: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        f"flask=={version}",
        "--no-binary",
        ":all:",
        "--no-deps",
        "--quiet",
        "--dest",
        str(into),
    ]
    logger.info("fetching the Flask %s sdist", version)
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT, check=False
    )
    if done.returncode != 0:
        raise SdistError(f"pip download flask=={version} failed:\n{done.stdout}{done.stderr}")
    archives = [path for path in into.iterdir() if path.name.endswith(".tar.gz")]
    if len(archives) != 1:
        raise SdistError(f"pip download flask=={version} left {sorted(into.iterdir())}")
    return archives[0]


def _extract(archive: Path, into: Path) -> None:
    with tarfile.open(archive) as tar:
        # The "data" filter refuses absolute paths, links out of the tree and
        # device files (and is the default from Python 3.14 on).
        tar.extractall(into, filter="data")


def forget(cache: Path) -> None:
    """Remove every cached sdist (``--refetch``)."""
    shutil.rmtree(cache, ignore_errors=True)
