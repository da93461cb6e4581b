"""One service's part of a reconcile pass, decided from what is observed: pure.

Given the desired service, its rollout record, its live replicas (with what the probes
say), its crash-loop back-off and the verdicts of its analysis runs, :func:`decide_service`
answers with everything the pass will do for it: the record to save, the events and
inventory entries to write, the replicas to stop and the slots to fill, the traffic split,
the analyses to advance, and why it waits. Nothing here reads a clock, a store or a
runtime: the same input gives the same decision, so ``gitorch plan`` computes exactly what
the next pass executes.

Rules that used to hide in the reconciler's side effects, stated once:

* **Target.** The desired template, except: after a rollback, the last good spec while
  Git still asks for the template that failed; and while a dependency is not Healthy, a
  rollout to a new template does not start (the service keeps running, and repairing,
  what it runs). A dependency holds back rollouts, never repairs.
* **A commit back to the running spec** (``git revert`` of a failed change) clears the
  rollback: the service is Healthy again and its last error is gone.
* **Restarts** are counted once per dead replica (the back-off record remembers which
  replica it counted), on the slot *and* template of the replica that died, with the
  cause (exit code, OOM kill, liveness or startup probe).
* **Start failures** (a command that does not exist, an image missing) back off like
  crashes: the executor records them in the same back-off records.
* **Drift** (``spec.drift``) applies once a template has been Healthy: ``correct``
  repairs, ``warn`` reports and leaves it, ``ignore`` does neither. A crash is not drift:
  a replica that exits by itself is restarted under every policy; one removed, stopped
  by a signal gitorch did not send, or replaced by another spec is drift.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any

from gitorch.decide.actions import RollBack, SetTraffic, StopReplica, Wait
from gitorch.decide.backoff import DEFAULT_CRASH_LOOP, CrashLoop, describe, remaining
from gitorch.live.model import LiveReplica, LiveService
from gitorch.manifests.build import build_service
from gitorch.manifests.model import MatchRule, Origin, Service
from gitorch.state.records import (
    NO_BACKOFF,
    BackoffRecord,
    RolloutPhase,
    RolloutRecord,
    ServiceBackoff,
)
from gitorch.strategies.abtest import abtest_step
from gitorch.strategies.bluegreen import bluegreen_step
from gitorch.strategies.canary import canary_step
from gitorch.strategies.machine import (
    AnalysisRequest,
    AnalysisStatus,
    Create,
    Decision,
    Phase,
    ReplicaView,
    RolloutInput,
    Stop,
)
from gitorch.strategies.recreate import recreate_step
from gitorch.strategies.rolling import is_available, rolling_step, single_writer_limits

PROGRESSIVE = ("Canary", "BlueGreen", "ABTest")

#: Prefix given to the template of a replica being moved off its node: the strategy then
#: replaces it like a replica of an older version.
EVICTED = "evicted:"

#: A replica without a readiness probe is ready once it has run this long: a command that
#: exits at once must not make a rollout Healthy (and its revision succeeded) in the few
#: milliseconds before it is seen dead.
PROBELESS_SETTLE_SECONDS = 1.0


SETTLED = (RolloutPhase.HEALTHY, RolloutPhase.ROLLED_BACK, RolloutPhase.DEGRADED)


def version_key(template: str) -> str:
    """The version name the data plane uses for a template digest."""
    return template[:12]


@dataclass(frozen=True)
class Event:
    """An audit event the pass appends."""

    kind: str
    message: str
    service: str | None = None
    revision: str | None = None
    data: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Applied:
    """An inventory entry the pass writes: ``kind/name`` is now applied as ``canonical``."""

    kind: str
    name: str
    revision: str
    digest: str
    canonical: Mapping[str, Any]


@dataclass(frozen=True)
class TrafficIntent:
    """What a progressive rollout wants from the data plane right now."""

    weights: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    preview: str | None = None  # template served on the blue-green preview port
    match: tuple[MatchRule, ...] = ()  # requests matching go to ``target``
    target: str = ""


@dataclass(frozen=True)
class ServiceProgress:
    """One service after a pass, for progress displays and status."""

    name: str
    phase: str
    message: str
    desired: int
    ready: int
    updated: int
    drift: int = 0  # drift items the policy (warn) leaves alone
    failing: bool = False  # a failure of the service itself backs off


@dataclass(frozen=True)
class ServiceInput:
    """Everything :func:`decide_service` may look at."""

    revision: str  # the desired state's revision
    service: Service
    record: RolloutRecord | None
    live: LiveService  # replicas with ready / ready_since / needs_restart filled in
    now: float
    backoff: ServiceBackoff = NO_BACKOFF  # its crash-loop records (every template)
    # Verdicts of analysis runs, by (revision, step_started_at) then request key.
    analyses: Mapping[tuple[str, float], Mapping[str, AnalysisStatus]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    evicting: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    waiting_for: tuple[str, ...] = ()  # dependencies that are not Healthy
    crash_loop: CrashLoop = DEFAULT_CRASH_LOOP
    # ReadWriteOnce volumes the target writes: one writer at a time, so a RollingUpdate
    # runs as maxSurge 0 (the old replica stops before the new one starts).
    single_writer: tuple[str, ...] = ()
    autoscaled: int | None = None  # the horizontal autoscaler's count (None: no decision yet)
    watching_since: float = 0.0  # PassInput.watching_since


@dataclass(frozen=True)
class ServiceDecision:
    """Everything a pass does for one service (see the module docstring)."""

    name: str
    target: Service
    record: RolloutRecord
    save: bool = True
    reset_requests: bool = False  # a new rollout: promote/abort made for the old one go
    consume: tuple[str, ...] = ()  # request flags acted on, cleared with the save
    applied: tuple[Applied, ...] = ()
    events: tuple[Event, ...] = ()
    backoff: tuple[BackoffRecord, ...] = ()  # upserted
    forgiven: tuple[tuple[int, str], ...] = ()  # (slot, template) back-off to clear
    stops: tuple[StopReplica, ...] = ()
    creates: tuple[int, ...] = ()  # slots to fill with the target template (placed later)
    create_reasons: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}))
    # A progressive rollout's stable set: its spec (the last good one), the revision that
    # spec came from, and the slots to fill with it (a crash, or a count that rose).
    stable: Service | None = None
    stable_revision: str | None = None
    stable_creates: tuple[int, ...] = ()
    waits: tuple[Wait, ...] = ()
    rollback: RollBack | None = None
    traffic: SetTraffic | None = None
    intent: TrafficIntent | None = None
    analyses: tuple[AnalysisRequest, ...] = ()
    analysis_entry: tuple[str, float] | None = None  # (revision, step_started_at)
    progress: ServiceProgress | None = None
    drift: tuple[str, ...] = ()  # drift seen and left alone (policy warn)
    held_by: tuple[str, ...] = ()  # dependencies holding back a rollout to a new template
    requeue_after: float | None = None
    bounds_scale: BoundsScale | None = None  # recorded as a scaling decision

    @property
    def phase(self) -> RolloutPhase:
        return self.record.phase


# ---------------------------------------------------------------------------- helpers


def service_from(canonical: Mapping[str, Any], fallback: Service) -> Service:
    """A Service from a stored canonical spec (the last good one after a rollback)."""
    try:
        return build_service(canonical, Origin("(state store)", 0))
    except (KeyError, TypeError, ValueError):
        return fallback


def _unbounded_count(target: Service, live: LiveService, autoscaled: int | None) -> int:
    """An autoscaled service's count before its bounds: the autoscaler's, before its first
    decision what runs (or Git's ``replicas`` when nothing runs)."""
    return autoscaled if autoscaled is not None else (len(live.running) or target.replicas)


def desired_count(target: Service, live: LiveService, autoscaled: int | None = None) -> int:
    """Replicas wanted. An autoscaled service runs the autoscaler's count (``autoscaled``),
    before its first decision what runs; within its bounds either way."""
    if target.autoscale is None:
        return target.replicas
    count = _unbounded_count(target, live, autoscaled)
    return max(target.autoscale.min_replicas, min(target.autoscale.max_replicas, count))


@dataclass(frozen=True)
class BoundsScale:
    """A change of count the pass makes because the count is out of ``spec.autoscale``'s
    bounds (Git's ``replicas`` below ``minReplicas``, a bound changed in Git): a scaling
    decision like the autoscaler's, recorded as one (as Kubernetes' HPA records its
    "below minReplicas" rescale)."""

    service: str
    from_count: int
    to_count: int
    min_replicas: int
    max_replicas: int
    reason: str  # "below minReplicas" | "above maxReplicas"
    at: float
    observed: int | None = None  # the autoscaler's count the pass saw (None: no record)


def bounds_scale(
    target: Service, live: LiveService, autoscaled: int | None, now: float
) -> BoundsScale | None:
    """The change of count the bounds alone make this pass (None when the count is
    within them, or the service is not autoscaled)."""
    if target.autoscale is None:
        return None
    count = _unbounded_count(target, live, autoscaled)
    bounded = desired_count(target, live, autoscaled)
    if bounded == count:
        return None
    reason = "below minReplicas" if count < bounded else "above maxReplicas"
    low, high = target.autoscale.min_replicas, target.autoscale.max_replicas
    return BoundsScale(target.name, count, bounded, low, high, reason, now, autoscaled)


def slot_of(replica: str) -> int:
    """The slot in a replica label (``web-2`` -> 2); 0 when it carries none."""
    tail = replica.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def exit_cause(replica: LiveReplica) -> str:
    """Why a replica is dead, in words: ``OOMKilled``, ``exit code 3``, ``liveness probe
    failed: HTTP 500``."""
    if replica.state == "running" and replica.needs_restart:
        return replica.health_message or "probe failed"
    if replica.exit_reason:
        return replica.exit_reason
    if replica.exit_code is not None:
        return f"exit code {replica.exit_code}"
    return "exited"


def stopped_from_outside(replica: LiveReplica) -> bool:
    """Exited by a signal (SIGTERM, SIGKILL) that was not an OOM kill: stopped by someone,
    not crashed. gitorch removes the replicas it stops in the same pass, so an exited one
    with this cause was stopped by someone else."""
    if replica.state != "exited" or replica.exit_reason == "OOMKilled":
        return False
    code = replica.exit_code
    reason = replica.exit_reason or ""
    return code in (137, 143, -9, -15) or reason in ("signal 9", "signal 15")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


# ---------------------------------------------------------------------------- the target


@dataclass
class _Draft:
    """The decision being built (mutable while :func:`decide_service` runs)."""

    record: RolloutRecord
    save: bool = False
    reset_requests: bool = False
    applied: list[Applied] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    waits: list[Wait] = field(default_factory=list)

    def update(self, **changes: Any) -> None:
        self.record = _record_with(self.record, changes)
        self.save = True


_RECORD_FIELDS = frozenset(f.name for f in fields(RolloutRecord))


def _record_with(record: RolloutRecord, changes: Mapping[str, Any]) -> RolloutRecord:
    """``dataclasses.replace(record, **changes)`` without its walk of the fields and call
    of ``__init__`` (a pass updates most services' records: 2,000 of them took ~15 ms):
    the record is a frozen dataclass without ``__post_init__``, so a copy of its fields
    with ``changes`` over them is the same record."""
    unknown = changes.keys() - _RECORD_FIELDS
    if unknown:
        raise TypeError(f"RolloutRecord has no field {', '.join(sorted(unknown))}")
    new = object.__new__(RolloutRecord)
    new.__dict__.update(record.__dict__)
    new.__dict__.update(changes)
    return new


def _rolled_back(
    record: RolloutRecord, service: Service, revision: str, now: float
) -> tuple[_Draft, Service, bool]:
    """Git still asks for the template that failed: the last good spec keeps running, at
    the replica count Git asks for (the count is no part of the template that failed; Argo
    Rollouts scales an aborted rollout's stable set the same way)."""
    draft = _Draft(record)
    spec = record.spec.get("spec", {})
    if spec.get("replicas") == service.replicas:
        return draft, service_from(record.spec, service), False
    scaled = {**record.spec, "spec": {**spec, "replicas": service.replicas}}
    draft.update(spec=scaled, phase=RolloutPhase.PROGRESSING, started_at=now, progress_at=now)
    draft.events.append(
        Event(
            "rollout.rollback-scaled",
            f"{service.name}: the rolled-back spec {record.spec_digest[:12]} scaled from "
            f"{spec.get('replicas')} to {service.replicas} replicas (Git still asks for "
            f"{service.template_digest[:12]}, which failed)",
            service=service.name,
            revision=revision,
        )
    )
    return draft, service_from(scaled, service), False


def _begin(inp: ServiceInput) -> tuple[_Draft, Service, bool]:
    """The rollout record and the spec this pass rolls toward; True when a rollout to a
    new template is held back by a dependency."""
    service, record, now = inp.service, inp.record, inp.now
    applied = Applied("Service", service.name, inp.revision, service.digest, service.canonical)
    if record is not None and record.failed_digest == service.template_digest:
        return _rolled_back(record, service, inp.revision, now)
    if record is not None and record.spec_digest == service.template_digest:
        draft = _Draft(record)
        if record.failed_digest is not None:
            # Git is back to the spec that runs (a revert of what failed): the rollback
            # is over, and the failure belongs to history, not to the service's state.
            draft.update(
                failed_digest=None,
                phase=RolloutPhase.HEALTHY
                if record.reached_healthy and record.phase is RolloutPhase.ROLLED_BACK
                else record.phase,
                last_error=None,
                revision=inp.revision,
                message="back on the running spec: rollback cleared",
            )
            draft.applied.append(applied)
            draft.events.append(
                Event(
                    "rollout.rollback-cleared",
                    f"{service.name}: Git is back on the running spec "
                    f"{service.template_digest[:12]}; the rollback from "
                    f"{record.failed_digest[:12]} is over",
                    service=service.name,
                    revision=inp.revision,
                )
            )
        if dict(draft.record.spec) != dict(service.canonical):  # replicas, strategy... changed
            scaled = record.spec.get("spec", {}).get("replicas") != service.replicas
            draft.update(
                spec=service.canonical,
                revision=inp.revision,
                phase=RolloutPhase.PROGRESSING if scaled else draft.record.phase,
                started_at=now if scaled else record.started_at,
                progress_at=now if scaled else record.progress_at,
            )
            if applied not in draft.applied:
                draft.applied.append(applied)
        return draft, service, False
    if inp.waiting_for and record is not None and record.reached_healthy:
        # A new template, but a dependency is not Healthy: keep (and repair) what runs.
        draft = _Draft(record)
        why = (
            f"rollout of {service.template_digest[:12]} waits for "
            f"{', '.join(inp.waiting_for)} to be Healthy"
        )
        draft.waits.append(Wait(service.name, why))
        return draft, service_from(record.spec, service), True
    # A new template: a new rollout. The previous *good* spec is what a failure returns to,
    # and a progressive rollout's stable version: the record's own spec once it reached
    # Healthy, also while a repair (a replica that died, a scale) has it Progressing or
    # Degraded, or once it took all the traffic. Only a spec that never proved good hands
    # on the one before it.
    previous: tuple[str | None, str | None, Mapping[str, Any] | None]
    if record is not None and (
        record.reached_healthy
        or record.phase in (RolloutPhase.HEALTHY, RolloutPhase.ROLLED_BACK)
        or took_all_traffic(record)
    ):
        previous = (record.revision, record.spec_digest, record.spec)
    elif record is not None:
        previous = (record.previous_revision, record.previous_digest, record.previous_spec)
    else:
        previous = (None, None, None)
    fresh = RolloutRecord(
        service=service.name,
        revision=inp.revision,
        spec_digest=service.template_digest,
        strategy=service.strategy.type,
        phase=RolloutPhase.PROGRESSING,
        spec=service.canonical,
        started_at=now,
        previous_revision=previous[0],
        previous_digest=previous[1],
        previous_spec=previous[2],
        progress_at=now,
        message="rollout started",
    )
    draft = _Draft(fresh, save=True, reset_requests=True)
    draft.applied.append(applied)
    draft.events.append(
        Event(
            "rollout.started",
            f"{service.name}: rolling out {service.template_digest[:12]} ({service.strategy.type})",
            service=service.name,
            revision=inp.revision,
        )
    )
    return draft, service, False


# ---------------------------------------------------------------------------- replicas


@dataclass(frozen=True)
class _Observed:
    views: tuple[ReplicaView, ...]
    dead: tuple[LiveReplica, ...]
    completed: frozenset[int]


def _effective_min_ready(target: Service) -> float:
    minimum = float(target.strategy.min_ready_seconds)
    if target.readiness_probe is None:
        return max(minimum, PROBELESS_SETTLE_SECONDS)
    return minimum


#: What is observed of a service without replicas (a first deployment).
_NOTHING_OBSERVED = _Observed((), (), frozenset())


def _observe(target: Service, live: LiveService, evicting: Mapping[str, str]) -> _Observed:
    """Replica views for the strategy; dead replicas; slots whose replica completed."""
    if not live.replicas:
        return _NOTHING_OBSERVED
    views: list[ReplicaView] = []
    dead: list[LiveReplica] = []
    completed: set[int] = set()
    for replica in live.replicas:
        slot = slot_of(replica.replica)
        state = replica.state
        ready = bool(replica.ready) if state == "running" else False
        ready_since = replica.ready_since if ready else None
        if state == "running" and replica.needs_restart:
            state, ready, ready_since = "exited", False, None  # liveness/startup failed
        if state == "exited":
            finished_ok = replica.exit_code == 0 and replica.state == "exited"
            policy = target.restart_policy
            if policy == "Never" or (policy == "OnFailure" and finished_ok):
                completed.add(slot)
                continue  # done for good: keep it (logs), never recreate the slot
            dead.append(replica)
        template = replica.template_digest or ""
        if replica.id in evicting:
            template = EVICTED + template  # replaced elsewhere first, like an old version
        views.append(
            ReplicaView(
                id=replica.id,
                slot=slot,
                template=template,
                state=state,
                ready=ready,
                ready_since=ready_since,
                node=replica.node,
            )
        )
    return _Observed(tuple(views), tuple(dead), frozenset(completed))


@dataclass(frozen=True)
class _Backoff:
    states: Mapping[int, BackoffRecord]  # the target's, by slot, after this pass's restarts
    blocked: frozenset[int]
    #: A progressive rollout's stable set crash-loops on records of its own (the slot's
    #: new replica has its own): by slot, and the slots whose stable replica waits.
    stable_states: Mapping[int, BackoffRecord]
    stable_blocked: frozenset[int]
    updates: tuple[BackoffRecord, ...]
    forgiven: tuple[tuple[int, str], ...]  # (slot, template: "" for any) records to forget
    events: tuple[Event, ...]
    retry_in: float | None  # seconds until the first blocked slot may be filled


def _last_failure(backoff: _Backoff, target: Service) -> str:
    """The most recent failure of a ``target`` replica in its slots' back-off records
    (``"api-1: start failed: image ... cannot be pulled"``, ``"api-2: exit code 3"``),
    or "" when none failed."""
    failed = [b for b in backoff.states.values() if b.reason]
    if not failed:
        return ""
    last = max(failed, key=lambda b: (b.last_restart_at, b.slot))
    return f"{target.name}-{last.slot}: {last.reason}"


#: The back-off of a service that has none and no dead or completed replica.
_NO_BACKOFF = _Backoff(
    MappingProxyType({}), frozenset(), MappingProxyType({}), frozenset(), (), (), (), None
)


def _backoff(
    inp: ServiceInput, target: Service, observed: _Observed, desired: int, stable: str | None
) -> _Backoff:
    """Slots in crash-loop back-off; each newly dead replica counted once.

    The target's replicas are counted, and during a progressive rollout (``stable``: its
    stable template) the stable set's too, each template on records of its own. Records
    of any other template are history (a version replaced, rolled back from) and are
    forgotten: the replicas they counted are removed, not restarted."""
    if not inp.backoff and not observed.dead and not observed.completed:
        return _NO_BACKOFF  # nothing to count, forgive or block (most services)
    name, now, policy = target.name, inp.now, inp.crash_loop
    counted = {target.template_digest} if stable is None else {target.template_digest, stable}
    states: dict[tuple[int, str | None], BackoffRecord] = {}
    forgiven: list[tuple[int, str]] = []
    for b in inp.backoff.replicas:
        if b.template is None or b.template in counted:
            states[(b.slot, b.template)] = b
        else:
            forgiven.append((b.slot, b.template))

    def known_of(slot: int, template: str | None) -> BackoffRecord | None:
        return states.get((slot, template)) or states.get((slot, None))

    updates: list[BackoffRecord] = []
    events: list[Event] = []
    for replica in observed.dead:
        slot = slot_of(replica.replica)
        template = replica.template_digest
        if template not in counted or not 1 <= slot <= desired:
            # A replica of a version being replaced, or of a slot being scaled away, is
            # removed, not restarted, and its exit need not be a crash: a daemon killed
            # between the SIGTERM and the removal leaves exactly this.
            continue
        if target.drift != "correct" and stopped_from_outside(replica):
            continue  # drift, not a crash: the policy decides, nothing restarts it
        known = known_of(slot, template)
        if known is not None and known.replica_id == replica.id:
            continue  # counted by an earlier pass (its removal failed, or it was slow)
        restarts = 1
        if known is not None and known.template == template:
            restarts = known.restarts + 1
        cause = exit_cause(replica)
        # Counted from the exit when the runtime knows it (kubelet's back-off counts from
        # the container's end): a pass that noticed the death late does not add its delay.
        died = now if replica.finished_at is None else min(now, replica.finished_at)
        state = BackoffRecord(
            name,
            slot,
            restarts,
            died,
            replica.exit_code,
            template=template,
            replica_id=replica.id,
            reason=cause,
        )
        states[(slot, template)] = state
        updates.append(state)
        wait = policy.next_delay(restarts)
        events.append(
            Event(
                "replica.restarted",
                f"{replica.replica} ({(template or '')[:12]}"
                f"{', stable' if template == stable else ''}) died: {cause}; "
                f"{describe(state, now, policy)}",
                service=name,
                data={
                    "replica": replica.replica,
                    "template": template,
                    "exitCode": replica.exit_code,
                    "cause": cause,
                    "restarts": restarts,
                    "backoffSeconds": wait,
                    "exitedAt": died,  # the back-off counts from here
                },
            )
        )
    for replica in inp.live.replicas:
        slot = slot_of(replica.replica)
        template = replica.template_digest
        if template not in counted or replica.state != "running" or replica.started_at is None:
            continue
        known = known_of(slot, template)
        if known is None:
            continue
        if known.last_restart_at is not None and replica.started_at < known.last_restart_at:
            continue  # not the replica that was recreated (stale observation)
        if now - replica.started_at >= policy.reset_after:
            forgiven.append((slot, known.template or ""))
            states.pop((slot, known.template))

    kept = ServiceBackoff(tuple(states.values()))
    target_states = kept.slots(target.template_digest)
    stable_states = {
        slot: b for slot, b in kept.slots(stable).items() if stable and b.template == stable
    }

    def waiting(records: Mapping[int, BackoffRecord]) -> dict[int, float]:
        """Seconds left of each slot's back-off that still runs."""
        return {
            slot: left for slot, b in records.items() if (left := remaining(b, now, policy)) > 0
        }

    target_waits, stable_waits = waiting(target_states), waiting(stable_states)
    pending = [*target_waits.values(), *stable_waits.values()]
    return _Backoff(
        MappingProxyType(target_states),
        frozenset(observed.completed) | frozenset(target_waits),
        MappingProxyType(stable_states),
        frozenset(stable_waits),
        tuple(updates),
        tuple(sorted(forgiven)),
        tuple(events),
        min(pending) if pending else None,
    )


# ---------------------------------------------------------------------------- strategies


def _analysis_entry(record: RolloutRecord) -> tuple[str, float] | None:
    """What identifies an analysis run besides its key: None until the current step's
    start is stored (the first pass of a rollout), so a run is found the same way on
    every pass."""
    if record.step_started_at is None:
        return None
    return (record.revision, record.step_started_at)


def took_all_traffic(record: RolloutRecord) -> bool:
    """Whether a progressive rollout's new version was given all the traffic (a canary
    promoted, a blue-green switched, an A/B test concluded) before the record says
    Healthy: its old replicas get none and are stopped or being stopped.

    Such a version is the next rollout's stable one, as Argo Rollouts makes it the stable
    ReplicaSet at promotion. Handing on the version before it instead stopped every
    replica that served ("neither stable nor target") while the old version's were only
    being recreated: the chaos soak (seed 2401, a daemon killed 3 s after `gitorch
    promote`, the next version committed) saw 3 s of "no backend available".
    """
    return (
        record.strategy in PROGRESSIVE
        and record.previous_digest is not None
        and record.step is not None
        and record.weight >= 100
        and record.phase in (RolloutPhase.PROGRESSING, RolloutPhase.PAUSED)
    )


def progressive_stable(target: Service, record: RolloutRecord) -> str | None:
    """The stable template of the progressive rollout ``record`` is in (its last good
    version, which keeps running beside the new one), or None when it is in none: not
    a progressive strategy, a first deployment, a rollout that reached Healthy (repairs
    and scaling take the rolling path), or one rolled back."""
    rolled_back = record.failed_digest is not None and record.spec_digest != record.failed_digest
    if (
        target.strategy.type not in PROGRESSIVE
        or rolled_back
        or record.reached_healthy
        or record.previous_digest is None
        or record.previous_digest == target.template_digest
    ):
        return None
    return record.previous_digest


def _strategy_step(
    inp: ServiceInput,
    target: Service,
    record: RolloutRecord,
    rin: RolloutInput,
    stable: str | None,
) -> tuple[Decision, bool]:
    """Run the strategy that fits where this rollout stands; True when progressive.

    Canary, BlueGreen and ABTest drive a rollout from the last good version to a new
    one; a first deployment, a repair or scaling of a version that reached Healthy, and a
    rollback take the RollingUpdate path (a rollback must not walk the canary steps).
    """
    kind = target.strategy.type
    if stable is None:  # progressive_stable: no progressive rollout runs
        return (recreate_step(rin) if kind == "Recreate" else rolling_step(rin)), False
    entry = _analysis_entry(record)
    rin = replace(
        rin,
        stable=stable,
        step_started_at=record.step_started_at,
        promote_requested=record.promote_requested,
        abort_requested=record.abort_requested,
        analyses=inp.analyses.get(entry, MappingProxyType({})) if entry else MappingProxyType({}),
    )
    strategy = target.strategy
    if kind == "Canary":
        assert strategy.canary is not None
        return canary_step(rin, strategy.canary), True
    if kind == "BlueGreen":
        assert strategy.blue_green is not None
        return bluegreen_step(rin, strategy.blue_green), True
    assert strategy.ab_test is not None
    return abtest_step(rin, strategy.ab_test), True


def _drift(
    target: Service,
    record: RolloutRecord,
    decision: Decision,
    inp: ServiceInput,
    observed: _Observed,
) -> tuple[Decision, tuple[str, ...]]:
    """Apply ``spec.drift`` to a decision about a template that has been Healthy (also
    while a crash is being repaired: a repair must not open the door to drift).

    Drift: a slot that was filled when the service last converged and now has no
    replica (removed outside gitorch), a replica stopped by a signal gitorch did not send,
    a replica of a template that is neither the target nor a rollout's old version. A
    crash is the restart policy's business, not drift; slots above the converged count
    (a scale-up in Git) are not drift either.
    """
    if not record.reached_healthy:
        return decision, ()  # a rollout in progress: whatever is missing, it makes
    if target.drift == "correct":
        return decision, ()
    by_id = {r.id: r for r in inp.live.replicas}
    occupied = {v.slot for v in observed.views}
    converged = record.converged_replicas or 0
    found: list[str] = []
    held_creates: set[int] = set()
    held_stops: set[str] = set()
    for action in decision.actions:
        if isinstance(action, Create) and action.slot not in occupied and action.slot <= converged:
            found.append(f"{target.name}-{action.slot} is missing")
            held_creates.add(action.slot)
        elif isinstance(action, Stop):
            replica = by_id.get(action.replica_id)
            if replica is None:
                continue
            if stopped_from_outside(replica):
                found.append(f"{replica.replica} was stopped ({exit_cause(replica)})")
                held_stops.add(replica.id)
                held_creates.add(slot_of(replica.replica))
            elif (
                replica.state == "running"
                and replica.template_digest not in (target.template_digest, None)
                and replica.template_digest != record.previous_digest
                and replica.id not in inp.evicting
            ):
                found.append(
                    f"{replica.replica} runs another spec ({(replica.template_digest or '')[:12]})"
                )
                held_stops.add(replica.id)
    for replica in inp.live.running:
        image = target.image
        if image and replica.image and replica.image != image:
            found.append(f"{replica.replica} runs image {replica.image}, not {image}")
    if not found:
        return decision, ()
    kept = tuple(
        a
        for a in decision.actions
        if not (isinstance(a, Create) and a.slot in held_creates)
        and not (isinstance(a, Stop) and a.replica_id in held_stops)
    )
    held = replace(decision, actions=kept)
    if not kept and decision.phase in (Phase.PROGRESSING, Phase.FAILED):
        # What is left undone is the drift the policy leaves alone: the service stays
        # settled (else the next pass, no longer Healthy, would repair it after all).
        held = replace(held, phase=Phase.HEALTHY, failure=None)
    if target.drift == "ignore":
        return replace(held, message=decision.message if kept else "settled (drift: ignore)"), ()
    text = "drift left alone (drift: warn): " + "; ".join(found)
    return replace(held, message=text if not kept else f"{decision.message}; {text}"), tuple(found)


# ---------------------------------------------------------------------------- the decision


def decide_service(inp: ServiceInput) -> ServiceDecision:
    """Everything this pass does for ``inp.service`` (see the module docstring)."""
    draft, target, held = _begin(inp)
    record, now = draft.record, inp.now
    name = target.name
    observed = _observe(target, inp.live, inp.evicting)
    desired = desired_count(target, inp.live, inp.autoscaled)
    stable_template = progressive_stable(target, record)
    backoff = _backoff(inp, target, observed, desired, stable_template)
    draft.events.extend(backoff.events)

    if inp.waiting_for and not record.reached_healthy and not held:
        # A first deployment (or a rollout that has not started a replica yet) waits for
        # its dependencies; what runs of it is still repaired below.
        started = any(v.template == target.template_digest for v in observed.views)
        if not started:
            why = f"waiting for {', '.join(inp.waiting_for)} to be Healthy"
            draft.waits.append(Wait(name, why))
            draft.update(message=why, progress_at=now)
            stops = _dead_removals(inp, target, observed)
            return _finish(inp, draft, target, observed, stops=stops, backoff=backoff)

    min_ready = _effective_min_ready(target)
    rin = RolloutInput(
        service=name,
        desired=desired,
        target=target.template_digest,
        replicas=observed.views,
        now=now,
        started_at=record.started_at,
        # A settled service that needs a repair starts the repair's window now.
        last_progress_at=now
        if record.reached_healthy
        and record.phase in (RolloutPhase.HEALTHY, RolloutPhase.ROLLED_BACK)
        else (record.progress_at or record.started_at),
        progress_deadline_seconds=float(target.strategy.progress_deadline_seconds),
        watching_since=inp.watching_since,
        min_ready_seconds=min_ready,
        max_surge=target.strategy.rolling_update.max_surge,
        max_unavailable=target.strategy.rolling_update.max_unavailable,
        step=record.step,
        blocked_slots=backoff.blocked,
        blocked_stable_slots=backoff.stable_blocked,
        completed_slots=observed.completed,
    )
    if inp.single_writer:
        surge, unavailable = single_writer_limits(target, desired)
        rin = replace(rin, max_surge=surge, max_unavailable=unavailable)
    decision, progressive = _strategy_step(inp, target, record, rin, stable_template)
    if decision.phase is Phase.FAILED and decision.failure is not None:
        # "no new replica became available" alone leaves the why to the logs: the
        # rollback's reason (status, history, the audit log) names the last failure.
        last = _last_failure(backoff, target)
        if last:
            decision = replace(decision, failure=f"{decision.failure}; last failure: {last}")
    if held:
        decision = replace(decision, message=f"{decision.message}; {draft.waits[0].reason}")
    decision, drift = _drift(target, record, decision, inp, observed)
    if drift:
        draft.waits.extend(Wait(name, f"drift left alone (drift: warn): {d}") for d in drift)
        if record.message != decision.message:  # reported once per change, shown always
            draft.events.append(
                Event(
                    "drift.detected",
                    f"{name}: {decision.message}",
                    service=name,
                    data={"drift": list(drift)},
                )
            )

    available = sum(
        1 for v in observed.views if v.template == target.template_digest and is_available(v, rin)
    )
    progress_at = now if available > record.available else (record.progress_at or now)
    # The analyses a decision asks for belong to the step entry it was decided in (the
    # record as this pass found it): a decision that moves on to the next step still
    # names the run that let it, which must not open again under the new entry.
    decided_in = _analysis_entry(record)
    consume = _record_after(inp, draft, target, decision, available, progress_at, desired)

    if draft.record.failed_digest == record.spec_digest and record.failed_digest is None:
        # This pass rolled back: the failed version's actions are dropped; the next pass
        # rolls toward the last good spec.
        return _finish(
            inp,
            draft,
            target,
            observed,
            stops=_dead_removals(inp, target, observed),
            backoff=backoff,
            consume=consume,
        )
    stops = tuple(
        stop
        for a in decision.actions
        if isinstance(a, Stop) and (stop := _stop_action(inp, target, a, observed)) is not None
    )
    creates = tuple(
        a.slot
        for a in decision.actions
        if isinstance(a, Create) and a.template == target.template_digest
    )
    reasons = _create_reasons(inp, target, creates, observed, decision)
    stable, stable_creates = _stable_creates(draft.record, target, decision)
    intent: TrafficIntent | None = None
    traffic: SetTraffic | None = None
    analyses: tuple[AnalysisRequest, ...] = ()
    entry: tuple[str, float] | None = None
    if progressive:
        intent = TrafficIntent(
            weights=MappingProxyType(dict(decision.weights)),
            preview=decision.preview,
            match=decision.match,
            target=target.template_digest,
        )
        traffic = SetTraffic(
            name,
            MappingProxyType(dict(decision.weights)),
            decision.preview,
            tuple(_rule_text(r) for r in decision.match),
        )
        entry = decided_in
        analyses = decision.analyses if entry is not None else ()
    if decision.phase is Phase.PAUSED and not draft.waits:
        draft.waits.append(Wait(name, decision.message))
    return _finish(
        inp,
        draft,
        target,
        observed,
        stops=stops,
        creates=creates,
        create_reasons=reasons,
        stable=stable,
        stable_creates=stable_creates,
        backoff=backoff,
        consume=consume,
        intent=intent,
        traffic=traffic,
        analyses=analyses,
        entry=entry,
        drift=drift if target.drift == "warn" else (),
        held_by=inp.waiting_for if held else (),
    )


def _rule_text(rule: MatchRule) -> str:
    what = f"header {rule.header}" if rule.header else f"cookie {rule.cookie}"
    how = f"= {rule.exact}" if rule.exact is not None else f"~ {rule.regex}"
    return f"{what} {how} to the new version"


def _dead_removals(
    inp: ServiceInput, target: Service, observed: _Observed
) -> tuple[StopReplica, ...]:
    """Remove dead replicas (they serve nothing and may hold a name or a port)."""
    return tuple(
        StopReplica(
            target.name,
            r.replica,
            r.id,
            r.node,
            f"dead: {exit_cause(r)}",
            drain=False,
            grace=float(target.termination_grace_seconds),
        )
        for r in observed.dead
        if r.state != "unknown" and not (target.drift != "correct" and stopped_from_outside(r))
    )


def _stop_action(
    inp: ServiceInput, target: Service, action: Stop, observed: _Observed
) -> StopReplica | None:
    replica = next((r for r in inp.live.replicas if r.id == action.replica_id), None)
    if replica is None or replica.state == "unknown":
        return None  # unknown: its node does not answer; removed once it does
    serving = replica.state == "running" and not replica.needs_restart
    reason = action.reason or "not wanted"
    if replica.id in inp.evicting:
        reason = f"{reason} ({inp.evicting[replica.id]})"
    if not serving:
        reason = f"dead: {exit_cause(replica)}" if action.reason == "exited" else reason
    return StopReplica(
        target.name,
        replica.replica,
        replica.id,
        replica.node,
        reason,
        drain=serving,
        grace=float(target.termination_grace_seconds),
        terminating_frees_room=serving and action.terminating_frees_room,
    )


def _stable_creates(
    record: RolloutRecord, target: Service, decision: Decision
) -> tuple[Service | None, tuple[int, ...]]:
    """The stable spec and the slots a progressive decision fills with it (``keep_stable``:
    a stable replica that crashed, or a count that rose mid-rollout). The stable template
    is the record's last good one; a Create of any other template is not the strategy's
    to ask (none does) and is left out."""
    slots = tuple(
        a.slot
        for a in decision.actions
        if isinstance(a, Create)
        and a.template != target.template_digest
        and a.template == record.previous_digest
    )
    if not slots or record.previous_spec is None:
        return None, ()
    stable = service_from(record.previous_spec, target)
    if stable.template_digest != record.previous_digest:
        return None, ()  # a stored spec this build reads differently: not this template
    return stable, slots


def _create_reasons(
    inp: ServiceInput,
    target: Service,
    slots: tuple[int, ...],
    observed: _Observed,
    decision: Decision,
) -> Mapping[int, str]:
    dead = {slot_of(r.replica): r for r in observed.dead}
    old = {v.slot for v in observed.views if v.template != target.template_digest}
    reasons: dict[int, str] = {}
    for slot in slots:
        if slot in dead:
            reasons[slot] = f"replaces {dead[slot].replica} ({exit_cause(dead[slot])})"
        elif slot in old:
            reasons[slot] = "new version"
        elif inp.record is None or not inp.record.reached_healthy:
            reasons[slot] = "new service" if inp.record is None else "rollout"
        else:
            reasons[slot] = "slot empty"
    return MappingProxyType(reasons)


def _record_after(
    inp: ServiceInput,
    draft: _Draft,
    target: Service,
    decision: Decision,
    available: int,
    progress_at: float,
    desired: int,
) -> tuple[str, ...]:
    """Where the service stands after this pass; returns the requests acted on.

    A rollout to a new template that fails rolls back (when allowed). Once a template
    has been healthy, later trouble (a replica died, a scale-up cannot be placed) is a
    *repair*: it gets its own progress window and, if it cannot succeed, makes the
    service Degraded. A version that worked is never rolled back because a replica
    crashed.
    """
    record, now = draft.record, inp.now
    rolled_back = record.failed_digest is not None and record.spec_digest != record.failed_digest
    settled = RolloutPhase.ROLLED_BACK if rolled_back else RolloutPhase.HEALTHY
    common: dict[str, Any] = {
        "available": available,
        "message": decision.message,
        "step": decision.step,
    }
    consume: list[str] = []
    if decision.step != record.step:  # a new step: its own clock, and a promote is used up
        common["step_started_at"] = now
        if record.promote_requested:
            consume.append("promote")
    if decision.weights:
        common["weight"] = max(0, min(100, decision.weights.get(target.template_digest, 0)))
    elif decision.phase is Phase.HEALTHY:
        common["weight"] = 100
    if decision.phase is Phase.HEALTHY:
        if record.phase is not settled:
            draft.events.append(
                Event(
                    "rollout.completed",
                    f"{target.name}: {available} replica(s) of {record.spec_digest[:12]} available",
                    service=target.name,
                    revision=record.revision,
                )
            )
        _update_if_changed(
            draft,
            phase=settled,
            reached_healthy=True,
            converged_replicas=desired,
            progress_at=progress_at,
            **common,
        )
        return tuple(consume)
    if not record.reached_healthy:
        if decision.phase is Phase.FAILED:
            if record.abort_requested:  # acted on: the rollout fails (rolls back) now
                consume.append("abort")
            draft.update(**common)
            _fail(inp, draft, target, decision.failure or decision.message)
            return tuple(consume)
        if record.phase is RolloutPhase.DEGRADED:
            phase = RolloutPhase.DEGRADED
        elif rolled_back:
            phase = RolloutPhase.ROLLED_BACK
        elif decision.phase is Phase.PAUSED:
            phase = RolloutPhase.PAUSED
        else:
            phase = RolloutPhase.PROGRESSING
        _update_if_changed(draft, phase=phase, progress_at=progress_at, **common)
        return tuple(consume)
    # A repair of a version that worked.
    if record.phase in (RolloutPhase.HEALTHY, RolloutPhase.ROLLED_BACK):
        draft.update(started_at=now)
        progress_at = now  # the repair's own window starts now
    if decision.phase is Phase.FAILED:
        reason = decision.failure or decision.message
        if record.phase is not RolloutPhase.DEGRADED:
            draft.events.append(
                Event(
                    "service.degraded",
                    f"{target.name}: {reason}",
                    service=target.name,
                    revision=record.revision,
                )
            )
        _update_if_changed(
            draft,
            phase=RolloutPhase.DEGRADED,
            progress_at=progress_at,
            last_error=reason,
            **common,
        )
        return tuple(consume)
    phase = (
        RolloutPhase.DEGRADED
        if record.phase is RolloutPhase.DEGRADED
        else (RolloutPhase.PROGRESSING)
    )
    _update_if_changed(draft, phase=phase, progress_at=progress_at, **common)
    return tuple(consume)


def _update_if_changed(draft: _Draft, **changes: Any) -> None:
    """Save only what differs: a settled service's passes write nothing."""
    current = draft.record
    if any(getattr(current, key) != value for key, value in changes.items()):
        draft.update(**changes)


def _fail(inp: ServiceInput, draft: _Draft, target: Service, reason: str) -> None:
    record = draft.record
    if record.phase is RolloutPhase.DEGRADED:
        return
    can_roll_back = (
        target.strategy.auto_rollback
        and record.previous_spec is not None
        and record.previous_digest is not None
        and record.failed_digest is None  # the rollback itself failing: no loop
    )
    if not can_roll_back:
        draft.events.append(
            Event(
                "rollout.failed",
                f"{target.name}: {reason}",
                service=target.name,
                revision=record.revision,
            )
        )
        draft.update(phase=RolloutPhase.DEGRADED, last_error=reason, message=f"failed: {reason}")
        return
    assert record.previous_spec is not None and record.previous_digest is not None
    previous = service_from(record.previous_spec, target)
    to_revision = record.previous_revision or record.revision
    draft.events.append(
        Event(
            "rollout.rolled-back",
            f"{target.name}: {reason}; rolling back to {to_revision[:12]}",
            service=target.name,
            revision=record.revision,
            data={"failedDigest": record.spec_digest, "reason": reason},
        )
    )
    draft.applied.append(
        Applied("Service", target.name, to_revision, previous.digest, previous.canonical)
    )
    draft.update(
        revision=to_revision,
        spec_digest=record.previous_digest,
        spec=record.previous_spec,
        phase=RolloutPhase.ROLLED_BACK,
        failed_digest=record.spec_digest,
        failed_revision=record.revision,
        reached_healthy=False,
        last_error=reason,
        started_at=inp.now,
        progress_at=inp.now,
        available=0,
        message=f"rolled back: {reason}",
    )


def _finish(
    inp: ServiceInput,
    draft: _Draft,
    target: Service,
    observed: _Observed,
    *,
    stops: tuple[StopReplica, ...] = (),
    creates: tuple[int, ...] = (),
    create_reasons: Mapping[int, str] = MappingProxyType({}),
    stable: Service | None = None,
    stable_creates: tuple[int, ...] = (),
    backoff: _Backoff,
    consume: tuple[str, ...] = (),
    intent: TrafficIntent | None = None,
    traffic: SetTraffic | None = None,
    analyses: tuple[AnalysisRequest, ...] = (),
    entry: tuple[str, float] | None = None,
    drift: tuple[str, ...] = (),
    held_by: tuple[str, ...] = (),
) -> ServiceDecision:
    record = draft.record
    rollback: RollBack | None = None
    if record.failed_digest is not None and (
        inp.record is None or inp.record.failed_digest != record.failed_digest
    ):
        rollback = RollBack(
            target.name, record.failed_digest, record.revision, record.last_error or ""
        )
    waits = list(draft.waits)
    held = [
        (slot, b, "")
        for slot, b in backoff.states.items()
        if slot in backoff.blocked and slot not in observed.completed
    ]
    held += [
        (slot, b, " (stable version)")
        for slot, b in backoff.stable_states.items()
        if slot in backoff.stable_blocked
    ]
    for slot, b, which in sorted(held, key=lambda h: (h[0], h[2])):
        # No seconds left in the text: a plan's digest must not change by the second.
        # A replica that never ran did not restart: its failed starts are said so.
        if b.failed_start:
            what = f"back-off after {_plural(b.restarts, 'failed start')}"
        else:
            what = f"crash-loop back-off after {_plural(b.restarts, 'restart')}"
        waits.append(
            Wait(
                target.name,
                f"{target.name}-{slot}{which} in {what} (last: {b.reason or 'exited'})",
            )
        )
    views = observed.views
    progress = ServiceProgress(
        name=target.name,
        phase=str(record.phase),
        message=record.message,
        desired=target.replicas,
        ready=sum(1 for v in views if v.ready),
        updated=sum(1 for v in views if v.template == target.template_digest and v.ready),
        drift=len(drift),
    )
    return ServiceDecision(
        name=target.name,
        target=target,
        record=record,
        save=draft.save or bool(consume),
        reset_requests=draft.reset_requests,
        consume=consume,
        applied=tuple(draft.applied),
        events=tuple(draft.events),
        backoff=backoff.updates,
        forgiven=backoff.forgiven,
        stops=stops,
        creates=creates,
        create_reasons=create_reasons,
        stable=stable,
        stable_revision=record.previous_revision if stable is not None else None,
        stable_creates=stable_creates,
        waits=tuple(waits),
        rollback=rollback,
        traffic=traffic,
        intent=intent,
        analyses=analyses,
        analysis_entry=entry,
        progress=progress,
        drift=drift,
        held_by=held_by,
        requeue_after=backoff.retry_in,
        bounds_scale=bounds_scale(target, inp.live, inp.autoscaled, inp.now),
    )


def service_failure_wait(
    name: str, failure: BackoffRecord, now: float, policy: CrashLoop = DEFAULT_CRASH_LOOP
) -> Wait | None:
    """A Wait for a service whose last attempt failed, while its retry backs off."""
    left = remaining(failure, now, policy)
    if left <= 0:
        return None
    return Wait(
        name,
        f"retry in {left:.0f}s after {_plural(failure.restarts, 'failure')}: {failure.reason}",
    )


def undecided(inp: ServiceInput, why: str) -> ServiceDecision:
    """The decision for a service that could not be decided: nothing is done to it (its
    replicas run on as they are), nothing is saved, and the plan and status say why."""
    service = inp.service
    record = inp.record or RolloutRecord(
        service=service.name,
        revision=inp.revision,
        spec_digest=service.template_digest,
        strategy=service.strategy.type,
        phase=RolloutPhase.PROGRESSING,
        spec=service.canonical,
        message=why,
    )
    live = inp.live.replicas
    return ServiceDecision(
        name=service.name,
        target=service,
        record=replace(record, message=why, last_error=why),
        save=False,
        waits=(Wait(service.name, why),),
        progress=ServiceProgress(
            service.name,
            str(RolloutPhase.DEGRADED),
            why,
            service.replicas,
            sum(1 for r in live if r.ready),
            sum(1 for r in live if r.ready and r.template_digest == service.template_digest),
        ),
    )
