"""The reconciler: one level-triggered pass takes the cluster one step toward Git.

A pass is four steps, each in its own room:

1. **observe** (here): nodes and replicas from the runtimes (the ground truth of what
   exists), the store's records, node verdicts, and what the health monitor says of each
   replica (a replica seen for the first time is probed once first, so "not probed yet"
   is never mistaken for "not ready");
2. **decide** (:func:`gitorch.decide.decide_pass`, pure): per service, in ``dependsOn``
   waves, the actions of this pass with their reasons, placed on nodes;
3. **record** (:mod:`gitorch.apply.bookkeeping`): the decision's records, events and
   inventory, one transaction per service, before anything is executed;
4. **execute** (:mod:`gitorch.apply.execute`): exactly the decided actions, each failure
   caught at the service it concerns; then the failures are recorded (back-off) and the
   revision is finished once its services settled.

A pass may give way (:class:`PassPreempted`) to a new revision while it observes and
decides, never once it starts writing: a commit then waits for no pass of 2,000 services.
A **focused** pass (``focus``) decides and acts on the services a new revision changed
alone, before the whole pass observes and decides every service again (see
:meth:`Reconciler.focusable`).

``gitorch plan`` runs steps 1 and 2 and renders the actions; ``apply --expect-plan``
checks the digest of the plan of the very decision it then executes. Nothing a pass needs
for correctness lives in memory: a daemon killed at any instant and restarted computes the
same next step from the replicas' labels and the store, never duplicating or orphaning a
replica. (Memory holds what makes passes faster: probe state, analysis runs in progress.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from types import MappingProxyType

from gitorch.apply.analysis_runs import AnalysisRunner, StepEntry
from gitorch.apply.bookkeeping import Bookkeeper, CommitMeta, service_failures
from gitorch.apply.execute import Execution, Executor, service_of_route
from gitorch.apply.health import HealthMonitor
from gitorch.apply.ingress import IngressFleet
from gitorch.apply.nodes import NodeTracker
from gitorch.decide import PassDecision, ServiceProgress, decide_pass
from gitorch.decide.actions import Action
from gitorch.decide.backoff import DEFAULT_CRASH_LOOP, CrashLoop, listen_retry, remaining
from gitorch.decide.batch import NO_HOLD, BatchHold
from gitorch.decide.cluster import only_services, pass_input_of, with_routes_of
from gitorch.decide.routes import routing_table
from gitorch.decide.service import service_from
from gitorch.decide.vertical import with_vertical
from gitorch.diff import Plan, check_expected, compute_plan
from gitorch.errors import GitorchError
from gitorch.live import NodeTarget, observe
from gitorch.live.model import LiveReplica, LiveService, LiveState
from gitorch.manifests.model import DesiredState, Service
from gitorch.runtime import sweep_secret_files
from gitorch.runtime.base import Instance, Runtime
from gitorch.scheduler import LEAST_ALLOCATED
from gitorch.secrets import SecretValues
from gitorch.state import BackoffRecord, RolloutPhase, StateStore
from gitorch.state.records import NO_BACKOFF
from gitorch.traffic.table import DataPlane, RoutingTable

__all__ = ["CommitMeta", "PassPreempted", "PassResult", "Reconciler", "ServiceProgress"]

log = logging.getLogger("gitorch.reconciler")

#: A focused pass takes at most this many services: a revision that changes more is
#: applied by the whole pass at once (the focus would save little).
FOCUS_MAX_SERVICES = 50


class PassPreempted(GitorchError):
    """A pass stopped between its steps, before it wrote anything or changed the world,
    because something more urgent waits (a new revision): nothing of it is half-done."""


@dataclass(frozen=True)
class PassResult:
    """What one pass did and where the cluster stands after it."""

    revision: str
    services: tuple[ServiceProgress, ...]
    converged: bool  # every service settled, nothing left to prune or drain
    failed: bool  # a service of this revision rolled back, is degraded or cannot serve
    actions: int  # how many replicas were started, stopped or removed this pass
    errors: tuple[str, ...] = ()
    executed: tuple[Action, ...] = ()  # the decided actions the executor carried out
    requeue_after: float = 2.0  # when the next pass should run (seconds)
    decision: PassDecision | None = None


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
        secrets: SecretValues | None = None,
        scoring: str = LEAST_ALLOCATED,
        drain_timeout: float = 10.0,
        node_grace: float = 30.0,
        crash_loop: CrashLoop = DEFAULT_CRASH_LOOP,
        clock: Callable[[], float] = time.time,
        ingress: IngressFleet | None = None,
        fence: Callable[[], object] | None = None,
        acting: bool = True,
        watching_since: float | None = None,
    ) -> None:
        """``fence``: raises NotLeader when this process may no longer act (a deposed
        leader); checked before every change of the world. ``acting=False`` (a standby):
        observe and plan only, writing nothing and reaping nothing. ``watching_since``:
        when the daemon (its term) began watching, default now; progress deadlines are
        judged over that time only (``PassInput.watching_since``)."""
        self.store = store
        self.ingress = ingress
        self.acting = acting
        self.fence = fence
        self.nodes = NodeTracker(store, grace=node_grace, clock=clock)
        self.analysis = AnalysisRunner(store, dataplane)
        self.targets = list(targets)
        self.runtimes = dict(runtimes)
        self.health = health
        self.dataplane = dataplane
        self.cluster = cluster
        self.scoring = scoring
        self.crash_loop = crash_loop
        self.clock = clock
        self.watching_since = clock() if watching_since is None else watching_since
        self.executor = Executor(
            runtimes=self.runtimes,
            health=health,
            dataplane=dataplane,
            cluster=cluster,
            advertise_host=advertise_host,
            secrets=secrets,
            drain_timeout=drain_timeout,
            ingress=ingress,
            fence=fence,
        )
        self.books = Bookkeeper(store, crash_loop)
        self._reaped = False
        #: What the last observation held back of the last batch started (decide.batch).
        self.batch_hold: BatchHold = NO_HOLD
        self._stale: frozenset[str] = frozenset()  # this pass's stale replicas (never serve)
        #: What the last pass observed when that pass changed nothing (no action, no
        #: record written, every service settled): still the world as gitorch left it.
        #: The daemon's status serves it (``Daemon._view``); None after a pass that did.
        self.quiet_observation: LiveState | None = None

    @property
    def routing_table(self) -> RoutingTable | None:
        """The table the data plane serves now (None before the first pass published one):
        the daemon reads weights and routes from it for /metrics and status."""
        return self.executor.published

    # ------------------------------------------------------------------ observe + decide

    def observe(
        self,
        desired: DesiredState,
        *,
        focus: frozenset[str] | None = None,
        preempted: Callable[[], bool] | None = None,
    ) -> tuple[LiveState, frozenset[str]]:
        """The live state with the health monitor's view of every replica, and the nodes
        lost (silent past their grace). ``focus``: only these services' replicas are
        tracked and given their health (a focused pass; the others' replicas count for
        placement alone). ``preempted``: asked once the runtimes answered; True raises
        :class:`PassPreempted`."""
        if self.acting:
            self._register_nodes()
            if not self._reaped:
                self._reap_orphans()
        live = observe(self.targets, self.runtimes, self.cluster, self.store)
        if preempted is not None and preempted():
            raise PassPreempted("a new revision waits: the pass gave way after observing")
        live, lost = self.nodes.update(live, record=self.acting)
        if self.ingress is not None:
            # A host that does not answer is not asked for figures (its in-flight
            # requests are given up by the tables that list its replicas unreachable).
            self.ingress.forget(n for n, node in live.nodes.items() if not node.ready)
        if focus is None:
            self._forget_vanished(live)
            if not live.unknown_nodes:
                # Secret files of replicas removed outside gitorch (tmpfs, until a reboot).
                sweep_secret_files(self.cluster, {r.name for r in live.replicas()})
        self._track(desired, live, focus)
        # Read after the runtimes answered, right before the health itself: a readiness
        # that comes later is this pass's, or the next's, for the whole batch alike.
        self.batch_hold = self.executor.batch_hold()
        return _with_health(live, self.health, focus, self.batch_hold.held), lost

    def focusable(self, desired: DesiredState, services: frozenset[str]) -> bool:
        """Whether a focused pass may act on ``services`` alone: a few services, none
        mounting a volume (volumes are decided over every service), no node with its own
        ingress (its table is decided over every route), and a table in force this
        reconciler published. Otherwise the whole pass applies the revision."""
        if not services or len(services) > FOCUS_MAX_SERVICES:
            return False
        if self.executor.published is None:
            # A new reconciler (a restart, a new leadership term, new nodes) does not know
            # the table in force: a focused table would hold the focus's routes alone, and
            # the data plane would close every other listener (soak seed 1209, etcd state:
            # a leader paused past its lease refused new connections to every other
            # service). The whole pass publishes every route first.
            return False
        if any(t.own_ingress for t in self.targets):
            return False
        return all(
            name in desired.services and not desired.services[name].volumes for name in services
        )

    def decide(
        self,
        desired: DesiredState,
        live: LiveState,
        lost: frozenset[str],
        now: float,
        focus: frozenset[str] | None = None,
    ) -> PassDecision:
        """The pure decision of a pass over what :meth:`observe` saw (``focus``: of
        those services alone, over the table in force)."""
        inp = pass_input_of(
            desired,
            live,
            now,
            lost=lost,
            unschedulable=frozenset(t.name for t in self.targets if t.unschedulable),
            runnable=frozenset(self.runtimes),
            scoring=self.scoring,
            crash_loop=self.crash_loop,
            analyses=self.analysis.statuses_of(live.rollouts),
            ingress_image=self._ingress_image(),
            ingress_fence=self.nodes.grace,
        )
        stale = self.nodes.stale_replicas(live)
        self._stale = frozenset(stale)
        inp = replace(
            inp,
            verdicts=replace(
                inp.verdicts,
                cordoned=inp.verdicts.cordoned | {t.name for t in self.targets if t.drain},
                evicting=MappingProxyType({**inp.verdicts.evicting, **stale}),
                stale=frozenset(stale),
            ),
            only=focus,
            in_force=self.executor.published if focus is not None else None,
            watching_since=self.watching_since,
        )
        return decide_pass(inp)

    def plan(self, desired: DesiredState) -> Plan:
        """What the next pass would do (``/api/v1/plan``): the field diff and its actions."""
        live, lost = self.observe(desired)
        desired = with_vertical(desired, live.autoscalers)
        decision = self.decide(desired, live, lost, self.clock())
        return compute_plan(desired, live, scoring=self.scoring, decision=decision)

    # ------------------------------------------------------------------ the pass

    def reconcile(
        self,
        desired: DesiredState,
        commit: CommitMeta | None = None,
        *,
        expect_plan: str | None = None,
        preempted: Callable[[], bool] | None = None,
    ) -> PassResult:
        """One pass. Never raises for a single service's trouble: it is recorded on that
        service instead. ``expect_plan``: refuse (PlanChanged) unless this pass's plan has
        that digest; the pass then executes exactly that plan's actions. ``preempted``:
        asked after observing and before the first write; True raises
        :class:`PassPreempted`, and nothing of the pass was written or carried out."""
        result = self._pass(desired, commit, expect_plan, None, preempted)
        assert result is not None  # only a focused pass declines
        return result

    def reconcile_focused(
        self, desired: DesiredState, commit: CommitMeta | None, services: frozenset[str]
    ) -> PassResult | None:
        """A pass over ``services`` alone (:meth:`focusable` first): observed, decided,
        recorded and carried out as the whole pass would, over the placements of every
        replica and the table in force; it prunes nothing and finishes no revision. None
        (nothing written, nothing done) when its decision would reach beyond them (it
        preempts another service's replica): the whole pass decides that."""
        if not self.focusable(desired, services):
            return None
        return self._pass(desired, commit, None, services, None)

    def _pass(
        self,
        desired: DesiredState,
        commit: CommitMeta | None,
        expect_plan: str | None,
        focus: frozenset[str] | None,
        preempted: Callable[[], bool] | None,
    ) -> PassResult | None:
        if not self.acting:
            raise GitorchError("a standby's reconciler only plans (this daemon does not lead)")
        self.books.acting_for(commit)
        self.quiet_observation = None
        began = time.perf_counter()
        live, lost = self.observe(desired, focus=focus, preempted=preempted)
        observed = time.perf_counter()
        # Requests vertical mode Auto applied: the template the service rolls out to.
        desired = with_vertical(desired, live.autoscalers)
        now = max(self.clock(), live.observed_at)
        decision = self.decide(desired, live, lost, now, focus)
        decided = time.perf_counter()
        if focus is not None and decision.preemptions:
            return None
        if preempted is not None and preempted():
            raise PassPreempted("a new revision waits: the pass gave way before writing")
        if expect_plan is not None:
            check_expected(
                compute_plan(desired, live, scoring=self.scoring, decision=decision), expect_plan
            )
        started = self.books.revision_started(desired, live, commit, decision)
        if focus is None:  # Nodes' and Volumes' inventory: the whole pass right after
            self.books.nodes_and_volumes(desired, live)
        # Write-ahead: what was decided is stored before it is carried out, so a daemon
        # killed in between decides the same again from the replicas it finds.
        self.books.volumes_decided(decision.volumes, desired, live)
        saved = {name: self.books.save(d) for name, d in decision.services.items()}
        wrote = any(saved[name] is not d for name, d in decision.services.items())
        decision = replace(decision, services=MappingProxyType(saved))

        held = self._held_routes(live, decision, now)
        recorded = time.perf_counter()
        execution = self.executor.run(
            desired,
            decision,
            held_routes=held,
            table_without=lambda gone: self._table(desired, live, decision, gone, focus),
        )
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s pass: observe %.0f ms, decide %.0f ms, record %.0f ms, execute %.0f ms "
                "(%d action(s))",
                "focused" if focus is not None else "whole",
                (observed - began) * 1000,
                (decided - observed) * 1000,
                (recorded - decided) * 1000,
                (time.perf_counter() - recorded) * 1000,
                len(execution.executed),
            )
        self.books.volumes_executed(execution, desired)
        self._advance_analyses(decision, now)
        for forget in decision.prune.forget:
            self.books.forget(forget.service)
        backoff = live.backoff
        if focus is not None:  # a focused pass forgives none of the other services
            backoff = MappingProxyType({n: b for n, b in backoff.items() if n in focus})
        self.books.failures(decision, execution, backoff, now)
        failures = service_failures(self.store.list_backoff())
        if started is not None and focus is None:
            # Only the whole pass finishes a revision (it sees every service, and prunes).
            self.books.revision_finished(started, desired, decision, failures)
        elif focus is None and not execution.executed and not execution.errors:
            # This pass's observation predates the record: not one to show as status.
            wrote = self.books.revision_recovered(desired, decision, failures) or wrote
        quiet = (
            focus is None
            and started is None
            and not wrote
            and not execution.executed
            and not execution.changes
            and not execution.errors
            and decision.settled
        )
        self.quiet_observation = live if quiet else None
        return self._result(desired, decision, execution, failures)

    # ------------------------------------------------------------------ helpers

    def _ingress_image(self) -> str | None:
        """The image remote hosts' ingresses must run (None without such hosts)."""
        if self.ingress is None or not any(t.own_ingress for t in self.targets):
            return None
        return self.ingress.image_tag()

    def _table(
        self,
        desired: DesiredState,
        live: LiveState,
        decision: PassDecision,
        gone: set[str],
        focus: frozenset[str] | None = None,
    ) -> RoutingTable:
        """The table once the replicas in ``gone`` stopped (a focused pass: of its
        services' routes, the others as published)."""
        if focus is not None:
            desired = only_services(desired, focus)
        table = routing_table(
            desired,
            live,
            targets={n: d.target for n, d in decision.services.items()},
            intents={n: d.intent for n, d in decision.services.items() if d.intent is not None},
            failed=decision.failed_templates,
            draining=self._stale,
            gone=gone,
        )
        if focus is None:
            return table
        return with_routes_of(self.executor.published, table, focus)

    def _held_routes(self, live: LiveState, decision: PassDecision, now: float) -> set[str]:
        """Routes of services backing off after their port could not be bound."""
        held: set[str] = set()
        for name in decision.table.routes:
            failure = live.backoff.get(service_of_route(name), NO_BACKOFF).failure
            if failure is not None and remaining(failure, now, listen_retry(self.crash_loop)) > 0:
                held.add(name)
        return held

    def _advance_analyses(self, decision: PassDecision, now: float) -> None:
        for name, service in decision.services.items():
            if service.intent is None:
                self.analysis.forget(name)
            elif service.analysis_entry is not None:
                self.analysis.run_analyses(
                    name, StepEntry(*service.analysis_entry), service.analyses, now
                )

    def _result(
        self,
        desired: DesiredState,
        decision: PassDecision,
        execution: Execution,
        failures: Mapping[str, BackoffRecord],
    ) -> PassResult:
        progress: list[ServiceProgress] = []
        failed = False
        for name in sorted(decision.services):
            service = decision.services[name]
            record = service.record
            assert service.progress is not None
            item = service.progress
            template = desired.services[name].template_digest
            if record.failed_digest == template or record.phase is RolloutPhase.DEGRADED:
                failed = True
            failure = failures.get(name)
            if failure is not None:
                failed = True
                item = replace(
                    item,
                    phase=str(RolloutPhase.DEGRADED),
                    message=f"{failure.reason}; {item.message}".strip("; "),
                    failing=True,
                )
            progress.append(item)
        return PassResult(
            revision=desired.revision,
            services=tuple(progress),
            converged=decision.settled and not execution.start_failures,
            failed=failed,
            actions=execution.changes,
            errors=tuple(execution.errors),
            executed=tuple(execution.executed),
            requeue_after=(
                min(decision.requeue_after, self.batch_hold.seconds_left(self.health.now()))
                if self.batch_hold.held
                else decision.requeue_after
            ),
            decision=decision,
        )

    def _track(
        self, desired: DesiredState, live: LiveState, focus: frozenset[str] | None = None
    ) -> None:
        """Probe every running replica (``focus``: of those services) with the probes of
        the spec it runs; one seen for the first time is probed once right away (see the
        module docstring), and taken as ready when the data plane serves it: a replica
        started before this daemon began, adopted with its place in the rotation."""
        seen: list[tuple[LiveReplica, Instance, Service, bool]] = []
        for name, live_service in live.services.items():
            if focus is not None and name not in focus:
                continue
            service = desired.services.get(name)
            record = live.rollouts.get(name)
            specs: dict[str, Service] = {}
            if service is not None:
                specs[service.template_digest] = service
            if record is not None and service is not None:
                # Built only when not known yet: a settled service's record is the template
                # it runs (building it again was a fifth of a no-op pass at 2,000 services).
                if record.spec_digest not in specs:
                    specs[record.spec_digest] = service_from(record.spec, service)
                if (
                    record.previous_spec
                    and record.previous_digest
                    and record.previous_digest not in specs
                ):
                    specs[record.previous_digest] = service_from(record.previous_spec, service)
            for replica in live_service.replicas:
                instance = replica.instance
                if (
                    replica.state != "running"
                    or instance is None
                    or replica.node not in self.runtimes
                ):
                    continue
                spec = specs.get(replica.template_digest or "") or service
                if spec is None:
                    continue  # a pruned service's replica: it only needs to drain
                seen.append((replica, instance, spec, self.health.health(replica.id) is not None))
        adopted = {
            replica.id
            for replica, _, _, known in seen
            if not known
            and replica.started_at is not None
            and replica.started_at < self.watching_since
        }
        served = self._served() & adopted if adopted else frozenset()
        fresh: list[str] = []
        for replica, instance, spec, known in seen:
            try:
                self.health.track(
                    replica.id, replica.node, instance, spec, serving=replica.id in served
                )
            except GitorchError as exc:
                log.warning("cannot probe %s: %s", replica.name, exc.message)
                continue
            if not known:
                fresh.append(replica.id)
        if fresh:
            with ThreadPoolExecutor(max_workers=min(8, len(fresh))) as pool:
                list(pool.map(self.health.observe_now, fresh))

    def _served(self) -> frozenset[str]:
        """The backends the data plane serves now; empty when it cannot say (then a
        replica seen for the first time is judged by its first probe alone)."""
        try:
            return self.dataplane.serving() or frozenset()
        except GitorchError as exc:
            log.debug("the data plane did not say what it serves: %s", exc.message)
            return frozenset()

    def _reap_orphans(self) -> None:
        """Once per reconciler: processes a killed daemon started but never recorded."""
        self._reaped = True
        if self.fence is not None:
            self.fence()  # killing processes is acting: only while leading
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


def _with_health(
    live: LiveState,
    health: HealthMonitor,
    focus: frozenset[str] | None = None,
    held: frozenset[str] = frozenset(),
) -> LiveState:
    """``live`` with what the health monitor says of each replica (``focus``: of those
    services' replicas; the others' stay as observed). ``held``: replicas of a batch
    whose partners have not answered yet, seen not ready for now (decide.batch)."""
    services: dict[str, LiveService] = {}
    for name, service in live.services.items():
        if focus is not None and name not in focus:
            services[name] = service
            continue
        replicas: list[LiveReplica] = []
        for replica in service.replicas:
            known = health.health(replica.id) if replica.state == "running" else None
            if known is not None and replica.id in held:
                known = replace(known, ready=False, ready_since=None)
            if known is None:
                replicas.append(
                    replace(replica, ready=False if replica.state != "unknown" else None)
                )
                continue
            replicas.append(
                replace(
                    replica,
                    ready=known.ready,
                    ready_since=known.ready_since,
                    needs_restart=known.needs_restart,
                    health_message=known.last_message,
                )
            )
        services[name] = replace(service, replicas=tuple(replicas))
    return replace(live, services=MappingProxyType(services))
