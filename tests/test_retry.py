"""Retry policy: full-jitter backoff, the retry budget, what is retryable."""

from __future__ import annotations

import random

import pytest

from fanout.core.retry import RETRYABLE_METHODS, RetryBudget, backoff_delay, is_retryable_status


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 500.25

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(0, 0.05), (1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (10, 1.0), (5000, 1.0)],
)
def test_backoff_stays_under_the_capped_exponential(attempt: int, ceiling: float) -> None:
    rng = random.Random(1)
    delays = [backoff_delay(attempt, rng=rng) for _ in range(500)]
    assert all(0.0 <= d <= ceiling for d in delays)
    # Full jitter spreads over the whole range, not just near the ceiling.
    assert min(delays) < ceiling * 0.1
    assert max(delays) > ceiling * 0.9


def test_backoff_is_reproducible_with_a_seeded_rng() -> None:
    first = [backoff_delay(n, rng=random.Random(42)) for n in range(6)]
    second = [backoff_delay(n, rng=random.Random(42)) for n in range(6)]
    assert first == second


def test_backoff_uses_uniform_from_zero_to_the_ceiling() -> None:
    delay = backoff_delay(3, base=0.5, cap=100.0, rng=random.Random(7))
    assert delay == random.Random(7).uniform(0.0, 4.0)


def test_backoff_custom_base_and_cap() -> None:
    rng = random.Random(3)
    assert all(backoff_delay(20, base=2.0, cap=3.0, rng=rng) <= 3.0 for _ in range(100))
    assert backoff_delay(4, base=0.0, rng=rng) == 0.0
    assert backoff_delay(4, cap=0.0, rng=rng) == 0.0


def test_backoff_huge_base_does_not_overflow() -> None:
    assert 0.0 <= backoff_delay(1023, base=1e300, cap=2.0, rng=random.Random(0)) <= 2.0


@pytest.mark.parametrize(
    ("attempt", "base", "cap"), [(-1, 0.05, 1.0), (0, -0.1, 1.0), (0, 0.1, -1.0)]
)
def test_backoff_rejects_negative_inputs(attempt: int, base: float, cap: float) -> None:
    with pytest.raises(ValueError):
        backoff_delay(attempt, base=base, cap=cap, rng=random.Random(0))


def test_budget_floor_allows_min_retries_per_second_times_window() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_retries_per_second=0.5, window=10.0, clock=clock)
    assert [budget.try_spend() for _ in range(6)] == [True] * 5 + [False]


def test_budget_ratio_of_requests() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.5, min_retries_per_second=0.0, window=10.0, clock=clock)
    assert not budget.try_spend()
    for _ in range(10):
        budget.record_request()
    assert [budget.try_spend() for _ in range(6)] == [True] * 5 + [False]
    budget.record_request()
    budget.record_request()
    assert budget.try_spend()
    assert not budget.try_spend()


def test_refused_retries_are_not_counted() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.5, min_retries_per_second=0.0, clock=clock)
    for _ in range(4):
        budget.record_request()
    assert [budget.try_spend() for _ in range(10)] == [True, True] + [False] * 8
    for _ in range(2):
        budget.record_request()
    assert budget.try_spend()


def test_budget_window_slides() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.5, min_retries_per_second=0.0, window=10.0, clock=clock)
    for _ in range(4):
        budget.record_request()
    assert budget.try_spend()
    assert budget.try_spend()
    assert not budget.try_spend()
    clock.now += 5.0
    # The requests and retries are still inside the window.
    assert not budget.try_spend()
    clock.now += 5.0
    # Ten seconds later both have left the window: no requests, no retries.
    assert not budget.try_spend()
    for _ in range(2):
        budget.record_request()
    assert budget.try_spend()


def test_retries_leave_the_window_before_requests_that_came_later() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=1.0, min_retries_per_second=0.0, window=3.0, clock=clock)
    budget.record_request()
    assert budget.try_spend()
    clock.now += 1.0
    budget.record_request()
    assert budget.try_spend()
    assert not budget.try_spend()
    clock.now += 2.0
    # The first second's request and retry left; the second second's pair did not.
    assert not budget.try_spend()
    budget.record_request()
    assert budget.try_spend()


def test_budget_memory_is_bounded() -> None:
    clock = FakeClock()
    budget = RetryBudget(window=10.0, clock=clock)
    for _ in range(10_000):
        clock.now += 0.37
        budget.record_request()
        budget.try_spend()
    assert len(budget._buckets) <= 10


def test_budget_default_clock() -> None:
    budget = RetryBudget(ratio=0.0, min_retries_per_second=0.1, window=10.0)
    assert budget.try_spend()
    assert not budget.try_spend()


@pytest.mark.parametrize(
    ("ratio", "floor", "window"), [(-0.1, 1.0, 1.0), (0.1, -1.0, 1.0), (0.1, 1.0, 0.0)]
)
def test_budget_rejects_bad_settings(ratio: float, floor: float, window: float) -> None:
    with pytest.raises(ValueError):
        RetryBudget(ratio, floor, window)


def test_retryable_methods() -> None:
    assert frozenset({"GET", "HEAD"}) == RETRYABLE_METHODS
    assert "POST" not in RETRYABLE_METHODS


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (429, True),
        (502, True),
        (503, True),
        (504, True),
        (200, False),
        (304, False),
        (400, False),
        (404, False),
        (408, False),
        (500, False),
        (501, False),
        (505, False),
    ],
)
def test_retryable_statuses(status: int, retryable: bool) -> None:
    assert is_retryable_status(status) is retryable
