"""Crash-loop back-off: pure functions, table-driven plus properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gitorch.decide.backoff import (
    DEFAULT_CRASH_LOOP,
    BackoffState,
    CrashLoop,
    describe,
    ready_at,
    record_restart,
    remaining,
    reset_if_stable,
)


@pytest.mark.parametrize(
    ("restarts", "delay"),
    [(-1, 0.0), (0, 0.0), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (6, 32.0), (7, 60.0),
     (10_000, 60.0)],
)  # fmt: skip
def test_default_delays(restarts: int, delay: float) -> None:
    assert DEFAULT_CRASH_LOOP.next_delay(restarts) == delay


@pytest.mark.parametrize(
    ("policy", "restarts", "delay"),
    [
        (CrashLoop(base=10, factor=2, cap=300), 1, 10.0),  # Kubernetes' own numbers
        (CrashLoop(base=10, factor=2, cap=300), 5, 160.0),
        (CrashLoop(base=10, factor=2, cap=300), 6, 300.0),
        (CrashLoop(base=0.5, factor=3, cap=10), 3, 4.5),
        (CrashLoop(base=5, factor=1, cap=5), 99, 5.0),  # a constant back-off
        (CrashLoop(base=1, factor=1e6, cap=60), 10**9, 60.0),  # no overflow
    ],
)
def test_other_policies(policy: CrashLoop, restarts: int, delay: float) -> None:
    assert policy.next_delay(restarts) == delay


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base": 0},
        {"base": -1},
        {"factor": 0.5},
        {"cap": 0.5},  # below base
        {"cap": math.inf},
        {"reset_after": 0},
        {"base": math.nan},
    ],
)
def test_policy_refuses_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CrashLoop(**kwargs)


def test_a_crash_loop_step_by_step() -> None:
    state = BackoffState()
    assert ready_at(state) == -math.inf and describe(state, now=0.0) == "0 restarts"

    state = record_restart(state, now=100.0, exit_code=3)
    assert state == BackoffState(restarts=1, last_restart_at=100.0, last_exit_code=3)
    assert ready_at(state) == 101.0

    for now in (101.0, 103.0, 107.0):  # it crashes again as soon as it is allowed back
        state = record_restart(state, now=now, exit_code=3)
    assert state.restarts == 4 and ready_at(state) == 115.0
    assert remaining(state, now=110.0) == 5.0
    assert describe(state, now=110.0) == "back-off 8s, 4 restarts"
    assert describe(state, now=115.0) == "4 restarts"  # the wait is over
    assert remaining(state, now=200.0) == 0.0

    # recreated at 115, killed for failing liveness (no exit code), recreated once more
    state = record_restart(state, now=130.0, exit_code=None)
    assert state.last_exit_code is None and ready_at(state) == 146.0
    assert describe(state, now=131.0) == "back-off 16s, 5 restarts"
    assert describe(record_restart(BackoffState(), 0.0, 1), 0.5) == "back-off 1s, 1 restart"


@pytest.mark.parametrize(
    ("running_since", "now", "reset"),
    [
        (None, 1_000.0, False),  # not running: nothing to judge
        (146.0, 205.9, False),  # up 59.9 s
        (146.0, 206.0, True),  # up 60 s
        (120.0, 1_000.0, False),  # started before the last restart: a stale observation
    ],
)
def test_reset_if_stable(running_since: float | None, now: float, reset: bool) -> None:
    state = BackoffState(restarts=5, last_restart_at=130.0, last_exit_code=137)
    after = reset_if_stable(state, running_since, now)
    if reset:
        assert after == BackoffState(restarts=0, last_restart_at=None, last_exit_code=137)
        assert ready_at(after) == -math.inf
    else:
        assert after is state


def test_reset_follows_the_policy() -> None:
    quick = CrashLoop(reset_after=5.0)
    state = BackoffState(restarts=2, last_restart_at=10.0)
    assert reset_if_stable(state, 11.0, 16.0, quick).restarts == 0
    assert reset_if_stable(state, 11.0, 16.0).restarts == 2  # default: 60 s


policies = st.builds(
    CrashLoop,
    base=st.floats(0.01, 100),
    factor=st.floats(1, 10),
    cap=st.floats(100, 10_000),
    reset_after=st.floats(1, 1_000),
)


@given(policies, st.integers(0, 10_000))
def test_delays_grow_monotonically_up_to_the_cap(policy: CrashLoop, restarts: int) -> None:
    delay, following = policy.next_delay(restarts), policy.next_delay(restarts + 1)
    assert 0 <= delay <= following <= policy.cap
    if restarts >= 1:
        assert delay >= min(policy.base, policy.cap)


@given(policies, st.floats(0, 1e9), st.lists(st.floats(0, 1e4), min_size=1, max_size=30))
def test_each_restart_waits_at_least_as_long(
    policy: CrashLoop, start: float, gaps: list[float]
) -> None:
    state, now, previous_wait = BackoffState(), start, 0.0
    for gap in gaps:
        now += gap
        state = record_restart(state, now, exit_code=1)
        wait = policy.next_delay(state.restarts)
        assert ready_at(state, policy) == now + wait
        assert previous_wait <= wait <= policy.cap
        previous_wait = wait
    assert state.restarts == len(gaps)
    # (+1: at 1e9 s, "now + reset_after - now" may round below reset_after)
    assert ready_at(reset_if_stable(state, now, now + policy.reset_after + 1, policy)) == -math.inf
