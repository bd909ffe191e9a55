"""A circuit breaker for one upstream: fail fast while it keeps failing."""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum


class CircuitState(StrEnum):
    """The state of a circuit breaker; its value is what metrics and JSON show."""

    #: Calls go through; consecutive failures are counted.
    CLOSED = "closed"
    #: Calls fail fast without reaching the upstream until ``reset_after`` has passed.
    OPEN = "open"
    #: One trial call is let through; its outcome closes or reopens the circuit.
    HALF_OPEN = "half_open"


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
