"""The horizontal autoscaler's sync: read the metrics, decide (pure), record.

Every sync period (``gitorch daemon --autoscale-sync``, 15 s by default) the daemon calls
:meth:`Autoscaler.sync` with the desired state and one observation. For each service with
``spec.autoscale`` it reads the metrics (:mod:`gitorch.apply.scale_metrics`), runs
:func:`gitorch.decide.autoscale.decide_scale`, and stores the outcome in the service's
autoscaler record: the count, the reason, every metric's value and proposal. A change of
count is also an audit event (``autoscale.scaled``: which metric, its value and target,
from and to). Nothing is started or stopped here: the next reconcile pass reads the record
(``LiveState.autoscalers``) and decides the starts and drains like any other change of
count, so ``gitorch plan`` shows them and the executor carries them out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from gitorch.apply.scale_metrics import ScaleMetrics, Usage
from gitorch.decide.autoscale import (
    MetricVerdict,
    ScaleDecision,
    ScaleInput,
    ScaleMemory,
    decide_scale,
)
from gitorch.decide.service import BoundsScale, bounds_scale, desired_count
from gitorch.decide.vertical import Histograms, auto_update, recommend, running_requests
from gitorch.live.model import LiveReplica, LiveService, LiveState
from gitorch.manifests.model import DesiredState, Service
from gitorch.manifests.quantities import format_cpu, format_memory
from gitorch.state.records import AutoscalerRecord, RolloutPhase, RolloutRecord
from gitorch.state.store import StateStore

#: The event kind of a change of count in the audit log.
SCALED_EVENT = "autoscale.scaled"
#: ... of requests applied by vertical ``mode: Auto``.
VERTICAL_EVENT = "autoscale.vertical-applied"


def _requests_text(requests: Mapping[str, Any]) -> str:
    parts = []
    if requests.get("cpu") is not None:
        parts.append(f"cpu {format_cpu(int(requests['cpu']))}")
    if requests.get("memory") is not None:
        parts.append(f"memory {format_memory(int(requests['memory']))}")
    return ", ".join(parts) or "none"


def _append_scaled(
    store: StateStore,
    service: str,
    from_count: int,
    to_count: int,
    reason: str,
    bounds: tuple[int, int],
    at: float,
    *,
    deciding: MetricVerdict | None = None,
) -> None:
    """The audit entry of a change of count (which metric, its value and target, from
    and to), as history's scaling decisions list it."""
    store.append_event(
        SCALED_EVENT,
        f"{service}: {from_count} -> {to_count} replicas ({reason})",
        service=service,
        data={
            "from": from_count,
            "to": to_count,
            "reason": reason,
            "metric": deciding.metric if deciding else None,
            "value": deciding.value if deciding else None,
            "target": deciding.target if deciding else None,
            "min": bounds[0],
            "max": bounds[1],
        },
        at=at,
    )


def record_bounds_scale(store: StateStore, scale: BoundsScale) -> bool:
    """A count the pass raised to ``minReplicas`` (or lowered to ``maxReplicas``): the
    autoscaler's record holds it from now on (its memory counts it as a scale event, for
    the behavior policies) and the audit log has it as a scaling decision. Called inside
    the pass's transaction for the service; nothing is written when the stored count is
    no longer the one the pass saw (a sync of the autoscaler wrote since, and recorded the
    raise itself): each raise is recorded once. True when recorded here."""
    previous = store.get_autoscaler(scale.service)
    if (previous.desired if previous is not None else None) != scale.observed:
        return False  # the autoscaler's sync wrote a count since the pass observed
    memory = dict(previous.memory) if previous is not None else {}
    events = [*memory.get("events", []), [scale.at, scale.to_count - scale.from_count]]
    store.save_autoscaler(
        AutoscalerRecord(
            service=scale.service,
            desired=scale.to_count,
            decided_at=scale.at,
            changed_at=scale.at,
            reason=scale.reason,
            metrics=previous.metrics if previous is not None else (),
            memory={**memory, "events": events},
            usage=previous.usage if previous is not None else {},
        )
    )
    _append_scaled(
        store,
        scale.service,
        scale.from_count,
        scale.to_count,
        scale.reason,
        (scale.min_replicas, scale.max_replicas),
        scale.at,
    )
    return True


@dataclass(frozen=True)
class SyncResult:
    """One service's decision and the record written for it."""

    decision: ScaleDecision
    record: AutoscalerRecord
    bounds: tuple[int, int]
    vertical_applied: bool = False  # mode Auto applied new requests this sync


def memory_of(record: AutoscalerRecord | None) -> ScaleMemory:
    """The decision's memory as a record stores it."""
    if record is None:
        return ScaleMemory()
    raw = record.memory
    return ScaleMemory(
        tuple((float(at), int(n)) for at, n in raw.get("recommendations", [])),
        tuple((float(at), int(n)) for at, n in raw.get("events", [])),
    )


def rollout_running(service: Service, live: LiveService, rollout: RolloutRecord | None) -> bool:
    """A rollout is replacing replicas: a template other than the rollout's target runs
    (after a rollback the target is the last good spec, not Git's), or a progressive step
    pauses."""
    if rollout is not None and rollout.phase is RolloutPhase.PAUSED:
        return True
    target = rollout.spec_digest if rollout is not None else service.template_digest
    templates = {r.template_digest for r in live.running if r.template_digest}
    return bool(templates - {target})


