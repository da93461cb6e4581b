"""Analysis runs survive a daemon restart: resume() replays the stored measurements, and
the reconciler's AnalysisRunner resumes a run from a real state store in a new "process"."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from analysis_helpers import E, F, N, S, Script
from hypothesis import given
from hypothesis import strategies as st

from gitorch.analysis.evaluate import Measurement, MeasurementPhase
from gitorch.analysis.run import (
    CONSECUTIVE_ERROR_LIMIT,
    AnalysisRun,
    RunPhase,
    advance,
    resume,
    start,
)
from gitorch.apply.analysis_runs import AnalysisRunner, StepEntry
from gitorch.manifests.model import Analysis
from gitorch.state import AnalysisRunPhase, StateStore
from gitorch.strategies.machine import AnalysisRequest
from gitorch.traffic.figures import BackendFigures, VersionFigures, by_version, empty_histogram
from gitorch.traffic.table import DataPlaneHealth, RoutingTable


def drive(
    run: AnalysisRun, script: Script, now: float, limit: int | None = None
) -> tuple[AnalysisRun, list[tuple[float, Measurement]], float]:
    """Advance ``run`` at each due time until it concludes or ``limit`` measurements were
    taken; returns the run, what was taken (as the store keeps it) and the last time."""
    taken: list[tuple[float, Measurement]] = []
    while (limit is None or len(taken) < limit) and (due := run.next_due()) is not None:
        now = due

        def measure(at: float = now) -> Measurement:
            result = script()
            taken.append((at, result))
            return result

        run = advance(run, now, measure)
    return run, taken, now


@given(
    phases=st.lists(st.sampled_from([S, F, N, E]), min_size=12, max_size=12),
    count=st.integers(1, 5),
    failure_limit=st.integers(0, 2),
    kill_after=st.integers(0, 6),
    downtime=st.floats(0.0, 50.0),
)
def test_a_run_resumed_anywhere_ends_as_if_never_interrupted(
    phases: list[MeasurementPhase], count: int, failure_limit: int, kill_after: int, downtime: float
) -> None:
    spec = Analysis(interval_seconds=10.0, count=count, failure_limit=failure_limit)
    whole = Script(phases)
    uninterrupted, _, _ = drive(start(spec, 0.0), whole, 0.0)

    script = Script(phases)
    before, taken, killed_at = drive(start(spec, 0.0), script, 0.0, limit=kill_after)
    resumed = resume(spec, 0.0, taken, killed_at + downtime)
    assert resumed.measurements == before.measurements
    assert resumed.failures == before.failures  # no fresh failureLimit allowance
    assert resumed.consecutive_errors == before.consecutive_errors
    assert resumed.phase is before.phase
    after, _, _ = drive(resumed, script, killed_at + downtime)
    assert after.phase is uninterrupted.phase
    assert after.measurements == uninterrupted.measurements
    assert script.calls == whole.calls  # nothing measured twice, nothing skipped


def test_the_first_measurement_after_a_resume_is_one_interval_after_it() -> None:
    spec = Analysis(interval_seconds=10.0, count=5, failure_limit=2)
    taken = [(10.0, Measurement(S)), (20.0, Measurement(F)), (30.0, Measurement(S))]
    quick = resume(spec, 0.0, taken, 33.0)  # restarted before the next was due (40)
    assert quick.next_due() == 43.0  # this process's figures start at 33
    slow = resume(spec, 0.0, taken, 95.0)  # down for longer than an interval
    assert slow.next_due() == 105.0  # not at once: that window would be empty
    assert (slow.last_measured_at, len(slow.measurements), slow.failures) == (30.0, 3, 1)
    later = advance(slow, 105.0, Script([S]))
    assert later.next_due() == 115.0  # then every interval, as before


def test_count_4_failure_limit_1_fails_at_the_first_failure_after_a_restart() -> None:
    spec = Analysis(interval_seconds=2.0, count=4, failure_limit=1)
    resumed = resume(spec, 0.0, [(2.0, Measurement(F, {}, "503s"))], 3.0)
    assert resumed.phase is RunPhase.RUNNING and resumed.message.startswith("1/4")
    failed = advance(resumed, 5.0, Script([F]))
    assert failed.phase is RunPhase.FAILED
    assert failed.message.startswith("2 failed measurements (failureLimit 1)")


def test_an_error_streak_carries_over_a_restart() -> None:
    spec = Analysis(interval_seconds=1.0, count=3)
    errors = [
        (float(i), Measurement(E, {}, "no answer")) for i in range(1, CONSECUTIVE_ERROR_LIMIT)
    ]
    resumed = resume(spec, 0.0, errors, 10.0)
    assert resumed.consecutive_errors == CONSECUTIVE_ERROR_LIMIT - 1 and not resumed.measurements
    failed = advance(resumed, 11.0, Script([E]))
    assert failed.phase is RunPhase.FAILED  # the streak completed across the restart


def test_a_concluded_run_keeps_its_stored_verdict_and_measures_nothing() -> None:
    spec = Analysis(interval_seconds=1.0, count=4)  # count raised in Git since: no matter
    taken = [(1.0, Measurement(S)), (2.0, Measurement(S))]
    done = resume(spec, 0.0, taken, 9.0, verdict=(RunPhase.SUCCESSFUL, "2/2 successful"))
    assert (done.phase, done.message, done.next_due()) == (
        RunPhase.SUCCESSFUL,
        "2/2 successful",
        None,
    )
    script = Script([])
    assert advance(done, 100.0, script) is done and script.calls == 0
    # A replay that concludes by itself (the verdict row lags behind) is done as well.
    over = resume(Analysis(count=3), 0.0, [(1.0, Measurement(F))], 9.0)
    assert over.phase is RunPhase.FAILED and over.resumed_at is None


# -- AnalysisRunner: a run resumed from a real state store by a new process -------------------

NEW, OLD = "n" * 64, "o" * 64  # template digests; the data plane names versions by 12 chars
SHA = "a" * 40


class Plane:
    """A data plane whose cumulative per-version figures a test sets (a new process: zero,
    and a counting epoch of its own, as a new proxy has)."""

    def __init__(self) -> None:
        self.counts: dict[str, tuple[int, int]] = {}  # template -> (requests, 5xx)
        self.reads = 0
        self.epoch = secrets.token_hex(4)

    def serve(self, template: str, requests: int, errors: int) -> None:
        total, failed = self.counts.get(template, (0, 0))
        self.counts[template] = (total + requests, failed + errors)

    def figures(self, service: str) -> list[BackendFigures]:
        self.reads += 1
        return [
            BackendFigures(t[:12] + "-b", t[:12], 0, req, err, 0, tuple(empty_histogram()))
            for t, (req, err) in self.counts.items()
        ]

    def version_figures(self, service: str) -> dict[str, VersionFigures]:
        return {
            v: replace(f, epoch=self.epoch) for v, f in by_version(self.figures(service)).items()
        }

    def health(self) -> DataPlaneHealth:
        return DataPlaneHealth("test", True)

    def apply(self, table: RoutingTable) -> None:
        pass

    def backend_stats(self, service: str, backend_id: str) -> None:
        return None

    def close(self) -> None:
        pass


SPEC = Analysis(interval_seconds=10.0, count=4, failure_limit=1, min_requests=5)
REQUEST = AnalysisRequest("step-1", SPEC, NEW, OLD)
ENTRY = StepEntry(SHA, 100.0)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    with StateStore(tmp_path / "state") as opened:
        yield opened


def test_a_restarted_process_resumes_the_run_and_fails_at_the_next_failure(
    store: StateStore,
) -> None:
    plane = Plane()  # one data plane per daemon process
    first = AnalysisRunner(store, plane)
    first.run_analyses("web", ENTRY, (REQUEST,), 101.0)
    plane.serve(NEW, 40, 40)
    first.run_analyses("web", ENTRY, (REQUEST,), 111.0)
    (taken,) = store.list_measurements("web")
    assert taken.phase.value == "failed" and taken.taken_at == 111.0
    assert first.statuses("web", ENTRY)["step-1"].phase == "running"  # 1 failure <= limit

    # SIGKILL; a new process with a new data plane (its figures start at zero).
    plane = Plane()
    second = AnalysisRunner(store, plane)
    status = second.statuses("web", ENTRY)["step-1"]  # before any decision: from the store
    assert (status.phase, status.message.split(":")[0]) == ("running", "1/4 measurements")
    second.run_analyses("web", ENTRY, (REQUEST,), 113.0)  # due 121 before the kill: now 123
    plane.serve(NEW, 30, 30)
    second.run_analyses("web", ENTRY, (REQUEST,), 121.0)
    assert len(store.list_measurements("web")) == 1  # not yet: the window began at 113
    second.run_analyses("web", ENTRY, (REQUEST,), 123.0)
    measured = store.list_measurements("web", limit=None)
    assert [(m.phase.value, m.taken_at) for m in measured] == [("failed", 111.0), ("failed", 123.0)]
    assert measured[1].value["requests"] == 30  # the window since the restart only
    assert second.statuses("web", ENTRY)["step-1"].phase == "failed"
    (run,) = store.list_analysis_runs("web")
    assert (run.phase, run.concluded_at, run.started_at) == (AnalysisRunPhase.FAILED, 123.0, 101.0)
    assert {m.run_id for m in measured} == {run.id}

    # Killed again after the verdict: the next process never measures this run again.
    plane = Plane()
    third = AnalysisRunner(store, plane)
    assert third.statuses("web", ENTRY)["step-1"].phase == "failed"
    plane.serve(NEW, 50, 0)
    for now in (124.0, 140.0, 200.0):
        third.run_analyses("web", ENTRY, (REQUEST,), now)
    assert len(store.list_measurements("web", limit=None)) == 2


def test_a_step_entered_again_is_a_new_run(store: StateStore) -> None:
    plane = Plane()
    progressive = AnalysisRunner(store, plane)
    plane.serve(NEW, 10, 10)
    for now in (101.0, 111.0, 121.0):
        progressive.run_analyses("web", ENTRY, (REQUEST,), now)
        plane.serve(NEW, 10, 10)
    assert progressive.statuses("web", ENTRY)["step-1"].phase == "failed"
    again = StepEntry(SHA, 500.0)  # the same revision rolled out again later
    assert progressive.statuses("web", again) == {}
    progressive.run_analyses("web", again, (REQUEST,), 501.0)
    assert progressive.statuses("web", again)["step-1"].phase == "running"
    assert [r.step_started_at for r in store.list_analysis_runs("web")] == [100.0, 500.0]


def test_what_the_proxy_served_while_no_daemon_ran_is_judged(store: StateStore) -> None:
    """The proxy outlives the daemon and keeps counting: a daemon restarted mid-analysis
    judges the requests served while it was down (issue 13, "figures survive")."""
    plane = Plane()  # the proxy: one for both daemons
    first = AnalysisRunner(store, plane)
    first.run_analyses("web", ENTRY, (REQUEST,), 101.0)
    plane.serve(NEW, 40, 0)
    first.run_analyses("web", ENTRY, (REQUEST,), 111.0)
    (good,) = store.list_measurements("web")
    assert good.phase.value == "successful"

    # The daemon is SIGKILLed; meanwhile the proxy serves 20 requests, all 5xx.
    plane.serve(NEW, 20, 20)
    second = AnalysisRunner(store, plane)  # the restarted daemon
    second.run_analyses("web", ENTRY, (REQUEST,), 115.0)
    plane.serve(NEW, 10, 0)
    second.run_analyses("web", ENTRY, (REQUEST,), 125.0)  # one interval after the resume
    measured = store.list_measurements("web", limit=None)
    assert len(measured) == 2
    window = measured[1]
    assert window.value["requests"] == 30  # from the last measurement on: downtime included
    assert window.phase.value == "failed"  # 20 of 30 failed while no daemon ran
    assert not window.value.get("countingRestarted")
