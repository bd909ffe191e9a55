"""``GET /jobs/ui``: a page of recent jobs with live progress bars and cancel buttons."""

from __future__ import annotations

from importlib.resources import files

from flask import Blueprint, Response

blueprint = Blueprint("jobs_ui", __name__)

#: The page is static: read once, when the module is imported.
PAGE = (files("handlers") / "jobs_ui.html").read_bytes()


@blueprint.get("/jobs/ui")
def jobs_page() -> Response:
    """The jobs page (plain HTML; fed by /jobs and /jobs/<id>/events)."""
    return Response(PAGE, mimetype="text/html", headers={"Cache-Control": "no-cache"})
