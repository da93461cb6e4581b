"""Stored analysis runs: identity, verdicts, and the measurements that count toward them."""

from __future__ import annotations

import pytest

from gitorch.errors import StateError
from gitorch.state import (
    AnalysisRunPhase,
    MeasurementPhase,
    RecordNotFound,
    StateStore,
)

SHA = "d" * 40


def test_open_returns_the_stored_run_for_the_same_identity(store: StateStore) -> None:
    first = store.open_analysis_run("web", SHA, "step-1", 100.0, at=101.0)
    assert (first.phase, first.started_at, first.concluded_at) == (
        AnalysisRunPhase.RUNNING,
        101.0,
        None,
    )
    # A restarted daemon opening the same run later gets it back, start time unchanged.
    again = store.open_analysis_run("web", SHA, "step-1", 100.0, at=150.0)
    assert again == first
    # Any other part of the identity is another run: key, revision, service, step entry.
    others = {
        store.open_analysis_run("web", SHA, "background-1", 100.0, at=102.0).id,
        store.open_analysis_run("web", "e" * 40, "step-1", 100.0, at=102.0).id,
        store.open_analysis_run("api", SHA, "step-1", 100.0, at=102.0).id,
        store.open_analysis_run("web", SHA, "step-1", 200.0, at=201.0).id,  # re-entered step
    }
    assert len(others) == 4 and first.id not in others


def test_conclude_dates_the_first_verdict_only(store: StateStore) -> None:
    run = store.open_analysis_run("web", SHA, "step-1", 1.0, at=1.0)
    running = store.conclude_analysis_run(run.id, AnalysisRunPhase.RUNNING, "1/4", at=3.0)
    assert (running.phase, running.message, running.concluded_at) == (
        AnalysisRunPhase.RUNNING,
        "1/4",
        None,
    )
    failed = store.conclude_analysis_run(run.id, AnalysisRunPhase.FAILED, "2 failed", at=5.0)
    assert failed.done and failed.concluded_at == 5.0
    again = store.conclude_analysis_run(run.id, AnalysisRunPhase.FAILED, "2 failed", at=9.0)
    assert again.concluded_at == 5.0
    with pytest.raises(RecordNotFound):
        store.conclude_analysis_run(run.id + 100, AnalysisRunPhase.FAILED)


def test_runs_of_one_step_entry_and_their_measurements(store: StateStore) -> None:
    step = store.open_analysis_run("web", SHA, "step-1", 10.0, at=11.0)
    background = store.open_analysis_run("web", SHA, "background-1", 10.0, at=11.0)
    later = store.open_analysis_run("web", SHA, "step-1", 50.0, at=51.0)
    for at, phase in [(13.0, MeasurementPhase.FAILED), (15.0, MeasurementPhase.SUCCESSFUL)]:
        store.add_measurement("web", SHA, phase, analysis="step-1", at=at, run_id=step.id)
    store.add_measurement(
        "web", SHA, MeasurementPhase.ERROR, analysis="step-1", at=53.0, run_id=later.id
    )
    entry = store.list_analysis_runs("web", revision=SHA, step_started_at=10.0)
    assert [r.id for r in entry] == [step.id, background.id]
    assert [r.id for r in store.list_analysis_runs("web")] == [step.id, background.id, later.id]
    assert store.list_analysis_runs("web", revision="f" * 40) == []
    taken = store.list_measurements("web", run_id=step.id, limit=None)
    assert [(m.taken_at, m.phase, m.run_id) for m in taken] == [
        (13.0, MeasurementPhase.FAILED, step.id),
        (15.0, MeasurementPhase.SUCCESSFUL, step.id),
    ]
    assert [m.phase for m in store.list_measurements("web", run_id=later.id)] == [
        MeasurementPhase.ERROR
    ]


def test_a_reader_process_sees_runs_and_a_dead_run_id_is_refused(location: str) -> None:
    with StateStore(location) as store:
        run = store.open_analysis_run("web", SHA, "step-1", 1.0, at=1.0)
        store.conclude_analysis_run(run.id, AnalysisRunPhase.SUCCESSFUL, "4/4 successful")
        with pytest.raises(StateError, match="FOREIGN KEY|no analysis run"):
            store.add_measurement("web", SHA, MeasurementPhase.FAILED, run_id=run.id + 7)
    with StateStore(location, readonly=True) as reader:
        (seen,) = reader.list_analysis_runs("web")
        assert (seen.phase, seen.message) == (AnalysisRunPhase.SUCCESSFUL, "4/4 successful")
