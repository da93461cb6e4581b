"""An analysis run: ``count`` measurements, one every ``interval``, and their verdict.

:class:`AnalysisRun` is a frozen value and :func:`advance` a pure function of it, the clock
and a ``measure`` callable, so the reconciler keeps one run per requested key (see
``gitorch.strategies.machine.AnalysisRequest``), stores it, and calls :func:`advance` each
pass. ``measure`` is called only when a measurement is due and must judge the window since
the previous measurement (or since the run started).

The rules (Argo Rollouts' AnalysisRun, simplified):

- the first measurement is due ``interval`` after the run starts (a window of traffic must
  exist first), each next one ``interval`` after the previous; an overdue pass takes one
  measurement, not several of the same window;
- more than ``failureLimit`` failed measurements: **failed**, at once;
- an ``error`` measurement (Prometheus did not answer, ...) does not count and is retried
  at the next interval; :data:`CONSECUTIVE_ERROR_LIMIT` errors in a row count as one
  failed measurement (and start a new streak), so a dead metrics source fails a rollout
  instead of stalling it forever;
- after ``count`` counted measurements without failing: **inconclusive** if any was
  inconclusive (an analysis never passes on too little evidence), else **successful**.

Surviving a restart. The reconciler stores every measurement it takes (errors included)
under the run's id, so a new daemon process rebuilds the run with :func:`resume`: the
stored measurements are replayed through the same rules (:func:`take`), so their phases
count toward ``count``, ``failureLimit`` and the inconclusive verdict exactly as before the
restart, and a concluded run keeps its stored verdict (it is never run again). The next
measurement is due ``interval`` after the last one taken, **but no earlier than
``interval`` after the resume**: the data plane's cumulative figures start from zero in a
new process, so the first window after a restart starts at the restart, and a window
shorter than ``interval`` would judge fewer requests than the manifest's
``minRequests`` was written for (after a restart slower than ``interval`` it would be
empty, an inconclusive measurement that makes a good version's run inconclusive).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from enum import StrEnum

from gitorch.analysis.evaluate import Measurement, MeasurementPhase
from gitorch.manifests.model import Analysis

#: Errors in a row that count as one failed measurement.
CONSECUTIVE_ERROR_LIMIT = 3


class RunPhase(StrEnum):
    """Same values as ``gitorch.strategies.machine.AnalysisStatus.phase``."""

    RUNNING = "running"
    SUCCESSFUL = "successful"
    FAILED = "failed"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class AnalysisRun:
    """The state of one run. ``measurements`` holds the counted ones (errors are not,
    except as the failed measurement a streak of them turns into)."""

    spec: Analysis
    started_at: float
    measurements: tuple[Measurement, ...] = ()
    last_measured_at: float | None = None  # any measurement, errors included
    consecutive_errors: int = 0
    phase: RunPhase = RunPhase.RUNNING
    message: str = ""
    resumed_at: float | None = None  # when a new process took the run over (see resume)

    @property
    def done(self) -> bool:
        return self.phase is not RunPhase.RUNNING

    @property
    def failures(self) -> int:
        return sum(1 for m in self.measurements if m.phase is MeasurementPhase.FAILED)

    def next_due(self) -> float | None:
        """When the next measurement is due (None once the run is over): for requeueing."""
        if self.done:
            return None
        since = self.started_at if self.last_measured_at is None else self.last_measured_at
        if self.resumed_at is not None:
            # The window of the first measurement after a resume starts at the resume.
            since = max(since, self.resumed_at)
        return since + self.spec.interval_seconds


def start(spec: Analysis, now: float) -> AnalysisRun:
    """A new run of ``spec`` beginning at ``now``."""
    return AnalysisRun(spec, now, message=f"0/{spec.count} measurements")


def _conclude(run: AnalysisRun) -> AnalysisRun:
    spec = run.spec
    failures = run.failures
    last = run.measurements[-1].message if run.measurements else ""
    if failures > spec.failure_limit:
        return replace(
            run,
            phase=RunPhase.FAILED,
            message=f"{failures} failed measurements (failureLimit {spec.failure_limit}): {last}",
        )
    if len(run.measurements) < spec.count:
        return replace(run, message=f"{len(run.measurements)}/{spec.count} measurements: {last}")
    inconclusive = [m for m in run.measurements if m.phase is MeasurementPhase.INCONCLUSIVE]
    if inconclusive:
        return replace(
            run,
            phase=RunPhase.INCONCLUSIVE,
            message=(
                f"inconclusive: {len(inconclusive)} of {spec.count} measurements could not "
                f"judge ({inconclusive[-1].message})"
            ),
        )
    return replace(
        run, phase=RunPhase.SUCCESSFUL, message=f"{spec.count}/{spec.count} successful: {last}"
    )


def advance(run: AnalysisRun, now: float, measure: Callable[[], Measurement]) -> AnalysisRun:
    """Take the measurement due at ``now`` (if one is) and return the new state."""
    due = run.next_due()
    if due is None or now < due:
        return run
    if run.spec.count <= 0:  # nothing to measure: nothing proven either
        return replace(run, phase=RunPhase.INCONCLUSIVE, message="count is 0: nothing measured")
    return take(run, now, measure())


def take(run: AnalysisRun, now: float, measurement: Measurement) -> AnalysisRun:
    """``run`` after ``measurement`` taken at ``now`` (errors and their streaks, the
    verdict): what :func:`advance` does once it has measured, and what :func:`resume`
    replays. A concluded run takes nothing more."""
    if run.done:
        return run
    if measurement.phase is MeasurementPhase.ERROR:
        streak = run.consecutive_errors + 1
        if streak < CONSECUTIVE_ERROR_LIMIT:
            return replace(
                run,
                last_measured_at=now,
                consecutive_errors=streak,
                message=f"measurement error {streak}/{CONSECUTIVE_ERROR_LIMIT}: "
                f"{measurement.message}",
            )
        measurement = Measurement(
            MeasurementPhase.FAILED,
            measurement.value,
            f"{CONSECUTIVE_ERROR_LIMIT} measurement errors in a row: {measurement.message}",
        )
        streak = 0
    else:
        streak = 0
    run = replace(
        run,
        measurements=(*run.measurements, measurement),
        last_measured_at=now,
        consecutive_errors=streak,
    )
    return _conclude(run)


def resume(
    spec: Analysis,
    started_at: float,
    taken: Iterable[tuple[float, Measurement]],
    now: float,
    *,
    verdict: tuple[RunPhase, str] | None = None,
) -> AnalysisRun:
    """The run of ``spec`` that started at ``started_at`` and took ``taken`` (each with
    the time it was taken, oldest first, errors included), as a new process resumes it at
    ``now`` (see the module docstring: the next measurement is due no earlier than one
    ``interval`` after ``now``, since this process's figures start at ``now``).

    ``verdict``: the stored phase and message of a run that had concluded. It wins over
    the replay (the manifest's ``count`` may have changed since, the verdict may not): a
    concluded run is never measured again.
    """
    run = start(spec, started_at)
    for at, measurement in taken:
        run = take(run, at, measurement)
    if verdict is not None and verdict[0] is not RunPhase.RUNNING:
        return replace(run, phase=verdict[0], message=verdict[1])
    if run.done:
        return run
    return replace(run, resumed_at=now)
