"""The analysis runs progressive rollouts ask for: advanced, measured and stored.

Analysis runs are stored (Argo Rollouts keeps AnalysisRun objects): each is a row of the
store's ``analysis_runs`` table, identified by (service, revision, analysis key, when the
step began), and each measurement is stored under its run's id in the same transaction
as the run's verdict so far. A daemon killed mid-analysis resumes the run on restart
(:func:`gitorch.analysis.resume`): the measurements already taken count toward ``count``
and ``failureLimit`` (a failing version gets no fresh allowance from a restart), none is
taken twice, and a run that had concluded keeps its verdict and is not run again. A step
entered again (a new rollout of the same revision) has a new start time: a new run.

Each measurement judges the window since the previous one, from the data plane's
per-version figures (and Prometheus when the analysis block has a query). Those figures
are cumulative per process: after a restart the first window starts at the restart, and
the first measurement comes one ``interval`` after it (see :mod:`gitorch.analysis.run`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType
from typing import Any

from gitorch.analysis import AnalysisRun, Measurement, RunPhase, advance, measure, resume
from gitorch.analysis import MeasurementPhase as AnalysisMeasurementPhase
from gitorch.decide.service import version_key
from gitorch.state import (
    AnalysisRunPhase,
    AnalysisRunRecord,
    MeasurementPhase,
    RolloutRecord,
    StateStore,
)
from gitorch.strategies.machine import AnalysisRequest, AnalysisStatus
from gitorch.traffic.figures import VersionFigures, empty_histogram
from gitorch.traffic.table import DataPlane
from gitorch.traffic.wire import version_figures_from_json, version_figures_to_json


@dataclass(frozen=True)
class StepEntry:
    """One rollout's entry into one step: what identifies an analysis run besides its key."""

    revision: str
    step_started_at: float

    @classmethod
    def of(cls, record: RolloutRecord) -> StepEntry | None:
        """None until the reconciler has stored when the current step began (the first
        pass of a rollout): a run must be identifiable the same way on every pass."""
        if record.step_started_at is None:
            return None
        return cls(record.revision, record.step_started_at)


@dataclass
class _Run:
    entry: StepEntry
    run_id: int  # its row in the store's analysis_runs
    request: AnalysisRequest
    run: AnalysisRun
    last: dict[str, VersionFigures]  # version -> cumulative figures at the last measurement


