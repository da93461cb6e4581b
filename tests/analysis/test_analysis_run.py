"""AnalysisRun: count measurements every interval; failureLimit; errors; inconclusive."""

from __future__ import annotations

import pytest
from analysis_helpers import E, F, N, S, Script
from hypothesis import given
from hypothesis import strategies as st

from gitorch.analysis.evaluate import MeasurementPhase
from gitorch.analysis.run import CONSECUTIVE_ERROR_LIMIT, AnalysisRun, RunPhase, advance, start
from gitorch.manifests.model import Analysis


def run_to_end(spec: Analysis, phases: list[MeasurementPhase]) -> tuple[AnalysisRun, Script]:
    script = Script(phases)
    run = start(spec, 0.0)
    now = 0.0
    for _ in range(100):
        due = run.next_due()
        if due is None:
            break
        now = due
        run = advance(run, now, script)
    return run, script


@pytest.mark.parametrize(
    ("spec", "phases", "end", "measured"),
    [
        (Analysis(count=3), [S, S, S], RunPhase.SUCCESSFUL, 3),
        (Analysis(count=3), [S, F], RunPhase.FAILED, 2),  # fails at once, no third
        (Analysis(count=3, failure_limit=1), [F, S, S], RunPhase.SUCCESSFUL, 3),
        (Analysis(count=3, failure_limit=1), [F, S, F], RunPhase.FAILED, 3),
        (Analysis(count=3), [S, N, S], RunPhase.INCONCLUSIVE, 3),
        (Analysis(count=3), [N, N, F], RunPhase.FAILED, 3),
        (Analysis(count=2), [E, S, S], RunPhase.SUCCESSFUL, 3),  # an error is retried
        (Analysis(count=2), [E, E, S, E, S], RunPhase.SUCCESSFUL, 5),  # streaks reset
        (Analysis(count=2), [S] + [E] * CONSECUTIVE_ERROR_LIMIT, RunPhase.FAILED, 4),
        (
            Analysis(count=2, failure_limit=1),
            [E] * CONSECUTIVE_ERROR_LIMIT + [S],
            RunPhase.SUCCESSFUL,
            CONSECUTIVE_ERROR_LIMIT + 1,
        ),
        (Analysis(count=0), [], RunPhase.INCONCLUSIVE, 0),
    ],
)
def test_run_verdicts(
    spec: Analysis, phases: list[MeasurementPhase], end: RunPhase, measured: int
) -> None:
    run, script = run_to_end(spec, phases)
    assert run.phase is end, run.message
    assert script.calls == measured
    assert run.message


def test_measurements_follow_the_interval() -> None:
    script = Script([S, S, S])
    run = start(Analysis(interval_seconds=10, count=3), 100.0)
    assert advance(run, 109.9, script) is run  # not due: nothing measured
    assert script.calls == 0
    run = advance(run, 110.0, script)
    assert script.calls == 1 and run.phase is RunPhase.RUNNING
    assert advance(run, 115.0, script) is run
    run = advance(run, 150.0, script)  # overdue by several intervals: one measurement
    assert script.calls == 2
    assert run.next_due() == 160.0
    run = advance(run, 160.0, script)
    assert run.phase is RunPhase.SUCCESSFUL and run.next_due() is None
    assert advance(run, 1000.0, script) is run  # over: never measures again
    assert script.calls == 3


def test_failed_message_names_the_reason() -> None:
    run, _ = run_to_end(Analysis(count=3), [F])
    assert "1 failed measurements (failureLimit 0)" in run.message
    assert "measured failed" in run.message


@given(
    st.integers(1, 5),
    st.integers(0, 3),
    st.lists(st.sampled_from([S, F, N, E]), min_size=60, max_size=60),
)
def test_run_properties(count: int, limit: int, phases: list[MeasurementPhase]) -> None:
    """Ends within its budget; successful only with count measurements and none
    inconclusive; failed iff more than failureLimit failures counted."""
    run, _ = run_to_end(Analysis(count=count, failure_limit=limit), phases)
    assert run.done
    assert len(run.measurements) <= count
    if run.phase is RunPhase.SUCCESSFUL:
        assert len(run.measurements) == count
        assert all(m.phase is S or m.phase is F for m in run.measurements)
        assert run.failures <= limit
    if run.phase is RunPhase.INCONCLUSIVE:
        assert any(m.phase is N for m in run.measurements)
    assert (run.phase is RunPhase.FAILED) == (run.failures > limit)
