"""Operations routes: Prometheus metrics."""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from fanout.process.metrics import exposition
from handlers.resources import JOB_REGISTRY_KEY, job_kinds

blueprint = Blueprint("ops", __name__)


@blueprint.get("/metrics")
async def prometheus_metrics() -> Response:
    """Metrics in the Prometheus text format (every worker's, in multiprocess mode)."""
    # An async view: a scrape takes no thread of the pool whose use it reports.
    registry = current_app.extensions.get(JOB_REGISTRY_KEY)
    store = registry.store if registry is not None else None
    return await exposition(current_app, store, job_kinds())
