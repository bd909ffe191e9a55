"""Fanout against its peers, side by side in one run (issue 5).

    python -m bench [--quick | --smoke] [--out DIR] [--only SCENARIO,...]

Starts a simulated upstream, then each contender in turn under Hypercorn
(Fanout, a Quart peer, the seed approach; and Fanout under its own
supervisor, `fanout --workers N`), drives load with wrk (or the built-in
generator), and writes DIR/report.md, DIR/results.json, DIR/chart.png and
DIR/overload.png (default DIR: bench/results/<today>). The report also goes
to stdout. A full run takes about 18 minutes on 2 cores; --quick about 6;
--smoke seconds (CI: it checks a report was produced, never a speed).

    python -m bench --render DIR    re-renders DIR's report and charts from its results.json
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from datetime import date
from pathlib import Path
from typing import Any

from bench import profile, scenarios
from bench.contenders import CONNECTIONS, REPO
from bench.harness import Bench
from bench.load import find_load_generator
from bench.plan import FULL, PLANS, Plan
from bench.report import chart, render

logger = logging.getLogger("bench")

SCENARIOS = ("fanout", "profile", "hot", "jobs", "overload")
VERSIONED = ("hypercorn", "flask", "werkzeug", "quart", "aiohttp", "uvloop", "greenlet", "h11")
#: What --smoke checks is in results.json: one measured run of each kind, never a speed.
SMOKE_RUN_KINDS = ("fanout", "floor", "hot", "polls", "overload")


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _commit() -> str:
    # Read-only git queries: which code was measured.
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    )
    if head.returncode != 0:
        return "unknown"
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    return head.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")


def _worker_class(chosen: str | None) -> str:
    if chosen:
        return chosen
    shipped = tomllib.loads((REPO / "hypercorn.toml").read_text())
    return str(shipped.get("worker_class", "asyncio"))


async def run_bench(
    plan: Plan,
    out_dir: Path,
    *,
    builtin_load: bool,
    worker_class: str | None,
    only: tuple[str, ...],
    command: str,
) -> dict[str, Any]:
    """Run the chosen scenarios and return everything measured, as results.json holds it."""
    generator = find_load_generator(builtin=builtin_load)
    started = time.monotonic()
    meta: dict[str, Any] = {
        "date": date.today().isoformat(),
        "command": command,
        "plan": plan.to_json(),
        "cores": os.cpu_count(),
        "loadavg_start": list(os.getloadavg()),
        "load_generator": generator.description,
        "load_generator_kind": generator.kind,
        "worker_class": _worker_class(worker_class),
        "connections": CONNECTIONS,
        "upstream_uvloop": importlib.util.find_spec("uvloop") is not None,
        "versions": _versions(),
        "commit": _commit(),
        "scenarios": list(only),
    }
    logger.info("plan %s: about %.0f min", plan.name, plan.estimate_seconds() / 60)
    with tempfile.TemporaryDirectory(prefix="fanout-bench-") as work:
        bench = Bench(plan, generator, Path(work), worker_class)
        async with bench.serving_upstream():
            if "fanout" in only:
                await scenarios.fan_out(bench)
            if "profile" in only:
                await profile.profile(bench, out_dir)
            if "hot" in only:
                await scenarios.hot_key(bench)
            if "jobs" in only:
                await scenarios.jobs(bench)
            if "overload" in only:
                await scenarios.overload(bench)
        shutil.copy(bench.gateway_file, out_dir / "gateway.toml")
    if generator.kind == "builtin":
        bench.notes.insert(0, f"Load generator: {generator.description}.")
    meta["loadavg_end"] = list(os.getloadavg())
    meta["elapsed_s"] = time.monotonic() - started
    return {
        "meta": meta,
        "runs": [run.to_json() for run in bench.runs],
        "sections": bench.sections,
        "notes": bench.notes,
    }


def write_outputs(results: dict[str, Any], out_dir: Path) -> str:
    """Write results.json, report.md and the charts; return the report."""
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    report = render(results)
    (out_dir / "report.md").write_text(report)
    chart(results, out_dir)
    return report


def smoke_problems(out_dir: Path) -> list[str]:
    """What is missing from a smoke run's output (a report of every scenario), if anything."""
    report = out_dir / "report.md"
    if not report.is_file() or not report.read_text().strip():
        return ["no report.md"]
    problems = []
    results = json.loads((out_dir / "results.json").read_text())
    kinds = {run["scenario"] for run in results["runs"]}
    problems += [f"no measured {kind} run" for kind in SMOKE_RUN_KINDS if kind not in kinds]
    if "jobs" not in results["sections"]:
        problems.append("no jobs section")
    if not (out_dir / "chart.png").is_file():
        problems.append("no chart.png")
    return problems


def main(argv: list[str] | None = None) -> int:
    """The command line: run, write, print the report (and check it in --smoke)."""
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="one round, shorter runs (~5 min)")
    size.add_argument("--smoke", action="store_true", help="seconds, tiny load (CI)")
    parser.add_argument("--out", type=Path, help="output directory (bench/results/<today>)")
    parser.add_argument(
        "--only", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}"
    )
    parser.add_argument("--builtin-load", action="store_true", help="do not use wrk")
    parser.add_argument(
        "--worker-class", choices=("asyncio", "uvloop"), help="override hypercorn.toml's"
    )
    parser.add_argument("--render", type=Path, metavar="DIR", help="re-render DIR's report")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    if args.render:
        results = json.loads((args.render / "results.json").read_text())
        sys.stdout.write(write_outputs(results, args.render))
        return 0
    plan = PLANS["smoke"] if args.smoke else PLANS["quick"] if args.quick else FULL
    only = tuple(name.strip() for name in args.only.split(",") if name.strip())
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    out_dir: Path = args.out or REPO / "bench" / "results" / date.today().isoformat()
    out_dir.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "-m", "bench", *(argv if argv is not None else sys.argv[1:])])
    results = asyncio.run(
        run_bench(
            plan,
            out_dir,
            builtin_load=args.builtin_load,
            worker_class=args.worker_class,
            only=only,
            command=command,
        )
    )
    sys.stdout.write(write_outputs(results, out_dir))
    if args.smoke:
        problems = smoke_problems(out_dir) if set(only) == set(SCENARIOS) else []
        if problems:
            sys.stderr.write("bench --smoke: " + "; ".join(problems) + "\n")
            return 1
        sys.stderr.write(f"bench --smoke: report written to {out_dir / 'report.md'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
