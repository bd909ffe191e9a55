"""Job kinds registered in code and started by ``POST /jobs/<kind>``.

Import them from ``fanout.jobs``, the public module for writing a kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fanout.jobs.registry import JobBody


class InvalidParams(ValueError):
    """A job's parameters are not what its kind accepts (answered with 400)."""


@dataclass(frozen=True)
class JobKind:
    """A kind of job: how to check its parameters and build the work."""

    name: str
    #: Check the JSON parameters (raise InvalidParams) and return the job's body.
    #: Called during the starting request, so it may use that app's resources.
    prepare: Callable[[Any], JobBody]
    #: Seconds before the job fails with a timeout (None: the configured default).
    time_limit: float | None = None
