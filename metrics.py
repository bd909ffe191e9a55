"""Prometheus metrics: requests, upstream calls, jobs, circuits, the bridge and the loop.

One registry per app. With several Hypercorn workers, set
``PROMETHEUS_MULTIPROC_DIR`` (``fanout`` does) before the workers start:
every worker then writes its samples there and ``/metrics`` on any worker
reports them all.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
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
from prometheus_client.multiprocess import MultiProcessCollector

from bridge import BridgeFlask, serving_state
from core.circuit import CircuitState
from jobs.model import JobStatus

logger = logging.getLogger(__name__)

METRICS_KEY = "fanout.metrics"
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Circuit states as gauge values.
CIRCUIT_VALUES = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}
LAG_INTERVAL_SECONDS = 0.25


@dataclass
class Metrics:
    """The app's metric families."""

    registry: CollectorRegistry
    requests: Counter
    request_seconds: Histogram
    in_flight: Gauge
    upstream_calls: Counter
    upstream_seconds: Histogram
    jobs_finished: Counter
    jobs_active: Gauge
    circuit_state: Gauge
    sync_views_running: Gauge
    loop_lag_seconds: Histogram
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

    def observe_circuit(self, upstream: str, state: CircuitState) -> None:
        """Record an upstream's circuit state."""
        self.circuit_state.labels(upstream).set(CIRCUIT_VALUES[state])

    def observe_job(self, kind: str, before: JobStatus | None, after: JobStatus) -> None:
        """Follow a job from one status to the next."""
        if before is not None and not before.final:
            self.jobs_active.labels(kind, str(before)).dec()
        if after.final:
            self.jobs_finished.labels(kind, str(after)).inc()
        else:
            self.jobs_active.labels(kind, str(after)).inc()


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
        jobs_finished=Counter(
            "fanout_jobs_finished",
            "Jobs that reached a final status",
            ["kind", "status"],
            registry=registry,
        ),
        jobs_active=Gauge(
            "fanout_jobs_active",
            "Jobs pending or running",
            ["kind", "status"],
            registry=registry,
            multiprocess_mode="livesum",
        ),
        circuit_state=Gauge(
            "fanout_circuit_state",
            "Upstream circuit: 0 closed, 1 half-open, 2 open",
            ["upstream"],
            registry=registry,
            multiprocess_mode="max",
        ),
        sync_views_running=Gauge(
            "fanout_sync_views_running",
            "Plain def views running in the thread pool",
            registry=registry,
            multiprocess_mode="livesum",
        ),
        loop_lag_seconds=Histogram(
            "fanout_event_loop_lag_seconds",
            "How late a callback scheduled on the event loop runs (blocking code shows here)",
            registry=registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
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
    g.metrics_started = time.perf_counter()
    metrics_of_request().in_flight.inc()


def _end(response: Response) -> Response:
    found = metrics_of_request()
    route, method = _route(), _method()
    found.child(found.requests, route, method, str(response.status_code)).inc()
    started = g.get("metrics_started")
    if started is not None:
        found.child(found.request_seconds, route, method).observe(time.perf_counter() - started)
    return response


def _leave(_error: BaseException | None) -> None:
    if g.get("metrics_started") is not None:
        metrics_of_request().in_flight.dec()


def metrics_of_request() -> Metrics:
    """The current app's metrics."""
    return metrics(current_app)


async def _loop_lag(app: Flask) -> AsyncIterator[None]:
    found = metrics(app)

    async def measure() -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + LAG_INTERVAL_SECONDS
            await asyncio.sleep(LAG_INTERVAL_SECONDS)
            found.loop_lag_seconds.observe(max(0.0, loop.time() - expected))

    task = asyncio.get_running_loop().create_task(measure(), name="loop-lag")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def exposition(app: Flask) -> Response:
    """The Prometheus text for ``GET /metrics``."""
    found = metrics(app)
    state = serving_state(app)
    if state is not None:
        found.sync_views_running.set(state.sync_running)
    if os.environ.get(MULTIPROCESS_ENV):
        # Every worker's samples, from the shared directory.
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        body = generate_latest(registry)
    else:
        body = generate_latest(found.registry)
    return Response(
        body,
        mimetype=CONTENT_TYPE_LATEST.split(";")[0],
        headers={"Content-Type": CONTENT_TYPE_LATEST},
    )


def install_metrics(app: BridgeFlask) -> Metrics:
    """Create the app's metrics and count every request."""
    found = _build()
    app.extensions[METRICS_KEY] = found
    app.before_request(_begin)
    app.after_request(_end)
    app.teardown_request(_leave)
    app.while_serving(_loop_lag)
    return found
