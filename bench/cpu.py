"""Server CPU per answer, Fanout against Quart, at one load: the quick check for a change.

    python -m bench.cpu [--rounds 3] [--clients 100] [--seconds 5] [--workers 1] [--supervisor]

With --supervisor, Fanout under its own supervisor (``fanout --workers N``)
is measured against Fanout under plain Hypercorn (``workers = 0`` at 1): what
the supervisor costs at steady state.

Throughput on this shared 2-core machine drifts by tens of percent from run to
run; the server's own CPU seconds per answer drift far less, and at saturation
they are what decides req/s. Each round serves Fanout and Quart (interleaved,
so drift hits both, in alternating order), drives the fan-out scenario's load, and logs the server
process tree's CPU ms per answer; the end prints the medians and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
from pathlib import Path

from bench.contenders import FANOUT, FANOUT_SUPERVISED, QUART, Contender
from bench.harness import Bench, token
from bench.load import find_load_generator
from bench.plan import QUICK

logger = logging.getLogger("bench.cpu")


def _pair(args: argparse.Namespace) -> tuple[Contender, Contender]:
    return (FANOUT_SUPERVISED, FANOUT) if args.supervisor else (FANOUT, QUART)


async def _measure(args: argparse.Namespace, work_dir: Path) -> dict[str, list[float]]:
    bench = Bench(plan=QUICK, generator=find_load_generator(), work_dir=work_dir, worker_class=None)
    per_answer: dict[str, list[float]] = {contender.key: [] for contender in _pair(args)}
    async with bench.serving_upstream():
        for round_ in range(args.rounds):
            # Alternated: the one measured second is not always the same one.
            pair = _pair(args)
            for contender in pair if round_ % 2 == 0 else pair[::-1]:
                async with bench.serving(contender, args.workers) as served:
                    run = await bench.measure(
                        scenario="cpu",
                        served=served,
                        path=f"/fan/{token()}-{{n}}",
                        clients=args.clients,
                        duration=args.seconds,
                        warmup=1.0,
                        round_=round_,
                    )
                ms = 1000 * run.server_cpu_s / max(1, run.load.ok)
                per_answer[contender.key].append(ms)
                logger.info("round %d %s: %.3f ms CPU per answer", round_ + 1, contender.key, ms)
    return per_answer


def main() -> None:
    """Parse the arguments, measure, log the medians and the ratio."""
    parser = argparse.ArgumentParser(prog="python -m bench.cpu", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--supervisor", action="store_true", help="Fanout's supervisor against plain Hypercorn"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as work_dir:
        per_answer = asyncio.run(_measure(args, Path(work_dir)))
    mine, theirs = _pair(args)
    ours = statistics.median(per_answer[mine.key])
    peer = statistics.median(per_answer[theirs.key])
    logger.info(
        "median server CPU per answer: %s %.3f ms, %s %.3f ms, ratio %.2fx",
        mine.label,
        ours,
        theirs.label,
        peer,
        ours / peer,
    )


if __name__ == "__main__":
    main()
