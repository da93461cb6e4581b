"""One reconcile pass over the whole cluster, decided: pure.

:func:`decide_pass` takes the desired state, the live state (replicas with their health),
the store's records and the node verdicts, and returns a :class:`PassDecision`: per
service, in ``dependsOn`` waves, everything the pass will do, with the placement of every
replica it starts, the services it prunes, and the routing table it publishes.
``gitorch plan`` renders ``PassDecision.actions()``; the executor carries out exactly that.

A service that cannot act (its last attempt failed and backs off, a dependency is not
Healthy, a slot fits on no node) waits with a reason; every other service goes on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from gitorch.decide.actions import (
    Action,
    ForgetService,
    StartReplica,
    StopReplica,
    Wait,
)
from gitorch.decide.backoff import DEFAULT_CRASH_LOOP, CrashLoop, listen_retry, remaining
from gitorch.decide.ingress import IngressDecision, decide_ingress
from gitorch.decide.nodes import NodeVerdicts, node_views, running_replicas, verdicts
from gitorch.decide.routes import routing_table
from gitorch.decide.service import (
    SETTLED,
    ServiceDecision,
    ServiceInput,
    decide_service,
    service_failure_wait,
    undecided,
)
from gitorch.decide.volumes import (
    VolumeDecision,
    bound_nodes,
    constrained,
    decide_volumes,
    missing_node_reason,
    pinned_evictions,
    place_service,
    single_writer_volumes,
    volume_constraint,
)
from gitorch.decide.waves import dependency_waves
from gitorch.live.model import LiveService, LiveState
from gitorch.manifests.model import DesiredState, Service
from gitorch.scheduler import LEAST_ALLOCATED, Placer, Request, Running
from gitorch.state.records import NO_BACKOFF, RolloutPhase, RolloutRecord, ServiceBackoff
from gitorch.strategies.machine import AnalysisStatus
from gitorch.traffic.table import RoutingTable

#: How soon a pass asks to run again while something moves (replicas starting, drains,
#: rollouts waiting for readiness). Readiness changes wake the daemon sooner anyway.
MOVING_REQUEUE = 0.3
#: ... while rollouts progress but this pass did nothing.
PROGRESSING_REQUEUE = 1.0
#: ... when everything is settled (the daemon's --resync caps it).
IDLE_REQUEUE = 30.0


@dataclass(frozen=True)
class PassInput:
    """Everything :func:`decide_pass` may look at."""

    desired: DesiredState
    live: LiveState
    now: float
    records: Mapping[str, RolloutRecord] = field(default_factory=lambda: MappingProxyType({}))
    backoff: Mapping[str, ServiceBackoff] = field(default_factory=lambda: MappingProxyType({}))
    analyses: Mapping[str, Mapping[tuple[str, float], Mapping[str, AnalysisStatus]]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    verdicts: NodeVerdicts = NodeVerdicts()
    applied_services: frozenset[str] = frozenset()  # Services in the inventory
    runnable: frozenset[str] | None = None  # nodes with a runtime (None: all)
    scoring: str = LEAST_ALLOCATED
    crash_loop: CrashLoop = DEFAULT_CRASH_LOOP
    ingress_image: str | None = None  # the hosts' ingress image (None: not compared)
    #: Seconds of silence after which a host's ingress withdraws its own replicas (the
    #: nodes' grace; None: never).
    ingress_fence: float | None = None
    #: A focused pass: only these services are decided (those a new revision changed,
    #: acted on before the whole pass); None: every service. A focused pass prunes
    #: nothing, decides no volume and no host's ingress (the reconciler focuses only on
    #: services without volumes, on nodes without their own ingress), and its table is
    #: ``in_force`` with the focused services' routes decided again.
    only: frozenset[str] | None = None
    #: The routing table the data plane serves now (a focused pass keeps the others').
    in_force: RoutingTable | None = None
    #: When the deciding daemon began watching (its term's start; 0: always): progress
    #: deadlines are judged over that time only (``RolloutInput.watching_since``).
    watching_since: float = 0.0


@dataclass(frozen=True)
class PruneDecision:
    """Services that left Git: their replicas go, then their records."""

    stops: tuple[StopReplica, ...] = ()
    forget: tuple[ForgetService, ...] = ()
    waits: tuple[Wait, ...] = ()
    pending: bool = False  # replicas of pruned services remain


@dataclass(frozen=True)
class Unplaced:
    """A replica the pass could not place: what it asks of a node, and why each node
    refused it (what a NodePool reads to tell whether a node of its template would fit)."""

    request: Request
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class PassDecision:
    """Everything one pass does, in the order it does it."""

    revision: str
    order: tuple[str, ...]  # services, dependsOn waves then priority
    services: Mapping[str, ServiceDecision]
    starts: Mapping[str, tuple[StartReplica, ...]]
    preemptions: tuple[StopReplica, ...]
    prune: PruneDecision
    table: RoutingTable
    failed_templates: Mapping[str, str]  # service -> template rolled back from
    requeue_after: float
    volumes: VolumeDecision = VolumeDecision()
    ingress: IngressDecision = IngressDecision()  # remote hosts' ingresses and tables
    unplaced: tuple[Unplaced, ...] = ()  # replicas no node could take this pass
    nodes: frozenset[str] = frozenset()  # the nodes it placed on (runnable, any state)

    def stops(self) -> tuple[StopReplica, ...]:
        """Every replica the pass stops or removes: services' own, preempted, pruned."""
        own = tuple(s for name in self.order for s in self.services[name].stops)
        return (*own, *self.preemptions, *self.prune.stops)

    def actions(self) -> tuple[Action, ...]:
        """What ``gitorch plan`` lists and the executor carries out, in execution order:
        volumes bound and made; per service (waves), what stops, what starts, traffic and
        rollbacks, waits; then preemptions and prunes; then volumes released, deleted,
        missing, and what they wait for."""
        volumes = self.volumes
        actions: list[Action] = [*volumes.binds, *volumes.creates, *self.ingress.starts]
        for name in self.order:
            decision = self.services[name]
            if decision.rollback is not None:
                actions.append(decision.rollback)
            actions.extend(decision.stops)
            actions.extend(self.starts.get(name, ()))
            if decision.traffic is not None:
                actions.append(decision.traffic)
            actions.extend(decision.waits)
        actions.extend(self.preemptions)
        actions.extend(self.prune.stops)
        actions.extend(self.prune.forget)
        actions.extend(self.prune.waits)
        actions.extend(
            (*volumes.releases, *volumes.deletes, *volumes.missing, *volumes.waits, *volumes.stuck)
        )
        actions.extend(self.ingress.removes)
        return tuple(actions)

    @property
    def settled(self) -> bool:
        """Every service settled and nothing left to prune (replicas or volumes)."""
        return (
            all(d.record.phase in SETTLED for d in self.services.values())
            and not self.prune.pending
            and not self.volumes.pending
        )


