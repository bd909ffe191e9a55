"""A circuit breaker for one upstream: fail fast while it keeps failing."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class CircuitState(StrEnum):
    """The state of a circuit breaker; its value is what metrics and JSON show."""

    #: Calls go through; consecutive failures are counted.
    CLOSED = "closed"
    #: Calls fail fast without reaching the upstream until ``reset_after`` has passed.
    OPEN = "open"
    #: One trial call is let through; its outcome closes or reopens the circuit.
    HALF_OPEN = "half_open"


class FailureKind(StrEnum):
    """Why a call to an upstream got no usable answer, as far as its breaker cares."""

    #: No connection was made: refused, unresolvable name, TLS failure, connect timeout.
    CONNECT = "connect"
    #: Connected, but no answer within the upstream's own ``timeout``.
    TIMEOUT = "timeout"
    #: The connection broke (reset, closed) before a complete answer.
    BROKEN = "broken"
    #: An answer that is not valid HTTP, or a body that cannot be framed or decoded.
    MALFORMED = "malformed"


@dataclass(frozen=True)
class BlameRule:
    """Which outcomes of a call count against its upstream's circuit breaker.

    In the spirit of Envoy's outlier detection with
    ``split_external_local_origin_errors``: what the upstream answers to a
    request the gateway's client shaped (its path, its body) is evidence about
    that request, not about whether the upstream is up.
    """

    #: Failures held against the upstream.
    failures: frozenset[FailureKind]
    #: Whether a 5xx answer, or a body that cannot be used (too large, too
    #: many redirects), is held against it.
    error_answers: bool

    def blames(self, kind: FailureKind | None) -> bool:
        """Whether a failure of this kind counts (None: the call was cut short by its caller)."""
        return kind is not None and kind in self.failures


#: A call whose path and body the gateway chose (aggregate endpoints, jobs of
#: endpoints): every failure and every 5xx answer counts.
GATEWAY_CALL = BlameRule(frozenset(FailureKind), error_answers=True)
#: A call to a path the client chose (a proxied request without a body, a
#: batch job's items): only the connection's failures count, and the
#: upstream's own timeout; its answer's status and payload never do.
CLIENT_PATH = BlameRule(
    frozenset({FailureKind.CONNECT, FailureKind.TIMEOUT, FailureKind.BROKEN}), error_answers=False
)
#: A proxied call streaming the client's body up: the body's length, pace and
#: framing are the client's, so a timeout or a broken connection may be its
#: doing; only failing to connect counts.
CLIENT_BODY = BlameRule(frozenset({FailureKind.CONNECT}), error_answers=False)


class CircuitBreaker:
    """Open after ``failures`` consecutive failures; try again after ``reset_after`` seconds.

    Only one trial call runs at a time while half-open. Outcomes recorded while open, or
    while half-open with no trial under way, come from calls started before the circuit
    opened and are ignored. A trial whose outcome says nothing of the upstream (it was
    cancelled, cut short by its caller's deadline, refused before connecting) is handed back
    with ``abandon_trial``, so the next call is the trial; one never reported at all is
    presumed lost after ``reset_after``, rather than keeping the circuit shut for good.
    """

    def __init__(
        self,
        failures: int,
        reset_after: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create a closed breaker."""
        if failures < 1:
            raise ValueError(f"failures must be at least 1, got {failures}")
        if reset_after < 0:
            raise ValueError(f"reset_after must be >= 0 seconds, got {reset_after}")
        self._threshold = failures
        self._reset_after = reset_after
        self._clock = clock
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        # When the half-open trial was let through, or None when no trial is under way.
        self._trial_started: float | None = None

    @property
    def state(self) -> CircuitState:
        """Return the current state; an open circuit reports half-open once it may retry."""
        if self._state is CircuitState.OPEN and self._reset_due():
            return CircuitState.HALF_OPEN
        return self._state

    def allow(self) -> bool:
        """Return whether a call may go to the upstream now (and count it as the trial)."""
        state = self.state
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.OPEN:
            return False
        now = self._clock()
        if self._trial_started is not None and now - self._trial_started < self._reset_after:
            return False
        self._state = CircuitState.HALF_OPEN
        self._trial_started = now
        return True

    def record_success(self) -> None:
        """Record a successful call: the trial closes the circuit; closed, reset the count."""
        if self._state is CircuitState.CLOSED:
            self._failures = 0
        elif self._trial_started is not None:
            self._state = CircuitState.CLOSED
            self._failures = 0
            self._trial_started = None

    def record_failure(self) -> None:
        """Record a failed call: count it while closed; a failed trial reopens the circuit."""
        if self._state is CircuitState.CLOSED:
            self._failures += 1
            if self._failures >= self._threshold:
                self._open()
        elif self._trial_started is not None:
            self._open()

    def abandon_trial(self) -> None:
        """Give back the half-open trial's place: its outcome will never be recorded.

        The next call becomes the trial, instead of failing fast until the lost trial
        expires. A no-op once the trial's outcome was recorded (closed or open again).
        """
        if self._state is CircuitState.HALF_OPEN:
            self._trial_started = None

    def retry_after(self) -> float:
        """Return the seconds until the circuit turns half-open (0 when it is not open)."""
        if self._state is not CircuitState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self._reset_after - self._clock())

    def _reset_due(self) -> bool:
        return self._clock() - self._opened_at >= self._reset_after

    def _open(self) -> None:
        self._state = CircuitState.OPEN
        self._opened_at = self._clock()
        self._trial_started = None
