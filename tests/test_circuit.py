"""The circuit breaker's state machine (a fake clock), and its trial in the upstream client."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from clients.errors import BlockedDestination, CircuitOpen, UpstreamTimeout
from clients.safety import session_guard
from clients.session import SessionLimits, open_session
from clients.upstream_client import UpstreamClient
from fanout.core.circuit import (
    CLIENT_BODY,
    CLIENT_PATH,
    GATEWAY_CALL,
    BlameRule,
    CircuitBreaker,
    CircuitState,
    FailureKind,
)
from fanout.core.config import CircuitBreakerConfig, UpstreamConfig
from tests.fault_upstream import FaultUpstream


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


def test_an_abandoned_trial_lets_the_next_call_be_the_trial(clock: FakeClock) -> None:
    breaker = opened(clock)
    clock.now += 30.0
    assert breaker.allow()
    assert not breaker.allow()
    breaker.abandon_trial()  # its outcome will never be recorded
    assert state(breaker) is CircuitState.HALF_OPEN
    assert breaker.allow()  # at once, not after another reset_after
    assert not breaker.allow()
    breaker.record_failure()
    assert state(breaker) is CircuitState.OPEN


def test_abandoning_after_the_outcome_was_recorded_changes_nothing(clock: FakeClock) -> None:
    breaker = opened(clock)
    clock.now += 30.0
    assert breaker.allow()
    breaker.record_failure()
    breaker.abandon_trial()
    assert state(breaker) is CircuitState.OPEN
    assert not breaker.allow()
    clock.now += 30.0
    assert breaker.allow()
    breaker.record_success()
    breaker.abandon_trial()
    assert state(breaker) is CircuitState.CLOSED
    breaker.record_failure()
    breaker.record_failure()
    assert state(breaker) is CircuitState.CLOSED  # the count started again, untouched


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


@pytest.mark.parametrize(
    ("rule", "counted", "error_answers"),
    [
        (GATEWAY_CALL, set(FailureKind), True),
        (CLIENT_PATH, {FailureKind.CONNECT, FailureKind.TIMEOUT, FailureKind.BROKEN}, False),
        (CLIENT_BODY, {FailureKind.CONNECT}, False),
    ],
    ids=["gateway call", "client path", "client body"],
)
def test_what_each_blame_rule_holds_against_the_upstream(
    rule: BlameRule, counted: set[FailureKind], error_answers: bool
) -> None:
    assert {kind for kind in FailureKind if rule.blames(kind)} == counted
    assert not rule.blames(None)  # a try cut short by its caller's deadline
    assert rule.error_answers is error_answers


# --- the half-open trial in the upstream client, against a real upstream ------

#: Long enough that a lost trial would still block the next call on a loaded machine.
RESET_AFTER = 1.0


@pytest.fixture
async def client(fault: FaultUpstream) -> AsyncIterator[UpstreamClient]:
    """A client of the fault upstream: one connection, circuit open after one failure."""
    config = UpstreamConfig(
        name="api",
        base_url=fault.url,
        internal=True,
        timeout=5.0,
        max_connections=1,
        follow_redirects=1,
        circuit_breaker=CircuitBreakerConfig(failures=1, reset_after=RESET_AFTER),
    )
    guard = session_guard(["127.0.0.1"])
    session = open_session(SessionLimits(), guard)
    try:
        yield UpstreamClient(config, session, rng=random.Random(1))
    finally:
        await session.close()
        await guard.resolver.close()


def _soon(seconds: float) -> float:
    return asyncio.get_running_loop().time() + seconds


async def _cut_by_the_deadline(client: UpstreamClient) -> None:
    await client.fetch("GET", "/never", deadline=_soon(0.1))


async def _blocked_redirect(client: UpstreamClient) -> None:
    await client.fetch("GET", "/redirect?to=http://192.0.2.1/x", deadline=_soon(5.0))


async def _blocked_path(client: UpstreamClient) -> None:
    await client.fetch("GET", "//192.0.2.1/x", deadline=_soon(5.0))


async def _slot_wait(client: UpstreamClient) -> None:
    await client.fetch("GET", "/json", deadline=_soon(0.1))


async def _cancelled(client: UpstreamClient) -> None:
    call = asyncio.create_task(client.fetch("GET", "/never", deadline=_soon(5.0)))
    await asyncio.sleep(0.05)
    call.cancel()
    await call


async def _streamed_blocked_path(client: UpstreamClient) -> None:
    await client.open_stream("GET", "//192.0.2.1/x", headers={}, body=None)


TRIALS: dict[str, tuple[Callable[[UpstreamClient], Awaitable[None]], type[BaseException]]] = {
    "cut by the caller's deadline": (_cut_by_the_deadline, UpstreamTimeout),
    "slot wait timed out": (_slot_wait, UpstreamTimeout),
    "redirect to another origin": (_blocked_redirect, BlockedDestination),
    "path leaving the upstream": (_blocked_path, BlockedDestination),
    "cancelled": (_cancelled, asyncio.CancelledError),
    "proxied, path leaving the upstream": (_streamed_blocked_path, BlockedDestination),
}


@pytest.mark.parametrize("how", list(TRIALS))
async def test_a_trial_that_tells_nothing_of_the_upstream_does_not_keep_it_shut(
    client: UpstreamClient, fault: FaultUpstream, how: str
) -> None:
    lose_trial, raised = TRIALS[how]
    # A call started while closed holds the only connection, for the slot case.
    holder = asyncio.create_task(client.fetch("GET", "/never?holder=1", deadline=_soon(30.0)))
    for _ in range(500):
        if fault.in_flight:
            break
        await asyncio.sleep(0.01)
    client.breaker.record_failure()  # failures = 1: open
    assert state(client.breaker) is CircuitState.OPEN
    if how != "slot wait timed out":
        holder.cancel()
        await asyncio.gather(holder, return_exceptions=True)
    await asyncio.sleep(RESET_AFTER + 0.05)
    assert state(client.breaker) is CircuitState.HALF_OPEN
    with pytest.raises(raised):
        await lose_trial(client)  # the trial: it fails, its outcome unrecorded
    holder.cancel()
    await asyncio.gather(holder, return_exceptions=True)
    # Without the trial handed back, this would fail fast (CircuitOpen) until
    # RESET_AFTER after the lost trial began.
    try:
        reply = await client.fetch("GET", "/json", deadline=_soon(5.0))
    except CircuitOpen as exc:
        pytest.fail(f"the lost trial kept the circuit shut: {exc}")
    assert reply.status == 200
    assert state(client.breaker) is CircuitState.CLOSED


async def test_a_failed_trial_still_reopens_the_circuit(
    client: UpstreamClient, fault: FaultUpstream
) -> None:
    client.breaker.record_failure()
    await asyncio.sleep(RESET_AFTER + 0.05)
    reply = await client.fetch("GET", "/storm", deadline=_soon(5.0))
    assert reply.status == 503
    assert state(client.breaker) is CircuitState.OPEN
    with pytest.raises(CircuitOpen):
        await client.fetch("GET", "/json", deadline=_soon(5.0))
    assert fault.hits["/json"] == 0
    with pytest.raises(CircuitOpen):
        await client.open_stream("GET", "/json", headers={}, body=None)