def pass_input_of(
    desired: DesiredState,
    live: LiveState,
    now: float,
    *,
    lost: frozenset[str] = frozenset(),
    unschedulable: frozenset[str] = frozenset(),
    runnable: frozenset[str] | None = None,
    scoring: str = LEAST_ALLOCATED,
    crash_loop: CrashLoop = DEFAULT_CRASH_LOOP,
    analyses: Mapping[str, Mapping[tuple[str, float], Mapping[str, AnalysisStatus]]] | None = None,
    ingress_image: str | None = None,
    ingress_fence: float | None = None,
) -> PassInput:
    """The input of a pass from one observation (replicas and the store's facts in
    ``live``). ``analyses`` replaces the stored analysis verdicts (the reconciler knows
    the runs it advances); ``lost``: nodes silent past their grace."""
    if analyses is None:
        analyses = {
            name: {
                (run.revision, run.step_started_at): MappingProxyType(
                    {r.analysis: AnalysisStatus(r.phase.value, r.message) for r in runs}
                )
                for run in runs[:1]
            }
            for name, runs in live.analysis_runs.items()
            if runs
        }
    return PassInput(
        desired=desired,
        live=live,
        now=now,
        records=live.rollouts,
        backoff=live.backoff,
        analyses=MappingProxyType(dict(analyses)),
        verdicts=verdicts(
            live,
            desired,
            lost=lost,
            draining={*live.draining_nodes, *(n.name for n in desired.nodes.values() if n.drain)},
            unschedulable={
                *unschedulable,
                *(n.name for n in desired.nodes.values() if n.unschedulable),
            },
        ),
        applied_services=frozenset(name for kind, name in live.inventory if kind == "Service"),
        runnable=runnable,
        scoring=scoring,
        crash_loop=crash_loop,
        ingress_image=ingress_image,
        ingress_fence=ingress_fence,
    )


