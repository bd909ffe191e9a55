"""The built-in load generator, used when ``wrk`` is not installed.

    python -m bench.loadgen --url http://127.0.0.1:P --connections N --duration S
                            (--path /fan/{n} | --paths-file F)

Closed loop like wrk: N connections, each sending its next request as soon
as the previous answer arrived, for S seconds (and at most --max-requests
requests). Prints the same ``BENCH_JSON {...}`` summary line as bench/wrk.lua.
It is Python on the same cores as the server, so it is slower than wrk and
takes more CPU: the report says when it was used.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp


@dataclass
class Tally:
    """Outcomes of one load run, in wrk's categories."""

    latencies_ms: list[float] = field(default_factory=list)
    connect: int = 0
    read: int = 0
    write: int = 0
    status: int = 0
    timeout: int = 0


def percentile(ordered: list[float], share: float) -> float:
    """The value below which ``share`` (0-100) percent of ``ordered`` lies; 0 when empty."""
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(share / 100 * len(ordered)) - 1))
    return ordered[index]


def summary(tally: Tally, duration: float) -> dict[str, float]:
    """The BENCH_JSON summary wrk.lua prints, from a tally."""
    ordered = sorted(tally.latencies_ms)
    return {
        "requests": len(ordered),
        "duration_s": duration,
        "connect": tally.connect,
        "read": tally.read,
        "write": tally.write,
        "status": tally.status,
        "timeout": tally.timeout,
        "p50_ms": percentile(ordered, 50),
        "p90_ms": percentile(ordered, 90),
        "p99_ms": percentile(ordered, 99),
        "mean_ms": sum(ordered) / len(ordered) if ordered else 0.0,
        "max_ms": ordered[-1] if ordered else 0.0,
    }


def _paths(template: str, paths_file: str | None) -> Iterator[str]:
    if paths_file:
        with open(paths_file, encoding="utf-8") as lines:
            listed = [line.strip() for line in lines if line.strip()]
        return itertools.cycle(listed)
    return (template.replace("{n}", f"g-{n}") for n in itertools.count())


async def run(
    url: str,
    paths: Iterator[str],
    *,
    connections: int,
    duration: float,
    request_timeout: float,
    max_requests: int,
    method: str,
    headers: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """Drive the load and return its summary."""
    if urlsplit(url).hostname != "127.0.0.1":
        raise SystemExit("bench.loadgen only targets 127.0.0.1")
    tally = Tally()
    sent = itertools.count()
    started = time.perf_counter()
    deadline = started + duration

    async def one_connection(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < deadline and next(sent) < max_requests:
            began = time.perf_counter()
            try:
                async with (
                    asyncio.timeout(request_timeout),
                    session.request(method, url + next(paths), headers=headers) as response,
                ):
                    await response.read()
            except TimeoutError:
                tally.timeout += 1
                continue
            except aiohttp.ClientConnectorError:
                tally.connect += 1
                await asyncio.sleep(0.01)  # a refused connect would otherwise spin
                continue
            except (aiohttp.ClientError, OSError):
                tally.read += 1
                continue
            if response.status > 399:
                tally.status += 1
            tally.latencies_ms.append((time.perf_counter() - began) * 1000)

    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(one_connection(session) for _ in range(connections)))
    return summary(tally, time.perf_counter() - started)


def main() -> None:
    """Parse the command line, drive the load, print the summary line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="http://127.0.0.1:PORT")
    parser.add_argument("--path", default="/")
    parser.add_argument("--paths-file")
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--max-requests", type=int, default=5_000_000)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--header", action="append", default=[], help="'Name: value'")
    args = parser.parse_args()
    headers = dict(line.split(": ", 1) for line in args.header)
    result = asyncio.run(
        run(
            args.url.rstrip("/"),
            _paths(args.path, args.paths_file),
            connections=args.connections,
            duration=args.duration,
            request_timeout=args.timeout,
            max_requests=args.max_requests,
            method=args.method,
            headers=headers,
        )
    )
    sys.stdout.write("BENCH_JSON " + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