def _vertical(
    service: Service,
    previous: AutoscalerRecord | None,
    usage: Sequence[Usage],
    now: float,
    *,
    rolling: bool,
) -> dict[str, Any]:
    """The usage histograms with this sync's samples, the recommendation they give, and
    the requests ``mode: Auto`` applies (kept from before, or this recommendation when it
    differs by more than 20% and no rollout runs: ``applied`` with ``from`` and ``at``)."""
    vertical = service.autoscale.vertical if service.autoscale is not None else None
    assert vertical is not None
    stored = previous.usage if previous is not None else {}
    histograms = Histograms.from_json(stored.get("histograms")).add(
        [(u.cpu_millis, u.memory_bytes) for u in usage], now
    )
    recommendation = recommend(histograms, vertical, now)
    out: dict[str, Any] = {
        "histograms": histograms.to_json(),
        "recommendation": {
            "cpu": recommendation.cpu_millis,
            "memory": recommendation.memory_bytes,
            "samples": recommendation.samples,
        },
    }
    if vertical.mode != "Auto":
        return out
    update = None if rolling else auto_update(service, previous, recommendation)
    if update is not None:
        out["applied"] = {
            **update,
            "at": now,
            "from": running_requests(service, previous),
        }
    elif isinstance(stored.get("applied"), dict):
        out["applied"] = stored["applied"]
    return out


class Autoscaler:
    """Reads, decides and records, per autoscaled service (see the module docstring)."""

    def __init__(
        self,
        store: StateStore,
        metrics: ScaleMetrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self._clock = clock

    def sync(
        self, desired: DesiredState, live: LiveState, ready: Callable[[LiveReplica], bool]
    ) -> list[SyncResult]:
        """One sync over every autoscaled service; records of services no longer
        autoscaled are dropped."""
        results: list[SyncResult] = []
        for _name, service in sorted(desired.services.items()):
            if service.autoscale is None:
                continue
            results.append(self._one(service, live, ready))
        autoscaled = {r.record.service for r in results}
        for name in live.autoscalers:
            spec = desired.services.get(name)
            if name not in autoscaled and (spec is None or spec.autoscale is None):
                self.store.forget_autoscaler(name)
                self.metrics.forget(name)
        return results

    def _one(
        self, service: Service, live: LiveState, ready: Callable[[LiveReplica], bool]
    ) -> SyncResult:
        assert service.autoscale is not None
        name = service.name
        now = self._clock()
        previous = live.autoscalers.get(name)
        live_service = live.services.get(name) or LiveService(name, None, ())
        current = desired_count(
            service, live_service, previous.desired if previous is not None else None
        )
        answering = [r for r in live_service.running if ready(r)]
        vertical = service.autoscale.vertical
        recommending = vertical is not None and vertical.mode != "Off"
        needs_usage = recommending or any(
            m.type in ("cpu", "memory") for m in service.autoscale.metrics
        )
        usage = self.metrics.usage(answering) if needs_usage else []
        readings = self.metrics.read(service, answering, usage)
        decision = decide_scale(
            ScaleInput(
                service=name,
                spec=service.autoscale,
                current=current,
                readings=readings,
                now=now,
                memory=memory_of(previous),
            )
        )
        record = AutoscalerRecord(
            service=name,
            desired=decision.desired,
            decided_at=now,
            changed_at=now if decision.changed else (previous.changed_at if previous else None),
            reason=decision.reason,
            metrics=tuple(
                {
                    "metric": v.metric,
                    "value": v.value,
                    "target": v.target,
                    "proposal": v.proposal,
                    "message": v.message,
                }
                for v in decision.verdicts
            ),
            memory={
                "recommendations": [list(r) for r in decision.memory.recommendations],
                "events": [list(e) for e in decision.memory.events],
            },
            # mode Auto's change is a new template: it waits for no rollout to run (the
            # horizontal count does not).
            usage=_vertical(
                service,
                previous,
                usage,
                now,
                rolling=rollout_running(service, live_service, live.rollouts.get(name)),
            )
            if recommending
            else {},
        )
        applied = record.usage.get("applied")
        newly_applied = (
            isinstance(applied, dict)
            and applied.get("at") == now
            and vertical is not None
            and vertical.mode == "Auto"
        )
        limits = (service.autoscale.min_replicas, service.autoscale.max_replicas)
        # The count the bounds alone move (no decision of the pass recorded it yet).
        held = bounds_scale(service, live_service, previous.desired if previous else None, now)

        def write() -> bool:
            if self.store.get_autoscaler(name) != previous:
                # The pass (a count held within its bounds) or another sync wrote since
                # this one observed: what it decided is stale, the next sync decides again.
                return False
            self.store.save_autoscaler(record)
            if held is not None:
                _append_scaled(self.store, name, held.from_count, held.to_count, held.reason,
                               limits, now)  # fmt: skip
            if decision.changed:
                _append_scaled(
                    self.store,
                    name,
                    decision.current,
                    decision.desired,
                    decision.reason,
                    limits,
                    now,
                    deciding=decision.deciding,
                )
            if newly_applied:
                assert isinstance(applied, dict)
                before, after = applied["from"], applied
                self.store.append_event(
                    VERTICAL_EVENT,
                    f"{name}: requests {_requests_text(before)} -> {_requests_text(after)} "
                    "(vertical mode Auto: a rolling update)",
                    service=name,
                    data={"from": dict(before), "to": {k: after.get(k) for k in ("cpu", "memory")}},
                    at=now,
                )
            return True

        if not self.store.atomic(write):
            unchanged = replace(decision, desired=decision.current, reason="superseded")
            return SyncResult(unchanged, record, limits)
        return SyncResult(decision, record, limits, newly_applied)