def runnable_drivers(service: Service) -> frozenset[str]:
    """Node drivers that can run ``service``: an image needs docker, a command without an
    image needs the process driver; with both, either."""
    if service.image and service.command:
        return frozenset()
    if service.image:
        return frozenset({"docker"})
    return frozenset({"process"})


def decide_pass(inp: PassInput) -> PassDecision:
    """The whole pass (see the module docstring)."""
    desired, live, now = inp.desired, inp.live, inp.now
    only = inp.only
    # A focused pass orders its own services (their other dependencies count by phase).
    ordered = desired.services if only is None else only_services(desired, only).services
    order = [
        name
        for wave in dependency_waves(ordered)
        # Within a wave, higher priority first: the order replicas are placed in.
        for name in sorted(wave, key=lambda n: (-ordered[n].placement.priority, n))
    ]
    decisions: dict[str, ServiceDecision] = {}
    bound = bound_nodes(desired, live)
    evicting, pinned = pinned_evictions(live, inp.verdicts.evicting, bound)
    for name in order:
        service = desired.services[name]
        single_writer = single_writer_volumes(service, desired)
        waiting = tuple(
            d
            for d in service.depends_on
            if _phase_of(d, decisions, inp) is not RolloutPhase.HEALTHY
        )
        backoff = inp.backoff.get(name, NO_BACKOFF)
        service_input = ServiceInput(
            revision=desired.revision,
            service=service,
            record=inp.records.get(name),
            live=live.services.get(name) or _no_replicas(name),
            now=now,
            backoff=backoff,
            analyses=inp.analyses.get(name, MappingProxyType({})),
            evicting=evicting,
            waiting_for=waiting,
            crash_loop=inp.crash_loop,
            single_writer=single_writer,
            autoscaled=_autoscaled(live, name),
            watching_since=inp.watching_since,
        )
        try:
            decision = decide_service(service_input)
        except Exception as exc:  # a bug deciding one service must not stop the others
            decision = undecided(service_input, f"internal error deciding {name}: {exc!r}")
        failure = backoff.failure
        if failure is not None:
            wait = service_failure_wait(name, failure, now, listen_retry(inp.crash_loop))
            if wait is not None:
                decision = replace(decision, waits=(*decision.waits, wait))
        if name in pinned:
            decision = replace(decision, waits=(*decision.waits, *pinned[name]))
        decisions[name] = decision

    starts, preemptions, decisions, unplaced = _place(inp, order, decisions, bound)
    prune = _prune(inp) if only is None else PruneDecision()
    own_stops = [s for d in decisions.values() for s in d.stops]
    if only is None:
        volumes, starts = decide_volumes(
            desired, live, bound, starts, [*own_stops, *preemptions, *prune.stops]
        )
    else:
        volumes = VolumeDecision()
    decisions = _hold(decisions, volumes)
    failed = {
        name: d.record.failed_digest
        for name, d in decisions.items()
        if d.record.failed_digest is not None and d.record.spec_digest != d.record.failed_digest
    }
    stopping = {
        s.replica_id
        for s in (*(s for d in decisions.values() for s in d.stops), *preemptions, *prune.stops)
        if s.drain
    } | inp.verdicts.stale
    table = routing_table(
        desired if only is None else only_services(desired, only),
        live,
        targets={name: d.target for name, d in decisions.items()},
        intents={name: d.intent for name, d in decisions.items() if d.intent is not None},
        failed=failed,
        draining=stopping,
    )
    if only is None:
        ingress = decide_ingress(
            desired,
            live,
            table,
            [s for name in order for s in starts.get(name, ())],
            inp.ingress_image,
            inp.ingress_fence,
        )
    else:
        ingress = IngressDecision()
        table = with_routes_of(inp.in_force, table, only)
    result = PassDecision(
        revision=desired.revision,
        order=tuple(order),
        services=MappingProxyType(decisions),
        starts=MappingProxyType(starts),
        preemptions=preemptions,
        prune=prune,
        table=table,
        failed_templates=MappingProxyType(failed),
        requeue_after=IDLE_REQUEUE,
        volumes=volumes,
        ingress=ingress,
        unplaced=tuple(unplaced),
        nodes=frozenset(
            name for name in live.nodes if inp.runnable is None or name in inp.runnable
        ),
    )
    return replace(result, requeue_after=_requeue(result, inp))


