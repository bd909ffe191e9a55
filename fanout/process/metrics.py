"""Prometheus metrics: requests, upstream calls, jobs, circuits, the bridge and the loop.

One registry per app. With several Hypercorn workers, set
``PROMETHEUS_MULTIPROC_DIR`` (``fanout`` does) before the workers start:
every worker then writes its samples there and ``/metrics`` on any worker
reports them all. Gauges of a worker's own state (in flight, the thread
pool, circuits) are re-sampled by every worker a few times a second, and the
files of workers that died are removed at each scrape, so a scrape adds up
live workers only. Job counts are read from the job store at scrape time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask, Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from fanout.bridge import BridgeFlask, request_received_at, serving_state
from fanout.bridge.serving import ServingState
from fanout.core.circuit import CircuitState
from fanout.core.identity import CURRENT_CALLER, CallerKind
from fanout.jobs.model import JobStatus
from fanout.jobs.store import JobStore, StoreUnavailable

logger = logging.getLogger(__name__)

METRICS_KEY = "fanout.metrics"
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Circuit states as gauge values.
CIRCUIT_VALUES = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}
#: How often each worker measures its loop's lag and re-samples its gauges.
SAMPLE_INTERVAL_SECONDS = 0.25
#: The job statuses reported by ``fanout_jobs_active``.
ACTIVE_STATUSES = (JobStatus.PENDING, JobStatus.RUNNING)
#: How long a scrape waits for the job store before leaving the job counts out.
STORE_TIMEOUT_SECONDS = 2.0


@dataclass
class Metrics:
    """The app's metric families."""

    registry: CollectorRegistry
    requests: Counter
    request_seconds: Histogram
    in_flight: Gauge
    upstream_calls: Counter
    upstream_seconds: Histogram
    upstream_host_calls: Counter
    upstream_host_ejected: Gauge
    jobs_finished: Counter
    circuit_state: Gauge
    sync_threads: Gauge
    sync_views_running: Gauge
    sync_views_queued: Gauge
    loop_lag_seconds: Histogram
    caller_requests: Counter
    rate_limited: Counter
    rate_limit_errors: Counter
    #: Labelled children already looked up: ``labels()`` validates and locks on
    #: every call, and the hot paths ask for the same few children each time.
    _children: dict[tuple[Any, ...], Any] = field(default_factory=dict)

    def child(self, family: Counter | Gauge | Histogram, *labels: str) -> Any:
        """``family.labels(*labels)``, looked up once per label values."""
        key = (id(family), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = family.labels(*labels)
        return found

    def observe_upstream(self, upstream: str, outcome: str, seconds: float) -> None:
        """Count one upstream call: ok, error_status, timeout, error, circuit_open, blocked."""
        self.child(self.upstream_calls, upstream, outcome).inc()
        if outcome not in ("circuit_open", "blocked"):
            self.child(self.upstream_seconds, upstream).observe(seconds)

    def observe_host(self, upstream: str, host: str, outcome: str, ejected: bool) -> None:
        """One call on one host of an upstream (success or failure), and whether it is ejected."""
        self.child(self.upstream_host_calls, upstream, host, outcome).inc()
        self.child(self.upstream_host_ejected, upstream, host).set(1 if ejected else 0)

    def observe_circuit(self, upstream: str, state: CircuitState) -> None:
        """Record an upstream's circuit state."""
        self.circuit_state.labels(upstream).set(CIRCUIT_VALUES[state])

    def observe_job(self, kind: str, before: JobStatus | None, after: JobStatus) -> None:
        """Count a job that reached a final status (active jobs are counted in the store)."""
        if after.final:
            self.jobs_finished.labels(kind, str(after)).inc()

    def observe_bridge(self, state: ServingState, threads: int) -> None:
        """Record requests in flight and the def views' pool: its size, what runs, what waits."""
        # Counted by the bridge from arrival, so a request waiting for a
        # thread (before any hook of its ran) is in flight too.
        self.in_flight.set(state.exchanges)
        # The bridge counts a view from its hand-off to the pool until it
        # returns: beyond the pool's size, the rest wait in its queue.
        running = min(state.sync_running, threads)
        self.sync_threads.set(threads)
        self.sync_views_running.set(running)
        self.sync_views_queued.set(state.sync_running - running)


def _build() -> Metrics:
    registry = CollectorRegistry(auto_describe=True)
    return Metrics(
        registry=registry,
        requests=Counter(
            "fanout_http_requests",
            "HTTP requests answered",
            ["route", "method", "status"],
            registry=registry,
        ),
        request_seconds=Histogram(
            "fanout_http_request_seconds",
            "Time to answer an HTTP request",
            ["route", "method"],
            registry=registry,
        ),
        in_flight=Gauge(
            "fanout_http_requests_in_flight",
            "HTTP requests being served",
            registry=registry,
            multiprocess_mode="livesum",
        ),
        upstream_calls=Counter(
            "fanout_upstream_calls",
            "Calls to upstreams, by outcome",
            ["upstream", "outcome"],
            registry=registry,
        ),
        upstream_seconds=Histogram(
            "fanout_upstream_call_seconds",
            "Time of one upstream call (one try)",
            ["upstream"],
            registry=registry,
        ),
        upstream_host_calls=Counter(
            "fanout_upstream_host_calls",
            "Calls to each host of a several-host upstream, by outcome (success, failure)",
            ["upstream", "host", "outcome"],
            registry=registry,
        ),
        upstream_host_ejected=Gauge(
            "fanout_upstream_host_ejected",
            "1 while a host is ejected by outlier detection (the worst among live workers)",
            ["upstream", "host"],
            registry=registry,
            multiprocess_mode="livemax",
        ),
        jobs_finished=Counter(
            "fanout_jobs_finished",
            "Jobs that reached a final status",
            ["kind", "status"],
            registry=registry,
        ),
        circuit_state=Gauge(
            "fanout_circuit_state",
            "Upstream circuit: 0 closed, 1 half-open, 2 open (the worst of the live workers)",
            ["upstream"],
            registry=registry,
            # live: a worker that died with its circuit open is not reported forever.
            multiprocess_mode="livemax",
        ),
        sync_threads=Gauge(
            "fanout_sync_threads",
            "Threads of the pool that runs plain def views",
            registry=registry,
            multiprocess_mode="livesum",
        ),
        sync_views_running=Gauge(
            "fanout_sync_views_running",
            "Plain def views running in the thread pool",
            registry=registry,
            multiprocess_mode="livesum",
        ),
        sync_views_queued=Gauge(
            "fanout_sync_views_queued",
            "Plain def views waiting for a thread of the pool",
            registry=registry,
            multiprocess_mode="livesum",
        ),
        loop_lag_seconds=Histogram(
            "fanout_event_loop_lag_seconds",
            "How late a callback scheduled on the event loop runs (blocking code shows here)",
            registry=registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        ),
        caller_requests=Counter(
            "fanout_caller_requests",
            "HTTP requests by caller: api_key:<name>, jwt (every token subject) or anonymous",
            ["caller"],
            registry=registry,
        ),
        rate_limited=Counter(
            "fanout_rate_limited",
            "Requests refused with 429 by a rate limit, by route",
            ["route"],
            registry=registry,
        ),
        rate_limit_errors=Counter(
            "fanout_rate_limit_storage_errors",
            "Requests let through unchecked because the rate-limit storage failed (fail open)",
            registry=registry,
        ),
    )


def metrics(app: Flask) -> Metrics:
    """The app's metrics."""
    found: Metrics = app.extensions[METRICS_KEY]
    return found


#: Methods used as label values; any other becomes "other" (clients choose the
#: method, and every label value is a new series kept forever).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _method() -> str:
    return request.method if request.method in KNOWN_METHODS else "other"


def _route() -> str:
    rule = request.url_rule
    return rule.rule if rule is not None else "unmatched"


def _begin() -> None:
    # From arrival: a def view's request may have waited for a thread.
    g.metrics_started = request_received_at()


def _end(response: Response) -> Response:
    found = metrics_of_request()
    route, method = _route(), _method()
    found.child(found.requests, route, method, str(response.status_code)).inc()
    caller = CURRENT_CALLER.get()
    # Key names are few and configured; token subjects are unbounded, so
    # they share one series (the log lines name each).
    label = "anonymous" if caller is None or caller.anonymous else caller.label
    if caller is not None and caller.kind is CallerKind.JWT:
        label = "jwt"
    found.child(found.caller_requests, label).inc()
    started = g.get("metrics_started")
    if started is not None:
        found.child(found.request_seconds, route, method).observe(time.perf_counter() - started)
    return response


def metrics_of_request() -> Metrics:
    """The current app's metrics."""
    return metrics(current_app)


def _sample_bridge(app: Flask, found: Metrics) -> None:
    state = serving_state(app)
    if state is not None:
        found.observe_bridge(state, int(app.config["SYNC_THREADS"]))


async def _sampling(app: Flask) -> AsyncIterator[None]:
    found = metrics(app)

    async def sample() -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + SAMPLE_INTERVAL_SECONDS
            await asyncio.sleep(SAMPLE_INTERVAL_SECONDS)
            found.loop_lag_seconds.observe(max(0.0, loop.time() - expected))
            # Every worker writes its own state here: with several workers a
            # scrape is answered by one of them, and reads the others' files.
            _sample_bridge(app, found)

    _sample_bridge(app, found)
    task = asyncio.get_running_loop().create_task(sample(), name="metrics-sampling")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, but it exists
    return True


def forget_dead_processes(directory: str | os.PathLike[str]) -> list[int]:
    """Remove the live-gauge files of processes that no longer exist; return their pids."""
    pids = set()
    for path in Path(directory).glob("gauge_live*_*.db"):
        written_by = path.stem.rsplit("_", 1)[-1]
        if written_by.isdigit():
            pids.add(int(written_by))
    dead = sorted(pid for pid in pids if not _alive(pid))
    for pid in dead:
        # Another worker's scrape may have removed the file first.
        with contextlib.suppress(FileNotFoundError):
            mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
    return dead


class _ActiveJobs:
    """``fanout_jobs_active`` from counts taken at scrape time (not from a worker's gauges)."""

    def __init__(self, counts: Mapping[tuple[str, str], int], kinds: Iterable[str]) -> None:
        self._counts = dict.fromkeys(
            ((kind, str(status)) for kind in kinds for status in ACTIVE_STATUSES), 0
        ) | dict(counts)

    def collect(self) -> Iterator[Metric]:
        """The family, a sample per kind and status (zero for known kinds without any)."""
        family = GaugeMetricFamily(
            "fanout_jobs_active",
            "Jobs pending or running, as the job store has them (the same from every worker)",
            labels=["kind", "status"],
        )
        for (kind, status), count in sorted(self._counts.items()):
            family.add_metric([kind, status], count)
        yield family


class _Together:
    """Several collectors as one, for one exposition."""

    def __init__(self, collectors: Sequence[Collector]) -> None:
        self._collectors = collectors

    def collect(self) -> Iterator[Metric]:
        """Every collector's metrics, in order."""
        for collector in self._collectors:
            yield from collector.collect()


async def _job_counts(store: JobStore | None) -> dict[tuple[str, str], int] | None:
    if store is None:
        return None
    try:
        async with asyncio.timeout(STORE_TIMEOUT_SECONDS):
            # Counts only: a scrape must not read (and decode) every active record.
            return await store.count_active()
    except (StoreUnavailable, TimeoutError):
        # The other metrics are still worth having; the gap shows the store's trouble.
        logger.warning("job store unavailable: fanout_jobs_active left out of this scrape")
        return None


def _render(found: Metrics, jobs: Collector | None, directory: str | None) -> bytes:
    own: Collector
    if directory:
        forget_dead_processes(directory)
        # Every live worker's samples, from the shared directory.
        own = MultiProcessCollector(None, directory)  # type: ignore[no-untyped-call]
    else:
        own = found.registry
    return generate_latest(_Together([own] if jobs is None else [own, jobs]))


async def exposition(
    app: Flask, store: JobStore | None = None, kinds: Iterable[str] = ()
) -> Response:
    """The Prometheus text for ``GET /metrics``; job counts from ``store`` when given."""
    found = metrics(app)
    _sample_bridge(app, found)  # this worker's freshest, whatever the sampling's phase
    counts = await _job_counts(store)
    jobs = None if counts is None else _ActiveJobs(counts, kinds)
    directory = os.environ.get(MULTIPROCESS_ENV)
    if directory:
        # Reading every worker's files is disk I/O: off the loop.
        body = await asyncio.to_thread(_render, found, jobs, directory)
    else:
        body = _render(found, jobs, None)
    return Response(
        body,
        mimetype=CONTENT_TYPE_LATEST.split(";")[0],
        headers={"Content-Type": CONTENT_TYPE_LATEST},
    )


def install_metrics(app: BridgeFlask) -> Metrics:
    """Create the app's metrics and count every request."""
    found = _build()
    app.extensions[METRICS_KEY] = found
    # First of all before-request hooks, wherever this is installed: a request
    # that an earlier hook answers (auth's 401) is timed and in flight too.
    app.before_request_funcs.setdefault(None, []).insert(0, _begin)
    app.after_request(_end)
    app.while_serving(_sampling)
    return found
