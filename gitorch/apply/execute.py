"""The executor: carries out a decided pass, and nothing else.

It receives a :class:`~gitorch.decide.PassDecision` and performs exactly its actions
through the runtimes and the data plane, in an order that never fails a request:

1. dead replicas are removed (they serve nothing and may hold a name or a port);
2. the routing table is published: ready replicas in, replicas about to stop marked
   draining (the data plane sends them nothing new);
3. once their requests in flight are done (bounded by the drain timeout), draining
   replicas get SIGTERM with their grace period, and the executor waits for their exit;
4. new replicas are started, in parallel, each on the node the decision placed it (they
   join the table once ready, in a later pass; so in a pass that withdraws no replica
   they start beside step 2, not after it);
5. the table is published again without the exited replicas, and those are removed.

Stops come before starts where the strategy needs the room: a preempted replica's
resources must be free before its preemptor starts, and a Recreate stops everything
first. "Gone" is then the exit of the replica's processes, not the end of its removal:
what the runtime cleans up after an exit (a container's network and mounts, a cgroup,
the kept logs) holds no cpu or memory a new replica needs. A RollingUpdate's stops of
available replicas say otherwise (``StopReplica.terminating_frees_room``): as in
Kubernetes, a replica withdrawn from the table is terminating and does not count against
``maxSurge``, so when every draining stop of the pass says so, step 4 runs beside steps
2 and 3 (the publication that withdraws them, then their drain and stop). At most
``replicas + maxSurge`` replicas are then in service, and for the length of a stop up to
``maxSurge`` (+ ``maxUnavailable``) more run (``tests/reconciler/test_rollout_surge.py``).

Removals come after the starts (step 5): a Docker engine's removal takes the network
controller's lock that a start needs, up to a second per container on a busy host, and
a rollout waits for the start. A stop is executed (in :attr:`Execution.executed`) once
its replica is removed, in the same pass: nothing is left behind. The strategies stop
only available replicas beyond their availability floor, so stopping never costs
availability.

Volumes come first and last: the volumes decided are made before any replica starts (a
volume that cannot be made fails the starts that need it on that node), and volumes
decided for deletion are removed after the replicas have stopped (not at all in a pass
whose table could not be published: its draining replicas were not stopped). Remote
hosts' ingresses likewise: started first (:mod:`gitorch.apply.ingress`), each host's
table published with the daemon's own, before and after the drains, removed last. A
replica that some host's ingress did not take the new table for is not stopped (that
ingress may still send it requests).

Every failure is caught where it happens and reported on the service it concerns (a
replica that cannot start: that slot; a port that cannot be bound: that route), so one
broken service never stops the others. If the table cannot be published at all, no
replica is stopped: the old table still sends them traffic.

**Test only**: with ``GITORCH_TEST_UNSAFE_NO_DRAIN=1`` in its environment the executor
skips the drain for leaving replicas: they are killed at once (SIGKILL, no grace)
while the data plane still sends them requests. Nothing but the chaos soak sets it
(``bench/soak.py --break-drain``), to show that its invariants catch a broken drain;
the daemon logs a warning at every pass that uses it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

from gitorch.apply.drain import wait_drained
from gitorch.apply.health import HealthMonitor
from gitorch.apply.ingress import IngressFleet
from gitorch.apply.replicas import replica_spec, volume_spec
from gitorch.decide import PassDecision, StartReplica, StopReplica
from gitorch.decide.actions import Action, CreateVolume, DeleteVolume, RemoveIngress, StartIngress
from gitorch.decide.batch import READY_SETTLE, BatchHold, batch_hold, merged_holds
from gitorch.decide.ingress import HostTable
from gitorch.errors import GitorchError
from gitorch.manifests.model import DesiredState, Service
from gitorch.runtime.base import Runtime
from gitorch.secrets import SecretValues
from gitorch.traffic.discovery import Discovery, discovery_for
from gitorch.traffic.routes import ListenError
from gitorch.traffic.table import DataPlane, RoutingTable

log = logging.getLogger("gitorch.executor")

#: Test-only switch (module docstring): leaving replicas are killed without a drain.
UNSAFE_NO_DRAIN_ENV = "GITORCH_TEST_UNSAFE_NO_DRAIN"


@dataclass(frozen=True)
class StartFailure:
    """A replica that could not be started: its slot backs off like a crash."""

    service: str
    slot: int
    template: str
    message: str


@dataclass
class Execution:
    """What the executor did with a decision."""

    executed: list[Action] = field(default_factory=list)
    start_failures: list[StartFailure] = field(default_factory=list)
    # A failure of the service itself, not of one replica (its port cannot be bound).
    service_failures: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    changes: int = 0  # replicas started, stopped or removed
    #: (service, instance id) of each replica started.
    started: list[tuple[str, str]] = field(default_factory=list)
    published: RoutingTable | None = None
    volumes_created: list[CreateVolume] = field(default_factory=list)
    volumes_deleted: list[DeleteVolume] = field(default_factory=list)
    # (volume, node) -> why it could not be made: the starts needing it there fail.
    volume_failures: dict[tuple[str, str], str] = field(default_factory=dict)


def service_of_route(route: str) -> str:
    """The service a route belongs to (``web.preview`` -> ``web``)."""
    return route.split(".", 1)[0]


class Executor:
    """Performs decided passes through the runtimes and the data plane."""

    def __init__(
        self,
        *,
        runtimes: Mapping[str, Runtime],
        health: HealthMonitor,
        dataplane: DataPlane,
        cluster: str,
        advertise_host: str = "127.0.0.1",
        secrets: SecretValues | None = None,
        drain_timeout: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
        ingress: IngressFleet | None = None,
        fence: Callable[[], object] | None = None,
    ) -> None:
        """``fence`` raises NotLeader once this process may no longer act: it is checked
        before every start, stop, removal and publication, so a leader woken after its
        lease expired changes nothing (the pass ends with that error)."""
        self.fence = fence
        self.runtimes = runtimes
        self.ingress = ingress
        self.health = health
        self.dataplane = dataplane
        self.cluster = cluster
        self.advertise_host = advertise_host
        self.secrets = secrets
        self.drain_timeout = drain_timeout
        self.monotonic = monotonic
        self.published: RoutingTable | None = None
        #: Each rolling service's last batch: the instance ids the last run that started
        #: replicas of it started (the daemon's settle and the pass hold it:
        #: :meth:`batch_hold`).
        self.last_started: dict[str, tuple[str, ...]] = {}
        #: How long the answered replicas of that batch wait for the rest (decide.batch).
        self.ready_settle = READY_SETTLE
        self.unsafe_no_drain = os.environ.get(UNSAFE_NO_DRAIN_ENV) == "1"

    def run(
        self,
        desired: DesiredState,
        decision: PassDecision,
        *,
        held_routes: Collection[str] = (),
        table_without: Callable[[set[str]], RoutingTable] | None = None,
    ) -> Execution:
        """Carry out ``decision``. ``held_routes``: routes left out of the table while
        their service backs off after failing to bind; ``table_without(gone)``: the
        table once the replicas in ``gone`` are stopped."""
        done = Execution()
        for create in decision.volumes.creates:
            self._create_volume(desired, create, done)
        self._ingresses(decision.ingress.starts, done)
        stops = decision.stops()
        for stop in (s for s in stops if not s.drain):
            self._remove(stop, done)
        draining = [s for s in stops if s.drain]
        if draining and self.unsafe_no_drain:
            self._kill_undrained(draining, done)
        starts = [s for name in decision.order for s in decision.starts.get(name, ())]
        start_jobs: list[Callable[[], None]] = [
            partial(self._start, desired, decision, s, done) for s in starts
        ]
        hosts = decision.ingress.hosts
        # New replicas join the table once ready, in a later pass, and start whether or
        # not this publication is applied: when nothing leaves the table, or when every
        # leaving replica is terminating once withdrawn (a RollingUpdate's surge: they do
        # not count against maxSurge, Kubernetes' semantics), the starts run beside the
        # publication, then beside the drain and the stop (issue 20: a commit's first
        # replicas, and each wave's, do not wait for the data plane's round trip, nor for
        # the old replicas' drain, signal and exit). Otherwise (Recreate, a preemption) the
        # stops come first.
        beside = bool(start_jobs) and all(s.terminating_frees_room for s in draining)
        with ThreadPoolExecutor(max_workers=1) as pool:
            starting = pool.submit(self._run_jobs, start_jobs) if beside else None
            published, stale = self._publish_all(decision.table, hosts, held_routes, done)
            if not published:
                if draining:
                    done.errors.append(
                        f"{len(draining)} replica(s) not stopped: the routing table could not "
                        "be published, so they may still receive traffic"
                    )
                draining = []
            held = [s for s in draining if s.replica_id in stale]
            if held:
                done.errors.append(
                    f"{len(held)} replica(s) not stopped: a host's ingress did not take the "
                    "new table, so it may still send them requests"
                )
            draining = [s for s in draining if s.replica_id not in stale]
            stopped = self._drain_and_stop(draining, done) if draining else []
            if starting is not None:
                starting.result()
            else:
                self._run_jobs(start_jobs)
        if draining:
            gone = {s.replica_id for s in draining}
            after = table_without(gone) if table_without is not None else decision.table
            # The exited replicas are removed once the new ones have started, not beside
            # their start: a Docker engine's removal takes the same network-controller
            # lock its start needs (up to a second per container on a busy host), so
            # a removal beside a start made the start, which a rollout waits for, slower.
            # A stop is executed once its replica is removed; nothing is left behind.
            self._run_jobs(
                [
                    partial(self._publish_without, after, hosts, held_routes, done),
                    *(
                        partial(self._remove_exited, s, done)
                        for s, ok in zip(draining, stopped, strict=True)
                        if ok
                    ),
                ]
            )
        self._remember_batches(decision, done)
        if published:  # else replicas that were to stop may still use them
            for delete in decision.volumes.deletes:
                self._delete_volume(delete, done)
        self._ingresses(decision.ingress.removes, done)
        return done

    # ------------------------------------------------------------------ ingresses

    def _ingresses(self, actions: Sequence[StartIngress | RemoveIngress], done: Execution) -> None:
        """Start or remove hosts' ingresses, in parallel; each failure names its node."""
        fleet = self.ingress
        if not actions or fleet is None:
            return
        self._guard()

        def one(action: StartIngress | RemoveIngress) -> None:
            try:
                if isinstance(action, StartIngress):
                    fleet.start(action)
                else:
                    fleet.remove(action)
            except GitorchError as exc:
                what = "started" if isinstance(action, StartIngress) else "removed"
                done.errors.append(
                    f"node {action.node}: the ingress could not be {what}: {exc.message}"
                )
                return
            done.executed.append(action)

        with ThreadPoolExecutor(max_workers=min(8, len(actions))) as pool:
            list(pool.map(one, actions))

    def _publish_hosts(
        self,
        hosts: Mapping[str, HostTable],
        table: RoutingTable,
        held_routes: Collection[str],
        done: Execution,
    ) -> set[str]:
        """Each remote host's share of ``table``; the ids of the backends the hosts that
        failed to take it still hold."""
        if not hosts or self.ingress is None:
            return set()
        self._guard()
        shares = {
            node: HostTable(
                host.node,
                host.address,
                RoutingTable(
                    {
                        name: table.routes[name]
                        for name in host.table.routes
                        if name in table.routes and name not in held_routes
                    },
                    fence=host.table.fence,
                ),
            )
            for node, host in hosts.items()
        }
        failed = self.ingress.publish(shares)
        stale: set[str] = set()
        for node, message in sorted(failed.items()):
            done.errors.append(f"node {node}: its ingress did not take the table: {message}")
            for route in hosts[node].table.routes.values():
                stale.update(b.id for b in route.backends)
        return stale

    # ------------------------------------------------------------------ volumes

    def _create_volume(self, desired: DesiredState, create: CreateVolume, done: Execution) -> None:
        self._guard()
        runtime = self.runtimes.get(create.node)
        volume = desired.volumes.get(create.volume)
        try:
            if runtime is None:
                raise GitorchError(f"node {create.node} has no runtime")
            if volume is None:
                raise GitorchError(f"volume {create.volume} is not in Git")
            runtime.create_volume(volume_spec(volume), self.cluster)
        except GitorchError as exc:
            done.volume_failures[(create.volume, create.node)] = exc.message
            done.errors.append(
                f"volume {create.volume}: cannot make it on {create.node}: {exc.message}"
            )
            return
        done.executed.append(create)
        done.volumes_created.append(create)

    def _delete_volume(self, delete: DeleteVolume, done: Execution) -> None:
        self._guard()
        runtime = self.runtimes.get(delete.node)
        if runtime is None:
            return
        try:
            runtime.remove_volume(delete.volume, self.cluster)
        except GitorchError as exc:
            done.errors.append(
                f"volume {delete.volume}: cannot delete it on {delete.node}: {exc.message}"
            )
            return
        done.executed.append(delete)
        done.volumes_deleted.append(delete)

    # ------------------------------------------------------------------ replicas

    def _discovery(
        self, desired: DesiredState, service: Service, node: str, decision: PassDecision
    ) -> Discovery:
        """Where a replica on ``node`` reaches its dependencies: its own host's ingress
        (a remote host's address), else the daemon's (see :func:`discovery_for`)."""
        ports = {
            dep: desired.services[dep].expose.port  # type: ignore[union-attr]
            for dep in service.depends_on
            if dep in desired.services and desired.services[dep].expose is not None
        }
        runtime = self.runtimes.get(node)
        return discovery_for(
            ports,
            host_ingress=decision.ingress.addresses.get(node),
            local_ingress=self.advertise_host,
            container=runtime is not None and runtime.driver == "docker",
        )

    def _guard(self) -> None:
        if self.fence is not None:
            self.fence()

    def _start(
        self, desired: DesiredState, decision: PassDecision, action: StartReplica, done: Execution
    ) -> None:
        self._guard()
        service_decision = decision.services[action.service]
        target, revision = service_decision.target, service_decision.record.revision
        stable = service_decision.stable
        if stable is not None and action.template == stable.template_digest:
            # A progressive rollout's stable set: its own spec, traced to its own commit.
            target = stable
            revision = service_decision.stable_revision or revision
        runtime = self.runtimes.get(action.node)
        try:
            if runtime is None:
                raise GitorchError(f"node {action.node} has no runtime")
            for mount in target.volumes:
                failed = done.volume_failures.get((mount.volume, action.node))
                if failed is not None:
                    raise GitorchError(f"volume {mount.volume} could not be made: {failed}")
            found = self._discovery(desired, target, action.node, decision)
            spec = replica_spec(
                target,
                action.slot,
                cluster=self.cluster,
                revision=revision,
                discovery=found.env,
                volumes=desired.volumes,
                secrets=self.secrets,
                repo_secrets=desired.secrets,
                extra_hosts=found.hosts,
            )
            began = time.perf_counter()
            log.debug("starting %s on %s", action.replica, action.node)
            instance = runtime.create(spec, self.cluster)
            log.debug("started %s in %.0f ms", action.replica, (time.perf_counter() - began) * 1000)
        except GitorchError as exc:
            self._start_failed(action, exc.message, done)
            return
        except Exception as exc:  # a driver's bug fails this replica, not the pass
            log.exception("starting %s failed", action.replica)
            self._start_failed(action, f"internal error: {exc!r}", done)
            return
        done.executed.append(action)
        done.changes += 1
        done.started.append((action.service, instance.id))
        try:
            self.health.track(instance.id, action.node, instance, target)
        except GitorchError as exc:
            log.warning("cannot probe %s: %s", action.replica, exc.message)

    def _remember_batches(self, decision: PassDecision, done: Execution) -> None:
        """Each service this run started replicas of: its batch, to be released as one
        while it rolls out a spec not yet healthy. A scale-up or a repair of a healthy
        spec holds nothing: its replicas take traffic as each answers."""
        batches: dict[str, list[str]] = {}
        for service, instance_id in done.started:
            batches.setdefault(service, []).append(instance_id)
        for service, ids in batches.items():
            service_decision = decision.services.get(service)
            if service_decision is None or service_decision.record.reached_healthy:
                self.last_started.pop(service, None)
            else:
                self.last_started[service] = tuple(ids)

    def batch_hold(self) -> BatchHold:
        """What of each service's last batch (the replicas the last run that started
        some of it started, still probed and not given up) a pass holds back now: the
        ones that answered their first readiness probe while others have not
        (decide.batch). A batch none of whose replicas is probed any more is forgotten."""
        holds = []
        for service, batch in list(self.last_started.items()):
            first_ready: dict[str, float | None] = {}
            for replica_id in batch:
                health = self.health.health(replica_id)
                if health is None or health.needs_restart:
                    continue
                first_ready[replica_id] = health.first_ready_at
            if not first_ready:
                # pop: an API request's plan observes from another thread.
                self.last_started.pop(service, None)
                continue
            holds.append(batch_hold(first_ready, self.health.now(), self.ready_settle))
        return merged_holds(holds)

    def _start_failed(self, action: StartReplica, message: str, done: Execution) -> None:
        done.executed.append(action)
        done.start_failures.append(
            StartFailure(action.service, action.slot, action.template, message)
        )
        done.errors.append(f"{action.replica}: cannot start on {action.node}: {message}")

    def _remove(self, stop: StopReplica, done: Execution) -> None:
        self._guard()
        self.health.untrack(stop.replica_id)
        runtime = self.runtimes.get(stop.node)
        if runtime is None:
            return
        try:
            runtime.remove(stop.replica_id)
        except GitorchError as exc:
            done.errors.append(f"{stop.replica}: cannot remove: {exc.message}")
            return
        done.executed.append(stop)
        done.changes += 1

    def _stop(self, stop: StopReplica, done: Execution) -> bool:
        """Signal a drained replica and wait for its exit (within its grace, then
        SIGKILL); True once it has exited and is to be removed."""
        self._guard()
        runtime = self.runtimes.get(stop.node)
        try:
            if runtime is not None:
                runtime.stop(stop.replica_id, stop.grace)
        except GitorchError as exc:
            done.errors.append(f"{stop.replica}: cannot stop: {exc.message}")
            return False
        finally:
            self.health.untrack(stop.replica_id)
        if runtime is None:
            done.executed.append(stop)
            done.changes += 1
            return False
        return True

    def _remove_exited(self, stop: StopReplica, done: Execution) -> None:
        """Remove a replica :meth:`_stop` saw exit: the stop is done once it is gone."""
        self._guard()
        runtime = self.runtimes[stop.node]
        try:
            runtime.remove(stop.replica_id)
        except GitorchError as exc:
            done.errors.append(f"{stop.replica}: cannot remove: {exc.message}")
            return
        done.executed.append(stop)
        done.changes += 1

    def _publish_all(
        self,
        table: RoutingTable,
        hosts: Mapping[str, HostTable],
        held_routes: Collection[str],
        done: Execution,
    ) -> tuple[bool, set[str]]:
        """Publish ``table`` here, then (once applied here) on the hosts' ingresses:
        whether it was applied here, and the backends hosts that failed still hold."""
        if not self._publish(table, held_routes, done):
            return False, set()
        return True, self._publish_hosts(hosts, table, held_routes, done)

    def _publish_without(
        self,
        table: RoutingTable,
        hosts: Mapping[str, HostTable],
        held_routes: Collection[str],
        done: Execution,
    ) -> None:
        """Publish the table once the stopped replicas are out of it, here and on hosts."""
        self._publish(table, held_routes, done)
        self._publish_hosts(hosts, table, held_routes, done)

    def _drain_and_stop(self, draining: list[StopReplica], done: Execution) -> list[bool]:
        """Drain the leaving replicas, then stop them in parallel; which have exited."""
        self._drain(draining)
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(draining)))) as pool:
            return list(pool.map(lambda s: self._stop(s, done), draining))

    @staticmethod
    def _run_jobs(jobs: Sequence[Callable[[], None]]) -> None:
        """Run ``jobs`` in parallel (up to 8 at once) and wait for them all."""
        if not jobs:
            return
        with ThreadPoolExecutor(max_workers=min(8, len(jobs))) as pool:
            for _ in pool.map(lambda job: job(), jobs):
                pass

    def _kill_undrained(self, draining: list[StopReplica], done: Execution) -> None:
        """The test-only broken drain (module docstring): SIGKILL while still in rotation."""
        self._guard()
        log.warning(
            "%s=1: killing %d leaving replica(s) without draining them (test only)",
            UNSAFE_NO_DRAIN_ENV,
            len(draining),
        )
        for stop in draining:
            runtime = self.runtimes.get(stop.node)
            if runtime is not None:
                try:
                    runtime.stop(stop.replica_id, 0.0)
                except GitorchError as exc:
                    done.errors.append(f"{stop.replica}: cannot kill: {exc.message}")

    def _drain(self, draining: list[StopReplica]) -> None:
        """Wait until no draining replica has a request in flight (bounded)."""
        wait_drained(
            self.dataplane,
            [(stop.service, stop.replica_id) for stop in draining],
            self.monotonic() + self.drain_timeout,
            self.monotonic,
        )

    # ------------------------------------------------------------------ traffic

    def _publish(self, table: RoutingTable, held_routes: Collection[str], done: Execution) -> bool:
        """Apply ``table`` (minus ``held_routes``); a route whose port cannot be bound
        fails its service alone and the others are applied without it. False when the
        table could not be applied at all."""
        routes = {n: r for n, r in table.routes.items() if n not in held_routes}
        # After a refused table the data plane holds (and keeps on disk, for a proxy
        # started afresh) that table, not the one published before: the table without the
        # failed routes is sent even when it equals that one (found by the chaos soak: a
        # restarted proxy served a route the daemon held, until the next table withdrew it).
        refused = False
        for _ in range(3):
            candidate = RoutingTable(routes)
            if candidate == self.published and not refused:
                done.published = candidate
                return True
            self._guard()
            began = time.perf_counter()
            try:
                self.dataplane.apply(candidate)
                log.debug("table published in %.0f ms", (time.perf_counter() - began) * 1000)
            except ListenError as exc:
                refused = True
                failed = dict(exc.routes) or {n: exc.message for n in routes}
                for route, message in failed.items():
                    service = service_of_route(route)
                    done.service_failures.setdefault(service, message)
                    routes.pop(route, None)
                continue
            except GitorchError as exc:
                done.errors.append(f"routing table not applied: {exc.message}")
                return False
            self.published = candidate
            done.published = candidate
            return True
        done.errors.append("routing table not applied: ports kept failing")
        return False
