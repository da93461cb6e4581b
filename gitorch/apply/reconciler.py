"""The reconciler: one level-triggered pass takes the cluster one step toward Git.

Each pass observes everything (runtimes are the ground truth of which replicas exist),
decides per service with the strategy's pure step function, executes the actions, and
records where each rollout stands. Nothing is remembered in memory that a pass needs for
correctness: a daemon killed at any instant and restarted computes the same next step
from the replicas' labels and the store, so a reconcile interrupted anywhere converges,
never duplicating or orphaning a replica. (Memory holds only what makes passes faster or
quieter: which replicas are being drained, which exits were already counted.)

Order of one pass:

1. observe nodes and replicas; start probing replicas the health monitor does not know;
2. record the revision (in progress) the first time it is seen;
3. per service, in dependsOn waves (a service waits until its dependencies are healthy):
   pick the target (the desired spec, or the last good one after a rollback), run the
   strategy, then create replicas (placed by the scheduler), remove dead ones;
4. prune services that left Git (inventory minus desired);
5. publish the routing table (ready replicas in, stopping ones draining), wait for
   in-flight requests on stopping replicas, then stop and remove them;
6. when every service has settled, finish the revision: succeeded, failed or rolled-back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gitorch.apply.backoff import (
    DEFAULT_CRASH_LOOP,
    BackoffState,
    CrashLoop,
    describe,
    record_restart,
    remaining,
    reset_if_stable,
)
from gitorch.apply.health import HealthMonitor
from gitorch.apply.nodes import EVICTED, NodeTracker, NodeVerdicts
from gitorch.apply.progressive import Progressive, version_key
from gitorch.apply.replicas import replica_spec, slot_of
from gitorch.diff.compute import compute_plan, dependency_waves
from gitorch.errors import GitorchError, RuntimeDriverError
from gitorch.live import NodeTarget, observe
from gitorch.live.model import LiveReplica, LiveService, LiveState
from gitorch.manifests.build import build_service, priority_and_qos_of, requests_of
from gitorch.manifests.model import DesiredState, Node, Origin, Service, Volume
from gitorch.runtime.base import Runtime
from gitorch.scheduler import LEAST_ALLOCATED, NodeView, Request, Running, schedule
from gitorch.state import (
    BackoffRecord,
    RevisionResult,
    RolloutPhase,
    RolloutRecord,
    StateStore,
)
from gitorch.strategies.machine import (
    Create,
    Decision,
    Phase,
    ReplicaView,
    RolloutInput,
    Stop,
)
from gitorch.strategies.rolling import is_available
from gitorch.traffic.discovery import service_env
from gitorch.traffic.table import (
    Backend,
    DataPlane,
    Route,
    RoutingTable,
    TlsFiles,
    VersionRule,
)

log = logging.getLogger("gitorch.reconciler")

_SETTLED = (RolloutPhase.HEALTHY, RolloutPhase.ROLLED_BACK, RolloutPhase.DEGRADED)


@dataclass(frozen=True)
class CommitMeta:
    """What the revision record keeps of the commit being applied."""

    sha: str
    author: str = ""
    committed_at: str | None = None
    signer: str | None = None
    message: str = ""


@dataclass(frozen=True)
class ServiceProgress:
    """One service after a pass, for progress displays and status."""

    name: str
    phase: str
    message: str
    desired: int
    ready: int
    updated: int


@dataclass(frozen=True)
class PassResult:
    revision: str
    services: tuple[ServiceProgress, ...]
    converged: bool  # every service settled, nothing left to prune or drain
    failed: bool  # a service of this revision rolled back or is degraded
    actions: int  # how many replicas were created or stopped this pass
    errors: tuple[str, ...] = ()


@dataclass
class _Work:
    """What a pass decided, executed at its end."""

    drain: list[tuple[str, LiveReplica, float]] = field(
        default_factory=list
    )  # (service, replica, grace)
    actions: int = 0
    errors: list[str] = field(default_factory=list)
    # Placement bookkeeping of this pass: the live state was observed before it, so the
    # replicas started for one service and the victims preempted for it must be counted
    # when the next service is placed (as ``plan`` does in its single schedule() call).
    placed: list[Running] = field(default_factory=list)
    preempted: set[str] = field(default_factory=set)  # replica ids
    unplaced: dict[str, str] = field(default_factory=dict)  # service -> why a slot stays empty


class Reconciler:
    """Drives the cluster toward a desired state, one pass at a time."""

    def __init__(
        self,
        *,
        store: StateStore,
        targets: Sequence[NodeTarget],
        runtimes: Mapping[str, Runtime],
        health: HealthMonitor,
        dataplane: DataPlane,
        cluster: str,
        advertise_host: str = "127.0.0.1",
        secrets_dir: Path | None = None,
        scoring: str = LEAST_ALLOCATED,
        drain_timeout: float = 10.0,
        node_grace: float = 30.0,
        crash_loop: CrashLoop = DEFAULT_CRASH_LOOP,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.nodes = NodeTracker(store, grace=node_grace, clock=clock)
        self.progressive = Progressive(store, dataplane)
        self._verdicts = NodeVerdicts()
        self.targets = list(targets)
        self.runtimes = dict(runtimes)
        self.health = health
        self.dataplane = dataplane
        self.cluster = cluster
        self.advertise_host = advertise_host
        self.secrets_dir = secrets_dir
        self.scoring = scoring
        self.drain_timeout = drain_timeout
        self.crash_loop = crash_loop
        self.clock = clock
        self._counted_exits: set[str] = set()  # replica ids whose exit was recorded
        self._draining: set[str] = set()
        self._failed_digests: dict[str, str] = {}  # service -> template rolled back from
        self._reaped = False
        # The newest revision a plan showed to change nothing (not recorded as applied).
        self._no_change_revision: str | None = None
        self._last_table: RoutingTable | None = None

    @property
    def routing_table(self) -> RoutingTable | None:
        """The table the data plane serves now (None before the first pass published one):
        the daemon reads weights and routes from it for /metrics and status."""
        return self._last_table

    # ------------------------------------------------------------------ the pass

    def reconcile(self, desired: DesiredState, commit: CommitMeta | None = None) -> PassResult:
        """One pass. Never raises for a single service's trouble: it is recorded instead."""
        now = self.clock()
        self._register_nodes()
        if not self._reaped:
            self._reap_orphans()
        live = observe(self.targets, self.runtimes, self.cluster, self.store)
        live, self._verdicts = self.nodes.update(live, self.targets, desired)
        self._forget_vanished(live)
        records = {r.service: r for r in self.store.list_rollouts()}
        backoff = {(b.service, b.slot): b for b in self.store.list_backoff()}
        revision_id = self._revision_started(desired, live, commit)
        self._record_inventory_of_nodes_and_volumes(desired)
        work = _Work()
        progress: dict[str, ServiceProgress] = {}
        phases: dict[str, RolloutPhase] = {}
        targets_by_name: dict[str, Service] = {}

        for wave in dependency_waves(desired.services):
            # Within a wave, higher priority first: the order plan places replicas in.
            for name in sorted(wave, key=lambda n: (-desired.services[n].placement.priority, n)):
                service = desired.services[name]
                waiting = [
                    d for d in service.depends_on if phases.get(d) is not RolloutPhase.HEALTHY
                ]
                try:
                    phase, prog, target = self._step_service(
                        desired, service, live, records.get(name), backoff, now, waiting, work
                    )
                except GitorchError as exc:
                    work.errors.append(f"{name}: {exc.message}")
                    log.warning("service %s: %s", name, exc.message, extra={"service": name})
                    phase = records[name].phase if name in records else RolloutPhase.PROGRESSING
                    prog = ServiceProgress(name, str(phase), exc.message, service.replicas, 0, 0)
                    target = service
                phases[name] = phase
                progress[name] = prog
                targets_by_name[name] = target

        pruning = self._prune(desired, live, records, work)
        self._failed_digests = {
            r.service: r.failed_digest
            for r in self.store.list_rollouts()
            if r.failed_digest is not None and r.spec_digest != r.failed_digest
        }
        self._publish_and_drain(desired, live, targets_by_name, work)

        settled = all(p in _SETTLED for p in phases.values()) and not pruning
        # Derived from the store, not memory, so a restarted daemon reports the same.
        final = {r.service: r for r in self.store.list_rollouts()}
        rolled_back = {
            name
            for name, svc in desired.services.items()
            if name in final and final[name].failed_digest == svc.template_digest
        }
        degraded = {n for n, p in phases.items() if p is RolloutPhase.DEGRADED}
        failed = bool(rolled_back or degraded)
        if settled and revision_id is not None:
            self._revision_finished(revision_id, desired, rolled_back, degraded, phases)
        return PassResult(
            revision=desired.revision,
            services=tuple(progress[n] for n in sorted(progress)),
            converged=settled and not self._draining,
            failed=failed,
            actions=work.actions,
            errors=tuple(work.errors),
        )

    # ------------------------------------------------------------------ one service

    def _step_service(
        self,
        desired: DesiredState,
        service: Service,
        live: LiveState,
        record: RolloutRecord | None,
        backoff: Mapping[tuple[str, int], BackoffRecord],
        now: float,
        waiting: list[str],
        work: _Work,
    ) -> tuple[RolloutPhase, ServiceProgress, Service]:
        name = service.name
        record, target = self._target(desired, service, record, now)
        live_service = live.services.get(name) or LiveService(name, None)
        self._track(target, record, live_service)
        now = max(now, self.clock())  # probes just run belong to this decision's present
        views, dead, completed = self._views(target, live_service, now)
        blocked = self._blocked_slots(name, backoff, completed, now, live_service, dead, target)

        if waiting and record.phase is not RolloutPhase.HEALTHY:
            message = f"waiting for {', '.join(waiting)} to be healthy"
            record = self._save(record, message=message)
            return record.phase, self._progress(target, record, views, now), target

        inp = RolloutInput(
            service=name,
            desired=self._desired_count(target, live_service),
            target=target.template_digest,
            replicas=tuple(views),
            now=now,
            started_at=record.started_at,
            # A settled service that needs a repair starts the repair's window now.
            last_progress_at=now
            if record.reached_healthy
            and record.phase in (RolloutPhase.HEALTHY, RolloutPhase.ROLLED_BACK)
            else (record.progress_at or record.started_at),
            progress_deadline_seconds=float(target.strategy.progress_deadline_seconds),
            min_ready_seconds=float(target.strategy.min_ready_seconds),
            max_surge=target.strategy.rolling_update.max_surge,
            max_unavailable=target.strategy.rolling_update.max_unavailable,
            step=record.step,
            blocked_slots=frozenset(blocked),
        )
        rolled_back = (
            record.failed_digest is not None and record.spec_digest != record.failed_digest
        )
        decision = self.progressive.decide(target, record, inp, rolled_back)
        decision = self._apply_drift_policy(target, record, decision, live_service, views)
        self._execute(desired, target, live, live_service, decision, work)

        # The strategy's own notion of available (running, ready long enough).
        available = sum(
            1 for v in views if v.template == target.template_digest and is_available(v, inp)
        )
        progress_at = now if available > record.available else (record.progress_at or now)
        record = self._after_decision(
            desired, target, record, decision, available, progress_at, now
        )
        unplaced = work.unplaced.get(name)
        if unplaced is not None:
            # Said where status looks (rollout.lastError), not only in the log: a slot
            # that fits nowhere (or whose replica was preempted) is otherwise silent
            # until the progress deadline turns it into a bare "deadline exceeded".
            record = self._save(record, message=unplaced, last_error=unplaced)
        return record.phase, self._progress(target, record, views, now), target

    def _target(
        self, desired: DesiredState, service: Service, record: RolloutRecord | None, now: float
    ) -> tuple[RolloutRecord, Service]:
        """The rollout record for ``service`` and the spec it rolls toward.

        After a rollback the service stays on the last good spec while Git still asks for
        the template that failed; a commit that changes the template starts over.
        """
        if record is not None and record.failed_digest == service.template_digest:
            return record, self._service_from(record.spec, service)
        if record is not None and record.spec_digest == service.template_digest:
            if dict(record.spec) != dict(service.canonical):  # replicas, strategy, ... changed
                scaled = record.spec.get("spec", {}).get("replicas") != service.replicas
                record = self._save(
                    record,
                    spec=service.canonical,
                    revision=desired.revision,
                    phase=RolloutPhase.PROGRESSING if scaled else record.phase,
                    started_at=now if scaled else record.started_at,
                    progress_at=now if scaled else record.progress_at,
                )
                self.store.record_applied(
                    "Service", service.name, desired.revision, service.digest, service.canonical
                )
            return record, service
        # A new template: a new rollout. The previous *good* spec is what a failure returns to.
        previous: tuple[str | None, str | None, Mapping[str, Any] | None]
        if record is not None and record.phase in (RolloutPhase.HEALTHY, RolloutPhase.ROLLED_BACK):
            previous = (record.revision, record.spec_digest, record.spec)
        elif record is not None:
            previous = (record.previous_revision, record.previous_digest, record.previous_spec)
        else:
            previous = (None, None, None)
        fresh = RolloutRecord(
            service=service.name,
            revision=desired.revision,
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
        # One transaction: a daemon killed here leaves either all three or none.
        with self.store.transaction():
            # Requests made for the rollout this one replaces do not carry over.
            stored = self.store.upsert_rollout(fresh, reset_requests=True)
            self.store.record_applied(
                "Service", service.name, desired.revision, service.digest, service.canonical
            )
            self.store.append_event(
                "rollout.started",
                f"{service.name}: rolling out {service.template_digest[:12]} ({service.strategy.type})",
                service=service.name,
                revision=desired.revision,
            )
        return stored, service

    def _service_from(self, canonical: Mapping[str, Any], fallback: Service) -> Service:
        try:
            return build_service(canonical, Origin("(state store)", 0))
        except (KeyError, TypeError, ValueError):
            return fallback

    def _desired_count(self, target: Service, live_service: LiveService) -> int:
        if target.autoscale is None:
            return target.replicas
        # The autoscaler owns the count (not built yet): keep what runs, within bounds.
        running = len(live_service.running)
        return max(
            target.autoscale.min_replicas,
            min(target.autoscale.max_replicas, running or target.replicas),
        )

    def _views(
        self, target: Service, live_service: LiveService, now: float
    ) -> tuple[list[ReplicaView], list[LiveReplica], set[int]]:
        """Replica views for the strategy; dead replicas; slots whose replica completed."""
        views: list[ReplicaView] = []
        dead: list[LiveReplica] = []
        completed: set[int] = set()
        for replica in live_service.replicas:
            if replica.id in self._draining:
                continue  # already on its way out
            slot = slot_of(replica.replica)
            state = replica.state
            ready, ready_since = False, None
            health = self.health.health(replica.id) if state == "running" else None
            if health is not None:
                ready, ready_since = health.ready, health.ready_since
                if health.needs_restart:
                    state = "exited"  # liveness or startup failed: replace it
            if state == "exited":
                finished_ok = replica.exit_code == 0 and replica.state == "exited"
                policy = target.restart_policy
                if policy == "Never" or (policy == "OnFailure" and finished_ok):
                    completed.add(slot)
                    continue  # done for good: keep it (logs), never recreate the slot
                dead.append(replica)
            template = replica.template_digest or ""
            if replica.id in self._verdicts.evicting:
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
        return views, dead, completed

    def _track(self, target: Service, record: RolloutRecord, live_service: LiveService) -> None:
        """Probe every running replica with the probes of the spec it runs.

        A replica seen for the first time (after a restart, or made outside this process)
        is probed once right away: until then its readiness is unknown, and a strategy
        must not mistake "not probed yet" for "not ready" (it would stop old replicas
        it believes unavailable).
        """
        by_template = {target.template_digest: target}
        if record.previous_spec and record.previous_digest:
            by_template.setdefault(
                record.previous_digest, self._service_from(record.previous_spec, target)
            )
        fresh: list[str] = []
        for replica in live_service.replicas:
            if (
                replica.state != "running"
                or replica.instance is None
                or replica.node not in self.runtimes
            ):
                continue
            spec = by_template.get(replica.template_digest or "", target)
            known = self.health.health(replica.id) is not None
            try:
                self.health.track(replica.id, replica.node, replica.instance, spec)
            except GitorchError as exc:
                log.warning("cannot probe %s: %s", replica.name, exc.message)
                continue
            if not known:
                fresh.append(replica.id)
        if fresh:
            with ThreadPoolExecutor(max_workers=min(8, len(fresh))) as pool:
                list(pool.map(self.health.observe_now, fresh))

    def _blocked_slots(
        self,
        name: str,
        backoff: Mapping[tuple[str, int], BackoffRecord],
        completed: set[int],
        now: float,
        live_service: LiveService,
        dead: list[LiveReplica],
        target: Service,
    ) -> set[int]:
        """Slots in crash-loop back-off (plus completed ones); counts new exits once."""
        states = {
            slot: BackoffState(b.restarts, b.last_restart_at, b.last_exit_code)
            for (svc, slot), b in backoff.items()
            if svc == name
        }
        desired = self._desired_count(target, live_service)
        for replica in dead:
            if replica.id in self._counted_exits:
                continue
            self._counted_exits.add(replica.id)
            slot = slot_of(replica.replica)
            if replica.template_digest != target.template_digest or not 1 <= slot <= desired:
                # A replica of a version being replaced, or of a slot being scaled away, is
                # not restarted but removed, and its exit need not be a crash: a daemon
                # killed between the SIGTERM and the removal leaves exactly this. Counting
                # it would log a false restart and hold a slot back in crash-loop back-off.
                continue
            state = record_restart(states.get(slot, BackoffState()), now, replica.exit_code)
            states[slot] = state
            self.store.record_backoff(
                BackoffRecord(name, slot, state.restarts, now, replica.exit_code)
            )
            self.store.append_event(
                "replica.restarted",
                f"{replica.replica} exited"
                + (f" with code {replica.exit_code}" if replica.exit_code is not None else "")
                + f"; {describe(state, now, self.crash_loop)}",
                service=name,
                data={
                    "replica": replica.replica,
                    "exitCode": replica.exit_code,
                    "restarts": state.restarts,
                },
            )
        # A replica that stayed up long enough forgives its slot's past crashes.
        for replica in live_service.replicas:
            slot = slot_of(replica.replica)
            if (
                slot not in states
                or replica.state != "running"
                or replica.template_digest != target.template_digest
            ):
                continue
            state = reset_if_stable(states[slot], replica.started_at, now, self.crash_loop)
            if state.restarts == 0:
                self.store.clear_backoff(name, slot)
                states.pop(slot)
        blocked = set(completed)
        blocked.update(
            slot for slot, state in states.items() if remaining(state, now, self.crash_loop) > 0
        )
        return blocked

    def _apply_drift_policy(
        self,
        target: Service,
        record: RolloutRecord,
        decision: Decision,
        live_service: LiveService,
        views: list[ReplicaView],
    ) -> Decision:
        """``drift: warn|ignore``: a healthy service whose replicas vanished is not repaired.

        Crashed replicas are still restarted (that is the restart policy, not drift);
        only slots with no replica at all (removed outside gitorch) are left alone.
        """
        if target.drift == "correct" or record.phase is not RolloutPhase.HEALTHY:
            return decision
        occupied = {v.slot for v in views}
        creates = [a for a in decision.actions if isinstance(a, Create) and a.slot not in occupied]
        if not creates:
            return decision
        if target.drift == "warn":
            self.store.append_event(
                "drift.detected",
                f"{target.name}: {len(creates)} replica(s) missing; drift policy warn leaves them",
                service=target.name,
            )
            log.warning("%s: %d replica(s) missing (drift: warn)", target.name, len(creates))
        kept = tuple(a for a in decision.actions if a not in creates)
        return replace(decision, actions=kept)

    # ------------------------------------------------------------------ executing

    def _execute(
        self,
        desired: DesiredState,
        target: Service,
        live: LiveState,
        live_service: LiveService,
        decision: Decision,
        work: _Work,
    ) -> None:
        by_id = {r.id: r for r in live_service.replicas}
        stops = [a for a in decision.actions if isinstance(a, Stop)]
        creates = [a for a in decision.actions if isinstance(a, Create)]
        # Dead replicas first: they serve nothing and may hold a name or a port.
        for action in stops:
            replica = by_id.get(action.replica_id)
            if replica is None or replica.state == "unknown":
                continue  # unknown: its node does not answer; removed once it does
            if replica.state != "running" or self._needs_restart(replica):
                self._remove_now(replica, work)
            else:
                work.drain.append((target.name, replica, float(target.termination_grace_seconds)))
                self._draining.add(replica.id)
        if creates:
            self._create(desired, target, live, creates, work)

    def _preempt(
        self,
        live: LiveState,
        target: Service,
        decisions: Sequence[Any],
        by_key: Mapping[tuple[str, str, str], LiveReplica],
        work: _Work,
    ) -> None:
        """Stop the lower-priority replicas the scheduler chose to make room."""
        for placed in decisions:
            for service, replica_label, node in placed.victims:
                victim = by_key.get((service, replica_label, node))
                if victim is None or victim.id in self._draining:
                    continue
                self.store.append_event(
                    "replica.preempted",
                    f"{replica_label} on {node} preempted for {placed.replica} "
                    f"(priority {target.placement.priority})",
                    service=service,
                    data={"replica": replica_label, "node": node, "for": placed.replica},
                )
                work.drain.append((service, victim, _grace_of(live.services[service])))
                self._draining.add(victim.id)
                work.preempted.add(victim.id)

    def _needs_restart(self, replica: LiveReplica) -> bool:
        health = self.health.health(replica.id)
        return bool(health and health.needs_restart)

    def _remove_now(self, replica: LiveReplica, work: _Work) -> None:
        self.health.untrack(replica.id)
        runtime = self.runtimes.get(replica.node)
        if runtime is None:
            return
        try:
            runtime.remove(replica.id)
            work.actions += 1
        except RuntimeDriverError as exc:
            work.errors.append(f"{replica.name}: {exc.message}")

    def _discovery(self, desired: DesiredState, service: Service) -> dict[str, str]:
        endpoints = {
            dep: (self.advertise_host, desired.services[dep].expose.port)  # type: ignore[union-attr]
            for dep in service.depends_on
            if dep in desired.services and desired.services[dep].expose is not None
        }
        return service_env(endpoints)

    def _create(
        self,
        desired: DesiredState,
        target: Service,
        live: LiveState,
        creates: list[Create],
        work: _Work,
    ) -> None:
        cordoned = self._verdicts.cordoned
        nodes = [
            NodeView(
                n.name,
                n.cpu_millis,
                n.memory_bytes,
                n.labels,
                n.ready,
                n.unschedulable or n.name in cordoned,
                n.taints,
            )
            for n in live.nodes.values()
            if n.name in self.runtimes
        ]
        running: list[Running] = []
        by_key: dict[tuple[str, str, str], LiveReplica] = {}
        for name, svc in live.services.items():
            canonical = svc.applied.canonical if svc.applied else None
            cpu, mem = requests_of(canonical)
            priority, qos = priority_and_qos_of(canonical)
            for r in svc.replicas:
                if r.state == "running" and r.id not in work.preempted:
                    running.append(Running(name, r.replica, r.node, cpu, mem, priority, qos))
                    by_key[(name, r.replica, r.node)] = r
        running.extend(work.placed)
        cpu = target.resources.requests.cpu_millis or 0
        mem = target.resources.requests.memory_bytes or 0
        requests = [
            Request(
                target.name,
                f"{target.name}-{a.slot}",
                cpu,
                mem,
                target.placement,
                target.resources.qos_class,
            )
            for a in creates
        ]
        decisions = schedule(nodes, running, requests, strategy=self.scoring, preemption=True)
        self._preempt(live, target, decisions, by_key, work)
        discovery = self._discovery(desired, target)

        def start(pair: tuple[Create, Any]) -> None:
            action, placed = pair
            if placed.node is None:
                why = f"{target.name}-{action.slot} cannot be placed: " + "; ".join(placed.reasons)
                work.errors.append(why)
                work.unplaced[target.name] = why
                return
            spec = replica_spec(
                target,
                action.slot,
                cluster=self.cluster,
                revision=desired.revision,
                discovery=discovery,
                secrets_dir=self.secrets_dir,
            )
            runtime = self.runtimes[placed.node]
            try:
                instance = runtime.create(spec, self.cluster)
            except GitorchError as exc:
                work.errors.append(f"{target.name}-{action.slot}: {exc.message}")
                return
            work.actions += 1
            work.placed.append(
                Running(
                    target.name,
                    f"{target.name}-{action.slot}",
                    placed.node,
                    cpu,
                    mem,
                    target.placement.priority,
                    target.resources.qos_class,
                )
            )
            self.health.track(instance.id, placed.node, instance, target)

        with ThreadPoolExecutor(max_workers=max(1, min(8, len(creates)))) as pool:
            list(pool.map(start, zip(creates, decisions, strict=True)))

    # ------------------------------------------------------------------ bookkeeping

    def _after_decision(
        self,
        desired: DesiredState,
        target: Service,
        record: RolloutRecord,
        decision: Decision,
        available: int,
        progress_at: float,
        now: float,
    ) -> RolloutRecord:
        """Record where the service stands after this pass.

        A rollout to a new template that fails rolls back (when allowed). Once a template
        has been healthy, later trouble (a replica died or was removed, a scale-up cannot
        be placed) is a *repair*: it gets its own progress window and, if it cannot
        succeed, makes the service Degraded. A version that worked is never rolled back
        because a replica crashed.
        """
        rolled_back = (
            record.failed_digest is not None and record.spec_digest != record.failed_digest
        )
        settled = RolloutPhase.ROLLED_BACK if rolled_back else RolloutPhase.HEALTHY
        common: dict[str, Any] = {
            "available": available,
            "message": decision.message,
            "step": decision.step,
        }
        # What this decision used up, cleared in the transaction that saves the decision.
        # Only a request this pass saw (``record`` was read at its start) can have been
        # acted on; one that arrived since stays pending for the next pass.
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
                self.store.append_event(
                    "rollout.completed",
                    f"{target.name}: {available} replica(s) of {record.spec_digest[:12]} available",
                    service=target.name,
                    revision=record.revision,
                )
            return self._save(
                record,
                consume=consume,
                phase=settled,
                reached_healthy=True,
                progress_at=progress_at,
                **common,
            )
        if not record.reached_healthy:
            if decision.phase is Phase.FAILED:
                if record.abort_requested:  # acted on: the rollout fails (rolls back) now
                    consume.append("abort")
                record = replace(record, **common)
                return self._fail(
                    desired, target, record, decision.failure or decision.message, now, consume
                )
            if record.phase is RolloutPhase.DEGRADED:
                phase = RolloutPhase.DEGRADED
            elif rolled_back:
                phase = RolloutPhase.ROLLED_BACK
            elif decision.phase is Phase.PAUSED:
                phase = RolloutPhase.PAUSED
            else:
                phase = RolloutPhase.PROGRESSING
            return self._save(
                record, consume=consume, phase=phase, progress_at=progress_at, **common
            )
        # A repair of a version that worked.
        if record.phase in (RolloutPhase.HEALTHY, RolloutPhase.ROLLED_BACK):
            record = replace(record, started_at=now)
            progress_at = now  # the repair's own window starts now
        if decision.phase is Phase.FAILED:
            if record.phase is not RolloutPhase.DEGRADED:
                reason = decision.failure or decision.message
                self.store.append_event(
                    "service.degraded",
                    f"{target.name}: {reason}",
                    service=target.name,
                    revision=record.revision,
                )
                log.error("%s is degraded: %s", target.name, reason, extra={"service": target.name})
            return self._save(
                record,
                consume=consume,
                phase=RolloutPhase.DEGRADED,
                progress_at=progress_at,
                last_error=decision.failure or decision.message,
                **common,
            )
        phase = (
            RolloutPhase.DEGRADED
            if record.phase is RolloutPhase.DEGRADED
            else RolloutPhase.PROGRESSING
        )
        return self._save(record, consume=consume, phase=phase, progress_at=progress_at, **common)

    def _fail(
        self,
        desired: DesiredState,
        target: Service,
        record: RolloutRecord,
        reason: str,
        now: float,
        consume: Sequence[str] = (),
    ) -> RolloutRecord:
        if record.phase is RolloutPhase.DEGRADED:
            return record
        can_roll_back = (
            target.strategy.auto_rollback
            and record.previous_spec is not None
            and record.previous_digest is not None
            and record.failed_digest is None  # the rollback itself failing: no loop
        )
        if not can_roll_back:
            self.store.append_event(
                "rollout.failed",
                f"{target.name}: {reason}",
                service=target.name,
                revision=record.revision,
            )
            log.error(
                "rollout of %s failed: %s", target.name, reason, extra={"service": target.name}
            )
            return self._save(
                record,
                consume=consume,
                phase=RolloutPhase.DEGRADED,
                last_error=reason,
                message=f"failed: {reason}",
            )
        assert record.previous_spec is not None and record.previous_digest is not None
        with self.store.transaction():  # event, inventory and record, or none
            self.store.append_event(
                "rollout.rolled-back",
                f"{target.name}: {reason}; rolling back to {(record.previous_revision or '')[:12]}",
                service=target.name,
                revision=record.revision,
                data={"failedDigest": record.spec_digest, "reason": reason},
            )
            log.error(
                "rollout of %s failed (%s): rolling back",
                target.name,
                reason,
                extra={"service": target.name},
            )
            previous = self._service_from(record.previous_spec, target)
            self.store.record_applied(
                "Service",
                target.name,
                record.previous_revision or record.revision,
                previous.digest,
                previous.canonical,
            )
            rolled = self._save(
                record,
                consume=consume,
                revision=record.previous_revision or record.revision,
                spec_digest=record.previous_digest,
                spec=record.previous_spec,
                phase=RolloutPhase.ROLLED_BACK,
                failed_digest=record.spec_digest,
                reached_healthy=False,
                last_error=reason,
                started_at=now,
                progress_at=now,
                available=0,
                message=f"rolled back: {reason}",
            )
        return rolled

    def _save(
        self, record: RolloutRecord, *, consume: Sequence[str] = (), **changes: Any
    ) -> RolloutRecord:
        """Save ``record`` with ``changes``; the request flags are the store's (see
        :meth:`StateStore.upsert_rollout`). ``consume``: the requests ("promote",
        "abort") this save acts on, cleared in the same transaction (compare-and-clear),
        so each is acted on exactly once or stays pending, a crash included."""
        with self.store.transaction():
            for what in consume:
                self.store.consume_request(record.service, what)
            return self.store.upsert_rollout(replace(record, **changes))

    def _progress(
        self, target: Service, record: RolloutRecord, views: list[ReplicaView], now: float
    ) -> ServiceProgress:
        return ServiceProgress(
            name=target.name,
            phase=str(record.phase),
            message=record.message,
            desired=target.replicas,
            ready=sum(1 for v in views if v.ready),
            updated=sum(1 for v in views if v.template == target.template_digest and v.ready),
        )

    def _reap_orphans(self) -> None:
        """Once per reconciler: processes a killed daemon started but never recorded."""
        self._reaped = True
        for name, runtime in self.runtimes.items():
            reap = getattr(runtime, "reap_orphans", None)
            if reap is None:
                continue
            killed = reap()
            if killed:
                log.warning("node %s: killed %d unrecorded replica process(es)", name, killed)
                self.store.append_event(
                    "replica.orphan-removed", f"{name}: {killed} unrecorded process(es) killed"
                )

    def _forget_vanished(self, live: LiveState) -> None:
        """Stop probing replicas that are gone (removed outside gitorch, or by us)."""
        present = {r.id for r in live.replicas()}
        for replica_id in self.health.tracked():
            if replica_id not in present:
                self.health.untrack(replica_id)

    def _register_nodes(self) -> None:
        known = {n.name for n in self.store.list_nodes()}
        for target in self.targets:
            if target.name not in known:
                self.store.register_node(
                    target.name,
                    target.driver,
                    endpoint=target.endpoint or "",
                    labels=dict(target.labels),
                )

    def _record_inventory_of_nodes_and_volumes(self, desired: DesiredState) -> None:
        applied = {(a.kind, a.name): a.digest for a in self.store.list_applied()}
        objects: list[Node | Volume] = [*desired.nodes.values(), *desired.volumes.values()]
        for obj in objects:
            if applied.get((obj.kind, obj.name)) != obj.digest:
                self.store.record_applied(
                    obj.kind, obj.name, desired.revision, obj.digest, obj.canonical
                )
        for kind, name in applied:
            if kind == "Node" and name not in desired.nodes:
                self.store.forget_applied(kind, name)
                self.store.remove_node(name)
            elif kind == "Volume" and name not in desired.volumes:
                self.store.forget_applied(kind, name)

    def _revision_started(
        self, desired: DesiredState, live: LiveState, commit: CommitMeta | None
    ) -> int | None:
        last = self.store.last_attempted_revision()
        if last is not None and last.sha == desired.revision:
            return last.id if last.result is RevisionResult.IN_PROGRESS else None
        if desired.revision == self._no_change_revision:
            return None  # already found to change nothing: no plan on every pass
        plan = compute_plan(desired, live, scoring=self.scoring)
        if not plan.changes and last is not None:
            self._no_change_revision = desired.revision
            return None  # nothing to apply (e.g. a commit that only touched docs)
        if last is not None and last.result is RevisionResult.IN_PROGRESS:
            self.store.finish_revision(
                last.id,
                RevisionResult.FAILED,
                reason=f"superseded by {desired.revision[:12]} before it converged",
            )
        changes = [
            {
                "kind": c.kind,
                "name": c.name,
                "action": c.action,
                "fields": [d.path for d in c.diff][:50],
            }
            for c in plan.changes
        ]
        with self.store.transaction():  # the revision and its event, or neither
            record = self.store.record_revision(
                desired.revision,
                author=commit.author if commit else "",
                committed_at=commit.committed_at if commit else None,
                signer=commit.signer if commit else None,
                services=sorted({c.name for c in plan.changes if c.kind == "Service"}),
                summary={
                    "changes": changes,
                    "counts": plan.summary,
                    "message": (commit.message if commit else "")[:500],
                },
            )
            self.store.append_event(
                "revision.started",
                f"applying {desired.revision[:12]}: {plan.summary['create']} to create, "
                f"{plan.summary['update']} to update, {plan.summary['delete']} to delete",
                revision=desired.revision,
            )
        return record.id

    def _revision_finished(
        self,
        revision_id: int,
        desired: DesiredState,
        rolled_back: set[str],
        degraded: set[str],
        phases: Mapping[str, RolloutPhase],
    ) -> None:
        if rolled_back:
            result, reason = (
                RevisionResult.ROLLED_BACK,
                f"rolled back: {', '.join(sorted(rolled_back))}",
            )
        elif degraded:
            result, reason = RevisionResult.FAILED, f"failed: {', '.join(sorted(degraded))}"
        else:
            result, reason = RevisionResult.SUCCEEDED, ""
        per_service = {
            name: RevisionResult.ROLLED_BACK
            if name in rolled_back
            else RevisionResult.FAILED
            if name in degraded
            else RevisionResult.SUCCEEDED
            for name in phases
        }
        if result is RevisionResult.ROLLED_BACK or result is RevisionResult.FAILED:
            errors = [
                r.last_error
                for r in self.store.list_rollouts()
                if r.service in rolled_back | degraded
            ]
            reason = "; ".join(e for e in errors if e) or reason
        # One transaction: a reader (or a crash) never sees the result without its event.
        with self.store.transaction():
            self.store.finish_revision(
                revision_id, result, reason=reason, service_results=per_service
            )
            self.store.append_event(
                f"revision.{result.value}",
                f"{desired.revision[:12]} {result.value}",
                revision=desired.revision,
            )
        log.info(
            "revision %s %s",
            desired.revision[:12],
            result.value,
            extra={"revision": desired.revision},
        )

    # ------------------------------------------------------------------ prune and traffic

    def _prune(
        self,
        desired: DesiredState,
        live: LiveState,
        records: Mapping[str, RolloutRecord],
        work: _Work,
    ) -> bool:
        """Remove services that left Git (inventory minus desired). True while any remain."""
        applied = {a.name for a in self.store.list_applied() if a.kind == "Service"}
        gone = (applied | set(records) | set(live.services)) - set(desired.services)
        pending = False
        for name in sorted(gone):
            live_service = live.services.get(name)
            replicas = [
                r
                for r in (live_service.replicas if live_service else ())
                if r.node not in live.unknown_nodes
            ]
            if replicas:
                pending = True
                for replica in replicas:
                    if replica.id in self._draining:
                        continue
                    if replica.state == "running":
                        spec = records[name].spec.get("spec", {}) if name in records else {}
                        grace = float(spec.get("terminationGracePeriodSeconds", 30))
                        work.drain.append((name, replica, grace))
                        self._draining.add(replica.id)
                    else:
                        self._remove_now(replica, work)
                continue
            if live_service is not None and any(
                r.node in live.unknown_nodes for r in live_service.replicas
            ):
                pending = True  # wait until the node answers again
                continue
            self.store.forget_applied("Service", name)
            self.store.delete_rollout(name)
            self.store.clear_backoff(name)
            self.store.append_event("service.pruned", f"{name} left Git: removed", service=name)
            log.info("pruned service %s", name, extra={"service": name})
        return pending

    def _publish_and_drain(
        self, desired: DesiredState, live: LiveState, targets: Mapping[str, Service], work: _Work
    ) -> None:
        table = self._routing_table(desired, live, targets)
        if table != self._last_table:
            self.dataplane.apply(table)
            self._last_table = table
        if not work.drain:
            return
        deadline = time.monotonic() + self.drain_timeout
        for service, replica, _ in work.drain:
            while time.monotonic() < deadline:
                stats = self.dataplane.backend_stats(service, replica.id)
                if stats is None or stats.in_flight == 0:
                    break
                time.sleep(0.05)

        def stop(item: tuple[str, LiveReplica, float]) -> None:
            _, replica, grace = item
            runtime = self.runtimes.get(replica.node)
            try:
                if runtime is not None:
                    runtime.stop(replica.id, grace)
                    runtime.remove(replica.id)
                    work.actions += 1
            except RuntimeDriverError as exc:
                work.errors.append(f"{replica.name}: {exc.message}")
            finally:
                self.health.untrack(replica.id)

        with ThreadPoolExecutor(max_workers=max(1, min(8, len(work.drain)))) as pool:
            list(pool.map(stop, work.drain))
        for _, replica, _ in work.drain:
            self._draining.discard(replica.id)
        # Stopped replicas leave the table now, not at the next pass.
        table = self._routing_table(desired, live, targets, gone={r.id for _, r, _ in work.drain})
        self.dataplane.apply(table)
        self._last_table = table

    def _routing_table(
        self,
        desired: DesiredState,
        live: LiveState,
        targets: Mapping[str, Service],
        gone: set[str] | None = None,
    ) -> RoutingTable:
        gone = gone or set()
        routes: dict[str, Route] = {}
        for name, service in desired.services.items():
            target = targets.get(name, service)
            expose = service.expose or target.expose
            if expose is None:
                continue
            backends: list[Backend] = []
            live_service = live.services.get(name)
            failed = self._failed_digests.get(name)
            for replica in live_service.replicas if live_service else ():
                if replica.id in gone or replica.state != "running":
                    continue
                if failed is not None and replica.template_digest == failed:
                    continue  # rolled back from: never serves again, even while it drains
                health = self.health.health(replica.id)
                draining = replica.id in self._draining
                if not draining and not (health and health.ready):
                    continue
                address = replica.address_of(expose.target_port)
                if address is None:
                    continue
                backends.append(
                    Backend(
                        replica.id,
                        address,
                        version=(replica.template_digest or "")[:12],
                        draining=draining,
                    )
                )
            ordered = tuple(sorted(backends, key=lambda b: b.id))
            intent = self.progressive.intent(name)
            tls = TlsFiles(expose.tls.cert_file, expose.tls.key_file) if expose.tls else None
            if intent is None:
                routes[name] = Route(name, expose.port, expose.protocol, ordered, tls=tls)
                continue
            canary = target.strategy.canary
            routes[name] = Route(
                name,
                expose.port,
                expose.protocol,
                ordered,
                weights=MappingProxyType({version_key(t): w for t, w in intent.weights.items()}),
                rules=tuple(
                    VersionRule(version_key(intent.target), r.header, r.cookie, r.exact, r.regex)
                    for r in intent.match
                ),
                # strategy.canary.stickySessions: a client keeps its version while it weighs > 0.
                sticky=canary is not None and canary.sticky_sessions,
                tls=tls,
            )
            blue = target.strategy.blue_green
            if intent.preview and blue is not None and blue.preview_port:
                preview = tuple(b for b in ordered if b.version == version_key(intent.preview))
                # "." never occurs in a service name (DNS-1123 label), so no collision, and
                # HAProxy accepts it in proxy names ("~" made it refuse the configuration).
                routes[f"{name}.preview"] = Route(
                    f"{name}.preview", blue.preview_port, expose.protocol, preview, tls=tls
                )
        return RoutingTable(routes)


def _grace_of(service: LiveService) -> float:
    spec = service.applied.canonical.get("spec", {}) if service.applied else {}
    return float(spec.get("terminationGracePeriodSeconds", 30))
