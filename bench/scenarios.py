"""The scenarios of issue 5: fan-out (and the floor), hot key, jobs, overload."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from bench.contenders import ALL, FANOUT, QUART, SEED, Contender
from bench.harness import Bench, Served, token
from bench.processes import RssSampler, rss_bytes

logger = logging.getLogger(__name__)

#: What a failed contender block may raise; the run goes on and the report says so.
RUN_FAILURES = (RuntimeError, OSError, aiohttp.ClientError, TimeoutError)
#: Longest wait for jobs to finish, and for a jobs listing page.
JOBS_FINISH_TIMEOUT = 300.0
#: The memory job store's sweeps in the jobs scenario (FANOUT_JOB_SWEEP_SECONDS).
JOB_SWEEP_SECONDS = 1.0


async def _guarded(bench: Bench, what: str, block: Callable[[], Awaitable[None]]) -> None:
    try:
        await block()
    except RUN_FAILURES as exc:
        logger.exception("%s failed", what)
        bench.notes.append(f"{what} failed: {type(exc).__name__}: {str(exc)[:300]}")


async def fan_out(bench: Bench) -> None:
    """Scenario 1: distinct keys, 5 backends; contenders interleaved per round; the floor."""
    plan = bench.plan
    for round_ in range(plan.rounds):
        for workers in plan.workers:
            for contender in ALL:
                await _guarded(
                    bench,
                    f"fan-out, {contender.label}, {workers} worker(s), round {round_ + 1}",
                    functools.partial(_fan_out_levels, bench, contender, workers, round_),
                )
        await _guarded(
            bench, f"floor, round {round_ + 1}", functools.partial(_floor, bench, round_)
        )


async def _fan_out_levels(bench: Bench, contender: Contender, workers: int, round_: int) -> None:
    plan = bench.plan
    async with bench.serving(contender, workers) as served:
        for clients in plan.clients:
            await bench.measure(
                scenario="fanout",
                served=served,
                path=f"/fan/{token()}-{{n}}",
                clients=clients,
                duration=plan.duration,
                warmup=plan.warmup,
                round_=round_,
            )


async def _floor(bench: Bench, round_: int) -> None:
    for clients in bench.plan.clients:
        await bench.measure(
            scenario="floor",
            served=None,
            path=f"/item/{token()}-{{n}}?b=0",
            clients=clients,
            duration=bench.plan.floor_duration,
            warmup=min(1.0, bench.plan.warmup),
            round_=round_,
        )


async def hot_key(bench: Bench) -> None:
    """Scenario 2: every client asks for the same resource; Fanout without and with cache."""
    plan = bench.plan
    peers = (QUART, SEED) if plan.hot_seed else (QUART,)

    async def fanout_round(round_: int) -> None:
        async with bench.serving(FANOUT, 1) as served:
            for variant, prefix in (
                ("coalescing", "/fan"),
                ("coalescing + cache_ttl 60", "/cached"),
            ):
                await _hot_run(bench, served, f"{prefix}/hot-{token()}", variant, round_)

    async def peer_round(peer: Contender, round_: int) -> None:
        async with bench.serving(peer, 1) as served:
            await _hot_run(bench, served, f"/fan/hot-{token()}", "", round_)

    for round_ in range(plan.rounds):
        await _guarded(
            bench, f"hot key, Fanout, round {round_ + 1}", functools.partial(fanout_round, round_)
        )
        for peer in peers:
            await _guarded(
                bench,
                f"hot key, {peer.label}, round {round_ + 1}",
                functools.partial(peer_round, peer, round_),
            )


async def _hot_run(bench: Bench, served: Served, path: str, variant: str, round_: int) -> None:
    await bench.measure(
        scenario="hot",
        served=served,
        path=path,
        clients=bench.plan.hot_clients,
        duration=bench.plan.duration,
        warmup=bench.plan.warmup,
        round_=round_,
        variant=variant,
    )


async def jobs(bench: Bench) -> None:
    """Scenario 3: start many jobs of upstream work, wait for all, poll them, watch memory."""
    await _guarded(bench, "jobs", lambda: _jobs(bench))


async def _jobs(bench: Bench) -> None:
    plan = bench.plan
    env = {"FANOUT_JOB_SWEEP_SECONDS": str(JOB_SWEEP_SECONDS)}
    async with bench.serving(FANOUT, 1, extra_env=env) as served:
        pid = served.process.pid
        await asyncio.sleep(1.0)
        rss_before = rss_bytes(pid)
        connector = aiohttp.TCPConnector(limit=plan.job_starters)
        async with RssSampler(pid) as sampler, aiohttp.ClientSession(connector=connector) as http:
            started = time.perf_counter()
            ids, refused, failed_starts = await _start_jobs(http, served.base_url, bench)
            submitted = time.perf_counter() - started
            logger.info("jobs: %d started in %.1f s (%d refused)", len(ids), submitted, refused)
            await _wait_jobs_finished(http, served.base_url)
            finished = time.perf_counter() - started
            finished_wall = time.time()
            succeeded = await _count_jobs(http, served.base_url, "succeeded", len(ids))
            rss_after_work = rss_bytes(pid)
            paths_file = bench.work_dir / "job-paths.txt"
            paths_file.write_text("".join(f"/jobs/{job_id}\n" for job_id in ids))
            polls = await bench.measure(
                scenario="polls",
                served=served,
                path="/",
                paths_file=paths_file,
                clients=plan.pollers,
                duration=plan.poll_duration,
                warmup=min(1.0, plan.warmup),
            )
        peak = sampler.peak
        # Finished jobs expire result_ttl after they finished; the store frees
        # them at its next sweep.
        wait = finished_wall + plan.job_ttl + 2 * JOB_SWEEP_SECONDS + 1.0 - time.time()
        logger.info("jobs: waiting %.0f s for the TTL sweep", max(0.0, wait))
        await asyncio.sleep(max(0.0, wait))
        expired = await _expired(bench.http, served.base_url, ids[:20])
        rss_after_sweep = rss_bytes(pid)
    bench.sections["jobs"] = {
        "jobs": plan.jobs,
        "started": len(ids),
        "refused_503": refused,
        "failed_starts": failed_starts,
        "succeeded": succeeded,
        "seconds_to_start_all": submitted,
        "seconds_to_all_finished": finished,
        "job_upstream_ms": plan.job_delay_ms,
        "pollers": plan.pollers,
        "polls": polls.to_json(),
        "rss_before_bytes": rss_before,
        "rss_peak_bytes": peak,
        "rss_after_work_bytes": rss_after_work,
        "rss_after_sweep_bytes": rss_after_sweep,
        "expired_checked": expired,
        "result_ttl_s": plan.job_ttl,
    }


async def _start_jobs(
    http: aiohttp.ClientSession, base_url: str, bench: Bench
) -> tuple[list[str], int, int]:
    plan = bench.plan
    prefix = token()
    numbers = iter(range(plan.jobs))
    ids: list[str] = []
    refused = failed = 0

    async def starter() -> None:
        nonlocal refused, failed
        for number in numbers:  # shared: each job number is started once
            body = {
                "upstream": "sim",
                "path": f"/item/{{item}}?b=0&delay={plan.job_delay_ms}",
                "items": [f"job-{prefix}-{number}"],
            }
            async with http.post(f"{base_url}/jobs/batch", json=body) as answer:
                if answer.status == 202:
                    ids.append((await answer.json())["id"])
                elif answer.status == 503:
                    refused += 1
                else:
                    failed += 1

    async with asyncio.timeout(JOBS_FINISH_TIMEOUT):
        await asyncio.gather(*(starter() for _ in range(plan.job_starters)))
    return ids, refused, failed


async def _listing(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(url) as answer:
        if answer.status != 200:
            raise RuntimeError(f"GET {url}: HTTP {answer.status}")
        page: dict[str, Any] = await answer.json()
        return page


async def _wait_jobs_finished(http: aiohttp.ClientSession, base_url: str) -> None:
    async with asyncio.timeout(JOBS_FINISH_TIMEOUT):
        while True:
            pending = await _listing(http, f"{base_url}/jobs?status=pending&limit=1")
            running = await _listing(http, f"{base_url}/jobs?status=running&limit=1")
            if not pending["jobs"] and not running["jobs"]:
                return
            await asyncio.sleep(0.05)


async def _count_jobs(http: aiohttp.ClientSession, base_url: str, status: str, most: int) -> int:
    count, cursor = 0, ""
    # Bounded: 100 a page, never more pages than the jobs started allow.
    for _ in range(most // 100 + 2):
        url = f"{base_url}/jobs?status={status}&limit=100" + (f"&cursor={cursor}" if cursor else "")
        page = await _listing(http, url)
        count += len(page["jobs"])
        cursor = page.get("next_cursor") or ""
        if not cursor:
            break
    return count


async def _expired(http: aiohttp.ClientSession, base_url: str, ids: list[str]) -> str:
    statuses = []
    for job_id in ids:
        async with http.get(f"{base_url}/jobs/{job_id}") as answer:
            statuses.append(answer.status)
    gone = sum(1 for status in statuses if status == 404)
    return f"{gone} of {len(statuses)} sampled jobs answer 404 after the TTL"


async def overload(bench: Bench) -> None:
    """Scenario 4: every contender through the same concurrency ramp on 1 s upstreams."""
    summary: dict[str, Any] = {}
    for contender in (FANOUT, QUART):

        async def ramp(c: Contender = contender) -> None:
            summary[c.key] = await _ramp(bench, c)

        await _guarded(bench, f"overload, {contender.label}", ramp)
    bench.sections["overload"] = summary


async def _ramp(bench: Bench, contender: Contender) -> dict[str, Any]:
    plan = bench.plan
    p99: dict[int, float] = {}
    shed: dict[int, float] = {}
    async with bench.serving(contender, 1) as served:

        async def level(clients: int) -> None:
            run = await bench.measure(
                scenario="overload",
                served=served,
                path=f"/slow/{token()}-{{n}}",
                clients=clients,
                duration=plan.overload_duration,
                warmup=plan.overload_warmup,
                request_timeout=30.0,
            )
            p99[clients] = run.load.p99_ms
            shed[clients] = run.load.errors / run.load.attempts if run.load.attempts else 0.0

        # The same levels for every contender, so their rows compare.
        for clients in plan.overload_levels:
            await level(clients)
        base = p99[plan.overload_levels[0]]
        doubled_at = next((c for c in plan.overload_levels[1:] if p99[c] >= 2 * base), None)
        if doubled_at is not None and 2 * doubled_at not in shed:
            await level(2 * doubled_at)  # one level past the ramp, at most
    return {
        "base_p99_ms": base,
        "p99_doubles_at": doubled_at,
        "shed_rate_at_twice": shed.get(2 * doubled_at) if doubled_at else None,
    }