def _phase_of(
    name: str, decisions: Mapping[str, ServiceDecision], inp: PassInput
) -> RolloutPhase | None:
    """A dependency's phase: as decided earlier in this pass, else (a focused pass does
    not decide it) as its record stands; None when it is neither."""
    decided = decisions.get(name)
    if decided is not None:
        return decided.record.phase
    if inp.only is None or name in inp.only:
        return None
    record = inp.records.get(name)
    return record.phase if record is not None else None


def only_services(desired: DesiredState, names: frozenset[str]) -> DesiredState:
    """``desired`` with only the services in ``names``."""
    return replace(
        desired,
        services=MappingProxyType({n: s for n, s in desired.services.items() if n in names}),
    )


def changed_services(before: DesiredState | None, after: DesiredState) -> frozenset[str]:
    """The services ``after`` adds or changes (any field) since ``before``: what a
    focused pass acts on first. Empty without a ``before``."""
    if before is None:
        return frozenset()
    return frozenset(
        name
        for name, service in after.services.items()
        if (known := before.services.get(name)) is None or known.digest != service.digest
    )


def with_routes_of(
    in_force: RoutingTable | None, decided: RoutingTable, services: frozenset[str]
) -> RoutingTable:
    """``in_force`` with the routes of ``services`` replaced by ``decided``'s (a focused
    pass: every other route stays as the data plane serves it)."""
    routes = {
        name: route
        for name, route in (in_force.routes.items() if in_force is not None else ())
        if name.split(".", 1)[0] not in services
    }
    routes.update(decided.routes)
    return RoutingTable(routes, fence=in_force.fence if in_force is not None else None)


def _autoscaled(live: LiveState, service: str) -> int | None:
    record = live.autoscalers.get(service)
    return record.desired if record is not None else None


def _hold(
    decisions: dict[str, ServiceDecision], volumes: VolumeDecision
) -> dict[str, ServiceDecision]:
    """Starts held back by their volumes: the service waits, and says why where status
    looks when a volume is missing (it will not come back by itself)."""
    held = dict(decisions)
    for name, waits in volumes.held.items():
        decision = held.get(name)
        if decision is None:
            continue
        record = decision.record
        blocking = next((w.reason for w in waits if w.reason in volumes.blocking), None)
        if blocking is not None and (record.message != blocking or record.last_error != blocking):
            record = replace(record, message=blocking, last_error=blocking)
        held[name] = replace(
            decision,
            record=record,
            save=decision.save or record is not decision.record,
            waits=(*decision.waits, *waits),
        )
    return held


def _no_replicas(name: str) -> LiveService:
    return LiveService(name, None)


