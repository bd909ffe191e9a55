"""What an aggregate endpoint answers, given its backends' results (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from fanout.core.merge import Part, merge_parts


@dataclass(frozen=True)
class BackendFailure:
    """A backend that gave no usable answer, as it is reported to the client."""

    label: str  # the backend's group, or its upstream's name
    status: int  # 502, 503 (circuit open) or 504 (deadline)
    title: str
    detail: str
    required: bool


@dataclass(frozen=True)
class Outcome:
    """The endpoint's answer: status, JSON body, and whether every backend answered."""

    status: int
    body: dict[str, Any]
    completed: bool


def _describe(failure: BackendFailure) -> dict[str, Any]:
    return {"status": failure.status, "title": failure.title, "detail": failure.detail}


def decide(
    parts: Sequence[Part], failures: Sequence[BackendFailure], *, on_conflict: str | None = None
) -> Outcome:
    """Merge what succeeded; fail the endpoint if a required backend or every backend failed.

    ``on_conflict``: the endpoint's rule for two parts writing one key (merge_parts).
    A failed endpoint answers 504 when each failure that made it fail was a
    deadline, else 502, as problem details listing every failed backend.
    """
    if not failures:
        return Outcome(200, merge_parts(parts, on_conflict), completed=True)
    fatal = [f for f in failures if f.required]
    if fatal or not parts:
        blamed = fatal or list(failures)
        status = 504 if all(f.status == 504 for f in blamed) else 502
        which = "required backend" if fatal else "every backend"
        names = ", ".join(f.label for f in blamed)
        body: dict[str, Any] = {
            "type": "about:blank",
            "title": HTTPStatus(status).phrase,
            "status": status,
            "detail": f"{which} failed: {names}",
            "errors": {f.label: _describe(f) for f in failures},
        }
        return Outcome(status, body, completed=False)
    merged = merge_parts(parts, on_conflict)
    merged["_errors"] = {f.label: _describe(f) for f in failures}
    return Outcome(200, merged, completed=False)
