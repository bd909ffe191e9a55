"""Several hosts of one upstream: least-outstanding choice and passive outlier ejection (pure).

As Envoy's least-request balancer and ``consecutive_5xx`` outlier detection:
a host that fails ``consecutive_failures`` calls in a row is skipped for
``base_ejection_seconds`` times the number of times it was ejected (capped
at ``max_ejection_seconds``); each success takes one off that multiplier.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fanout.core.config import OutlierDetectionConfig


@dataclass
class Host:
    """One host of an upstream and what the pool knows of it."""

    base_url: str
    #: Calls sent and not yet finished.
    outstanding: int = 0
    failures_in_a_row: int = 0
    #: How many times it was ejected (less one per success since): the ejection's multiplier.
    ejections: int = 0
    #: Clock time until which it is skipped (0: in service).
    ejected_until: float = 0.0


class HostPool:
    """The hosts of one upstream: which to call next, and which are out."""

    def __init__(
        self,
        urls: Sequence[str],
        rule: OutlierDetectionConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hosts = [Host(url) for url in urls]
        self._rule = rule
        self._clock = clock
        #: Where ties start: successive equal choices take turns.
        self._turn = 0

    def pick(self) -> Host:
        """The host to call: the in-service one with the fewest calls outstanding.

        When every host is out, the one whose ejection ends first (the
        upstream's circuit breaker is what fails calls fast then).
        """
        now = self._clock()
        serving = [host for host in self.hosts if host.ejected_until <= now]
        self._turn = (self._turn + 1) % len(self.hosts)
        if not serving:
            return min(self.hosts, key=lambda host: host.ejected_until)
        turn = self._turn
        count = len(self.hosts)
        return min(
            serving,
            key=lambda host: (host.outstanding, (self.hosts.index(host) - turn) % count),
        )

    def succeeded(self, host: Host) -> None:
        """A call to ``host`` was answered."""
        host.failures_in_a_row = 0
        host.ejections = max(0, host.ejections - 1)

    def failed(self, host: Host) -> bool:
        """A call to ``host`` failed; True if that ejected it."""
        host.failures_in_a_row += 1
        if host.failures_in_a_row < self._rule.consecutive_failures:
            return False
        host.failures_in_a_row = 0
        host.ejections += 1
        seconds = min(
            self._rule.base_ejection_seconds * host.ejections, self._rule.max_ejection_seconds
        )
        host.ejected_until = self._clock() + seconds
        return True

    def all_out(self) -> bool:
        """Whether every host is ejected now."""
        now = self._clock()
        return all(host.ejected_until > now for host in self.hosts)

    def ejected(self, host: Host) -> bool:
        """Whether ``host`` is skipped now."""
        return host.ejected_until > self._clock()
