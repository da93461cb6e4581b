"""Progressive delivery inside the reconciler: which step function runs, the analysis runs
the strategies ask for, and the traffic each service's rollout wants.

Canary, BlueGreen and ABTest drive a rollout from a *stable* version (the last good one)
to a new one. They are used only for that: a first deployment (nothing stable yet), the
repair or scaling of a version that already reached Healthy, and a rollback all take the
RollingUpdate path (a rollback must not walk the canary steps again).

Analysis runs live in memory (a restarted daemon starts the current step's analysis over;
measurements already taken stay in the store's ``measurements`` table for ``status``).
Each measurement judges the window since the previous one, from the data plane's
per-version figures (and Prometheus when the analysis block has a query).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from types import MappingProxyType

from gitorch.analysis import AnalysisRun, Measurement, advance, measure, start
from gitorch.manifests.model import MatchRule, Service
from gitorch.state import MeasurementPhase, RolloutRecord, StateStore
from gitorch.strategies.abtest import abtest_step
from gitorch.strategies.bluegreen import bluegreen_step
from gitorch.strategies.canary import canary_step
from gitorch.strategies.machine import AnalysisRequest, AnalysisStatus, Decision, RolloutInput
from gitorch.strategies.recreate import recreate_step
from gitorch.strategies.rolling import rolling_step
from gitorch.traffic.figures import VersionFigures, by_version, empty_histogram
from gitorch.traffic.table import DataPlane

PROGRESSIVE = ("Canary", "BlueGreen", "ABTest")


def version_key(template: str) -> str:
    """The version name the data plane uses for a template digest."""
    return template[:12]


@dataclass(frozen=True)
class TrafficIntent:
    """What a progressive rollout wants from the data plane right now."""

    weights: Mapping[str, int] = field(
        default_factory=lambda: MappingProxyType({})
    )  # template -> %
    preview: str | None = None  # template served on the blue-green preview port
    match: tuple[MatchRule, ...] = ()  # requests matching go to ``target``
    target: str = ""


@dataclass
class _Run:
    request: AnalysisRequest
    run: AnalysisRun
    last: dict[str, VersionFigures]  # version -> cumulative figures at the last measurement


class Progressive:
    """Per-reconciler state of progressive rollouts."""

    def __init__(self, store: StateStore, dataplane: DataPlane) -> None:
        self.store = store
        self.dataplane = dataplane
        self._runs: dict[tuple[str, str], _Run] = {}
        self._intents: dict[str, TrafficIntent] = {}

    def intent(self, service: str) -> TrafficIntent | None:
        return self._intents.get(service)

    def decide(
        self, target: Service, record: RolloutRecord, inp: RolloutInput, rolled_back: bool
    ) -> Decision:
        """Run the strategy that fits where this rollout stands."""
        kind = target.strategy.type
        progressive = (
            kind in PROGRESSIVE
            and not rolled_back
            and not record.reached_healthy
            and record.previous_digest is not None
            and record.previous_digest != target.template_digest
        )
        if not progressive:
            self._forget(target.name)
            return recreate_step(inp) if kind == "Recreate" else rolling_step(inp)
        inp = replace(
            inp,
            stable=record.previous_digest,
            step_started_at=record.step_started_at,
            promote_requested=record.promote_requested,
            abort_requested=record.abort_requested,
            analyses=self._statuses(target.name),
        )
        strategy = target.strategy
        if kind == "Canary":
            assert strategy.canary is not None
            decision = canary_step(inp, strategy.canary)
        elif kind == "BlueGreen":
            assert strategy.blue_green is not None
            decision = bluegreen_step(inp, strategy.blue_green)
        else:
            assert strategy.ab_test is not None
            decision = abtest_step(inp, strategy.ab_test)
        self._run_analyses(target.name, record.revision, decision.analyses, inp.now)
        self._intents[target.name] = TrafficIntent(
            weights=MappingProxyType(dict(decision.weights)),
            preview=decision.preview,
            match=decision.match,
            target=target.template_digest,
        )
        return decision

    def _forget(self, service: str) -> None:
        self._intents.pop(service, None)
        for key in [k for k in self._runs if k[0] == service]:
            del self._runs[key]

    def _statuses(self, service: str) -> Mapping[str, AnalysisStatus]:
        return MappingProxyType(
            {
                key: AnalysisStatus(state.run.phase.value, state.run.message)
                for (svc, key), state in self._runs.items()
                if svc == service
            }
        )

    def _figures(self, service: str) -> dict[str, VersionFigures]:
        read = getattr(self.dataplane, "figures", None)
        return by_version(read(service)) if read is not None else {}

    def _run_analyses(
        self, service: str, revision: str, requests: tuple[AnalysisRequest, ...], now: float
    ) -> None:
        wanted = {r.key for r in requests}
        for key in [k for k in self._runs if k[0] == service and k[1] not in wanted]:
            del self._runs[key]
        for request in requests:
            state = self._runs.get((service, request.key))
            if state is None:
                state = _Run(request, start(request.analysis, now), self._figures(service))
                self._runs[(service, request.key)] = state
            if state.run.done:
                continue
            state.run = advance(
                state.run, now, partial(self._measure, service, revision, request, state)
            )

    def _measure(
        self, service: str, revision: str, request: AnalysisRequest, state: _Run
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
        self.store.add_measurement(
            service,
            revision,
            MeasurementPhase(result.phase.value),
            analysis=request.key,
            value=result.value,
            message=result.message,
        )
        return result


def _empty(version: str) -> VersionFigures:
    return VersionFigures(version, 0, 0, 0, 0, 0, tuple(empty_histogram()))
