"""Operations routes: Prometheus metrics."""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from metrics import exposition

blueprint = Blueprint("ops", __name__)


@blueprint.get("/metrics")
def prometheus_metrics() -> Response:
    """Metrics in the Prometheus text format (every worker's, in multiprocess mode)."""
    return exposition(current_app)