def _place(
    inp: PassInput,
    order: list[str],
    decisions: dict[str, ServiceDecision],
    bound: dict[str, str],
) -> tuple[
    dict[str, tuple[StartReplica, ...]],
    tuple[StopReplica, ...],
    dict[str, ServiceDecision],
    list[Unplaced],
]:
    """Place every slot the services fill, in pass order, each placement seeing the ones
    before it, within the nodes their volumes allow (``bound``: ReadWriteOnce volume ->
    node; a volume bound by a placement here is added)."""
    live = inp.live
    nodes = node_views(live, cordoned=inp.verdicts.cordoned, runnable=inp.runnable)
    counted = running_replicas(live)
    running: list[Running] = [r for r, _ in counted]
    by_key = {(r.service, r.replica, r.node): replica for r, replica in counted}
    starts: dict[str, tuple[StartReplica, ...]] = {}
    preemptions: list[StopReplica] = []
    preempted: set[tuple[str, str, str]] = set()
    placed_decisions = dict(decisions)
    nowhere: list[Unplaced] = []
    # One cluster state for the pass: each service's placements count for the next; the
    # running replicas left after an eviction are said again (``current``).
    current = list(running)
    placer = Placer(nodes, current)
    for name in order:
        decision = decisions[name]
        if not decision.creates and not decision.stable_creates:
            continue
        target = decision.target
        # What this pass starts: the target's slots, then a progressive rollout's stable
        # ones (each with its own spec's requests, placement and template).
        wanted: list[tuple[int, Service, str]] = [
            (slot, target, decision.create_reasons.get(slot, "slot empty"))
            for slot in decision.creates
        ]
        if decision.stable is not None:
            wanted += [(slot, decision.stable, "stable set") for slot in decision.stable_creates]
        requests = [
            Request(
                name,
                f"{name}-{slot}",
                spec.resources.requests.cpu_millis or 0,
                spec.resources.requests.memory_bytes or 0,
                spec.placement,
                spec.resources.qos_class,
                drivers=runnable_drivers(spec),
            )
            for slot, spec, _ in wanted
        ]
        constraint = volume_constraint(target, inp.desired, bound)
        placed = place_service(placer, current, requests, constraint, bound, scoring=inp.scoring)
        running_before = len(running)
        gone = missing_node_reason(constraint, (n.name for n in nodes))
        started: list[StartReplica] = []
        unplaced: list[str] = []
        for (slot, spec, reason), request, where in zip(wanted, requests, placed, strict=True):
            if where.node is None:
                reasons = [gone, *where.reasons] if gone else list(where.reasons)
                unplaced.append(f"{name}-{slot} cannot be placed: " + "; ".join(reasons))
                nowhere.append(Unplaced(constrained(request, constraint), tuple(reasons)))
                continue
            for victim in where.victims:
                replica = by_key.get(victim)
                if victim in preempted:
                    continue
                if replica is None:
                    # Placed earlier in this pass (an earlier dependsOn wave), not started:
                    # its start is withdrawn, and its slot waits for a later pass.
                    if _withdraw_start(starts, placed_decisions, victim, where.replica):
                        preempted.add(victim)
                    continue
                preempted.add(victim)
                preemptions.append(
                    StopReplica(
                        victim[0],
                        replica.replica,
                        replica.id,
                        replica.node,
                        f"preempted for {where.replica} (priority {target.placement.priority})",
                        drain=True,
                        grace=_grace(inp, victim[0]),
                    )
                )
            started.append(
                StartReplica(name, f"{name}-{slot}", slot, spec.template_digest, where.node, reason)
            )
            running.append(
                Running(
                    name,
                    f"{name}-{slot}",
                    where.node,
                    request.cpu_millis,
                    request.memory_bytes,
                    spec.placement.priority,
                    spec.resources.qos_class,
                )
            )
        starts[name] = tuple(started)
        if any(where.victims for where in placed):
            current = [r for r in running if (r.service, r.replica, r.node) not in preempted]
            placer.restart(current)
        else:
            current.extend(running[running_before:])
        if unplaced:
            why = unplaced[0] + (f" (and {len(unplaced) - 1} more)" if len(unplaced) > 1 else "")
            # Said where status looks (rollout.lastError), not only in the log: a slot
            # that fits nowhere is otherwise silent until the progress deadline turns
            # it into a bare "deadline exceeded".
            record = decision.record
            if record.message != why or record.last_error != why:
                record = replace(record, message=why, last_error=why)
            placed_decisions[name] = replace(
                decision,
                record=record,
                save=decision.save or record is not decision.record,
                waits=(*decision.waits, *(Wait(name, u) for u in unplaced)),
            )
    return starts, tuple(preemptions), placed_decisions, nowhere