class AnalysisRunner:
    """The analysis runs of one reconciler: advanced when decisions ask for them,
    resumed from the store after a restart, forgotten once no decision asks."""

    def __init__(self, store: StateStore, dataplane: DataPlane) -> None:
        self.store = store
        self.dataplane = dataplane
        self._runs: dict[tuple[str, str], _Run] = {}  # (service, key) -> run being advanced
        # Stored runs of the current step entry not advanced by this process yet (a restart):
        # their verdict so far is the strategy's input until a decision requests them again.
        self._stored: dict[tuple[str, str], AnalysisRunRecord] = {}
        self._looked_up: set[tuple[str, StepEntry]] = set()

    def statuses_of(
        self, records: Mapping[str, RolloutRecord]
    ) -> dict[str, dict[tuple[str, float], Mapping[str, AnalysisStatus]]]:
        """For every service in a progressive step, the verdicts of its step entry's runs
        (the input :func:`gitorch.decide.decide_pass` reads)."""
        found: dict[str, dict[tuple[str, float], Mapping[str, AnalysisStatus]]] = {}
        for name, record in records.items():
            entry = StepEntry.of(record)
            if entry is None:
                continue
            found[name] = {(entry.revision, entry.step_started_at): self.statuses(name, entry)}
        return found

    def forget(self, service: str) -> None:
        """``service`` is not in a progressive rollout (any more)."""
        self._forget(service)

    def _forget(self, service: str) -> None:
        for key in [k for k in self._runs if k[0] == service]:
            del self._runs[key]
        for key in [k for k in self._stored if k[0] == service]:
            del self._stored[key]
        self._looked_up = {seen for seen in self._looked_up if seen[0] != service}

    def _look_up_stored(self, service: str, entry: StepEntry) -> None:
        """Once per step entry and process: the runs a previous process stored for it, so
        the strategy's first decision after a restart already sees their verdicts (a run
        that failed before the kill rolls back at once, one that succeeded is not redone)."""
        if (service, entry) in self._looked_up:
            return
        self._looked_up.add((service, entry))
        for stored in self.store.list_analysis_runs(
            service, revision=entry.revision, step_started_at=entry.step_started_at
        ):
            state = self._runs.get((service, stored.analysis))
            if state is None or state.entry != entry:
                self._stored[(service, stored.analysis)] = stored

    def statuses(self, service: str, entry: StepEntry | None) -> Mapping[str, AnalysisStatus]:
        """The verdicts so far of the runs of ``service`` in this step entry, by request key:
        those this process advances, and (after a restart) those a previous one stored."""
        if entry is not None:
            self._look_up_stored(service, entry)
        statuses = {
            key: AnalysisStatus(stored.phase.value, stored.message)
            for (svc, key), stored in self._stored.items()
            if svc == service and StepEntry(stored.revision, stored.step_started_at) == entry
        }
        statuses.update(
            {
                key: AnalysisStatus(state.run.phase.value, state.run.message)
                for (svc, key), state in self._runs.items()
                if svc == service and state.entry == entry
            }
        )
        return MappingProxyType(statuses)

    def _figures(self, service: str) -> dict[str, VersionFigures]:
        return dict(self.dataplane.version_figures(service))

    def run_analyses(
        self, service: str, entry: StepEntry, requests: tuple[AnalysisRequest, ...], now: float
    ) -> None:
        """Advance the runs ``requests`` ask for (starting or resuming them from the
        store), storing each measurement with its run's verdict; forget the others."""
        wanted = {r.key for r in requests}
        for table in (self._runs, self._stored):
            for key in [k for k in table if k[0] == service and k[1] not in wanted]:
                del table[key]
        for request in requests:
            self._stored.pop((service, request.key), None)
            state = self._runs.get((service, request.key))
            if state is None or state.entry != entry or state.request != request:
                state = self._open(service, entry, request, now)
                self._runs[(service, request.key)] = state
            if state.run.done:
                continue
            taken: list[Measurement] = []
            run = advance(state.run, now, partial(self._measure, service, request, state, taken))
            if run != state.run:
                self._store_progress(service, entry, request, state, run, taken, now)
            state.run = run

    def _open(self, service: str, entry: StepEntry, request: AnalysisRequest, now: float) -> _Run:
        """The run for ``request`` in this step entry: new, or resumed from the store."""
        stored = self.store.open_analysis_run(
            service, entry.revision, request.key, entry.step_started_at, at=now
        )
        taken = [
            (m.taken_at, Measurement(_phase(m.phase), m.value, m.message))
            for m in self.store.list_measurements(service, run_id=stored.id, limit=None)
        ]
        verdict = (RunPhase(stored.phase.value), stored.message) if stored.done else None
        run = resume(request.analysis, stored.started_at, taken, now, verdict=verdict)
        if stored.window_figures is not None:
            # Resumed: the window goes on from the figures of the last measurement (or
            # of the run's start), so what the data plane served while no daemon ran is
            # judged; a data plane whose counting began again since marks the window.
            last = {
                version: version_figures_from_json(raw)
                for version, raw in stored.window_figures.items()
            }
        else:
            last = self._figures(service)
            self.store.set_analysis_window(stored.id, _window_json(last))
        return _Run(entry, stored.id, request, run, last)

    def _store_progress(
        self,
        service: str,
        entry: StepEntry,
        request: AnalysisRequest,
        state: _Run,
        run: AnalysisRun,
        taken: list[Measurement],
        now: float,
    ) -> None:
        # One transaction: a kill leaves both the measurement and the verdict, or neither.
        with self.store.transaction():
            for result in taken:
                self.store.add_measurement(
                    service,
                    entry.revision,
                    MeasurementPhase(result.phase.value),
                    analysis=request.key,
                    value=result.value,
                    message=result.message,
                    at=now,
                    run_id=state.run_id,
                )
            self.store.conclude_analysis_run(
                state.run_id, AnalysisRunPhase(run.phase.value), run.message, at=now
            )
            self.store.set_analysis_window(state.run_id, _window_json(state.last))

    def _measure(
        self, service: str, request: AnalysisRequest, state: _Run, taken: list[Measurement]
    ) -> Measurement:
        current = self._figures(service)

        def window(template: str) -> VersionFigures:
            key = version_key(template)
            now_figures = current.get(key) or _empty(key)
            return now_figures.since(state.last.get(key) or _empty(key))

        result = measure(
            request.analysis,
            window(request.version),
            baseline=window(request.baseline) if request.baseline else None,
            service=service,
        )
        state.last = current
        taken.append(result)
        return result


def _window_json(figures: Mapping[str, VersionFigures]) -> dict[str, Any]:
    return {version: version_figures_to_json(f) for version, f in figures.items()}


def _phase(phase: MeasurementPhase) -> AnalysisMeasurementPhase:
    return AnalysisMeasurementPhase(phase.value)


def _empty(version: str) -> VersionFigures:
    return VersionFigures(version, 0, 0, 0, 0, 0, tuple(empty_histogram()))
