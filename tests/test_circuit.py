"""The circuit breaker's state machine, driven by a fake clock."""

from __future__ import annotations

import json

import pytest

from core.circuit import CircuitBreaker, CircuitState


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def state(breaker: CircuitBreaker) -> CircuitState:
    # A call, not the property, so mypy does not narrow the state across calls.
    return breaker.state


def opened(clock: FakeClock, failures: int = 3, reset_after: float = 30.0) -> CircuitBreaker:
    breaker = CircuitBreaker(failures, reset_after, clock=clock)
    for _ in range(failures):
        assert breaker.allow()
        breaker.record_failure()
    assert state(breaker) is CircuitState.OPEN
    return breaker


def test_state_values() -> None:
    assert [s.value for s in CircuitState] == ["closed", "open", "half_open"]
    assert CircuitState("half_open") is CircuitState.HALF_OPEN
    assert isinstance(CircuitState.OPEN, str)
    assert json.dumps({"state": CircuitState.HALF_OPEN}) == '{"state": "half_open"}'
    assert f"{CircuitState.OPEN}" == "open"


def test_starts_closed_and_allows(clock: FakeClock) -> None:
    breaker = CircuitBreaker(3, 30.0, clock=clock)
    assert state(breaker) is CircuitState.CLOSED
    assert all(breaker.allow() for _ in range(10))
    assert breaker.retry_after() == 0.0


def test_opens_after_consecutive_failures(clock: FakeClock) -> None:
    breaker = CircuitBreaker(3, 30.0, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    assert state(breaker) is CircuitState.CLOSED
    breaker.record_failure()
    assert state(breaker) is CircuitState.OPEN
    assert not breaker.allow()


def test_a_success_resets_the_consecutive_count(clock: FakeClock) -> None:
    breaker = CircuitBreaker(3, 30.0, clock=clock)
    for _ in range(5):
        breaker.record_failure()
        breaker.record_failure()
        breaker.record_success()
    assert state(breaker) is CircuitState.CLOSED
    breaker.record_failure()
    breaker.record_failure()
    assert state(breaker) is CircuitState.CLOSED


def test_threshold_of_one(clock: FakeClock) -> None:
    breaker = CircuitBreaker(1, 5.0, clock=clock)
    breaker.record_failure()
    assert state(breaker) is CircuitState.OPEN


def test_retry_after_counts_down(clock: FakeClock) -> None:
    breaker = opened(clock)
    assert breaker.retry_after() == pytest.approx(30.0)
    clock.now += 12.5
    assert breaker.retry_after() == pytest.approx(17.5)
    assert state(breaker) is CircuitState.OPEN
    clock.now += 17.5
    assert breaker.retry_after() == 0.0
    assert state(breaker) is CircuitState.HALF_OPEN


def test_half_open_allows_exactly_one_trial(clock: FakeClock) -> None:
    breaker = opened(clock)
    clock.now += 30.0
    assert state(breaker) is CircuitState.HALF_OPEN
    assert breaker.allow()
    assert not breaker.allow()
    assert not breaker.allow()
    assert state(breaker) is CircuitState.HALF_OPEN
    assert breaker.retry_after() == 0.0


def test_successful_trial_closes(clock: FakeClock) -> None:
    breaker = opened(clock, failures=2)
    clock.now += 30.0
    assert breaker.allow()
    breaker.record_success()
    assert state(breaker) is CircuitState.CLOSED
    assert breaker.allow()
    assert breaker.allow()
    # The failure count starts again from zero.
    breaker.record_failure()
    assert state(breaker) is CircuitState.CLOSED
    breaker.record_failure()
    assert state(breaker) is CircuitState.OPEN


def test_failed_trial_reopens_with_a_fresh_timeout(clock: FakeClock) -> None:
    breaker = opened(clock)
    clock.now += 45.0
    assert breaker.allow()
    clock.now += 2.0
    breaker.record_failure()
    assert state(breaker) is CircuitState.OPEN
    assert not breaker.allow()
    assert breaker.retry_after() == pytest.approx(30.0)
    clock.now += 29.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow()


def test_outcomes_while_open_are_ignored(clock: FakeClock) -> None:
    breaker = opened(clock)
    clock.now += 10.0
    # Calls started before the circuit opened report late.
    breaker.record_success()
    breaker.record_failure()
    assert state(breaker) is CircuitState.OPEN
    assert breaker.retry_after() == pytest.approx(20.0)


def test_outcomes_while_half_open_without_a_trial_are_ignored(clock: FakeClock) -> None:
    breaker = opened(clock)
    clock.now += 31.0
    breaker.record_success()
    assert state(breaker) is CircuitState.HALF_OPEN
    breaker.record_failure()
    assert state(breaker) is CircuitState.HALF_OPEN
    assert breaker.allow()


def test_a_lost_trial_expires_after_reset_after(clock: FakeClock) -> None:
    breaker = opened(clock)
    clock.now += 30.0
    assert breaker.allow()
    clock.now += 29.0
    assert not breaker.allow()
    clock.now += 1.0
    # The first trial never reported (its caller was cancelled): let another one go.
    assert breaker.allow()
    assert not breaker.allow()
    breaker.record_success()
    assert state(breaker) is CircuitState.CLOSED


def test_zero_reset_after_is_half_open_at_once(clock: FakeClock) -> None:
    breaker = CircuitBreaker(1, 0.0, clock=clock)
    breaker.record_failure()
    assert state(breaker) is CircuitState.HALF_OPEN
    assert breaker.allow()
    breaker.record_success()
    assert state(breaker) is CircuitState.CLOSED


@pytest.mark.parametrize(("failures", "reset_after"), [(0, 1.0), (-1, 1.0), (1, -0.5)])
def test_invalid_settings(failures: int, reset_after: float) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failures, reset_after)


def test_default_clock_is_monotonic() -> None:
    breaker = CircuitBreaker(1, 3600.0)
    breaker.record_failure()
    assert 3599.0 < breaker.retry_after() <= 3600.0