def _withdraw_start(
    starts: dict[str, tuple[StartReplica, ...]],
    decisions: dict[str, ServiceDecision],
    victim: tuple[str, str, str],
    preemptor: str,
) -> bool:
    """Take back the start of ``victim`` (service, replica, node) decided earlier in this
    pass, now a preemption victim of ``preemptor``; say why where its service waits.
    False when no such start was decided."""
    service, replica, node = victim
    kept = tuple(
        s for s in starts.get(service, ()) if not (s.replica == replica and s.node == node)
    )
    if len(kept) == len(starts.get(service, ())):
        return False
    starts[service] = kept
    decision = decisions[service]
    why = f"{replica} not started: preempted for {preemptor} before it started"
    decisions[service] = replace(decision, waits=(*decision.waits, Wait(service, why)))
    return True


def _grace(inp: PassInput, service: str) -> float:
    live = inp.live.services.get(service)
    spec = live.applied.canonical.get("spec", {}) if live and live.applied else {}
    return float(spec.get("terminationGracePeriodSeconds", 30))


def _prune(inp: PassInput) -> PruneDecision:
    """Remove services that left Git (inventory minus desired)."""
    desired, live = inp.desired, inp.live
    gone = (inp.applied_services | set(inp.records) | set(live.services)) - set(desired.services)
    stops: list[StopReplica] = []
    forget: list[ForgetService] = []
    waits: list[Wait] = []
    pending = False
    for name in sorted(gone):
        live_service = live.services.get(name)
        replicas = live_service.replicas if live_service else ()
        unknown = [r for r in replicas if r.node in live.unknown_nodes or r.state == "unknown"]
        present = [r for r in replicas if r not in unknown]
        record = inp.records.get(name)
        grace = float(
            (record.spec.get("spec", {}) if record else {}).get("terminationGracePeriodSeconds", 30)
        )
        for replica in present:
            running = replica.state == "running"
            stops.append(
                StopReplica(
                    name,
                    replica.replica,
                    replica.id,
                    replica.node,
                    "service left Git",
                    drain=running,
                    grace=grace,
                )
            )
        if present or unknown:
            pending = True
            if unknown and not present:
                waits.append(
                    Wait(name, "pruned; waiting for its node to answer before forgetting it")
                )
            continue
        forget.append(ForgetService(name))
    return PruneDecision(tuple(stops), tuple(forget), tuple(waits), pending)


def _requeue(decision: PassDecision, inp: PassInput) -> float:
    """When the next pass should run (the daemon also wakes on commits and readiness)."""
    volumes = decision.volumes
    if (
        decision.stops()
        or decision.ingress.starts
        or any(decision.starts.values())
        or decision.prune.pending
        or volumes.creates
        or volumes.pending
        or volumes.held
    ):
        return MOVING_REQUEUE
    candidates = [IDLE_REQUEUE]
    for name, service in decision.services.items():
        if service.record.phase not in SETTLED:
            candidates.append(PROGRESSING_REQUEUE)
        if service.requeue_after is not None:
            candidates.append(max(0.05, service.requeue_after))
        failure = inp.backoff.get(name, NO_BACKOFF).failure
        if failure is not None:
            left = remaining(failure, inp.now, listen_retry(inp.crash_loop))
            if left > 0:
                candidates.append(left)
    return min(candidates)
