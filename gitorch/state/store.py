"""The state store: the facade every caller uses, over one backend's repositories.

``StateStore(LOCATION)`` opens the backend a location names: a directory is the embedded
SQLite backend (:mod:`gitorch.state.sqlite`), ``etcd://HOST:PORT[,HOST:PORT...][/NAMESPACE]``
the etcd backend (:mod:`gitorch.state.etcd`). Each method delegates to the repository of
its concern (:mod:`gitorch.state.repositories`), which callers may also use directly
(``store.rollouts.get(name)``); :meth:`StateStore.transaction` groups writes across
repositories: they commit together or not at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from gitorch.errors import StateError
from gitorch.state.audit_chain import SYSTEM_ACTOR, ChainEntry
from gitorch.state.db import DEFAULT_BUSY_TIMEOUT
from gitorch.state.location import StateLocation, parse_location
from gitorch.state.records import (
    AnalysisRunPhase,
    AnalysisRunRecord,
    AppliedObject,
    AuditEvent,
    AutoscalerRecord,
    BackoffRecord,
    Measurement,
    MeasurementPhase,
    NodeCondition,
    NodePoolRecord,
    NodeRecord,
    PortAllocation,
    RevisionRecord,
    RevisionResult,
    RolloutRecord,
    TrafficSnapshot,
    VolumeRecord,
)
from gitorch.state.repositories import DEFAULT_PORT_RANGE, Backend
from gitorch.state.schema import MIGRATIONS, Migration

__all__ = ["DEFAULT_PORT_RANGE", "StateStore"]

Clock = Callable[[], float]
T = TypeVar("T")


class StateStore:
    """Typed access to gitorch's state (see the module docstring).

    ``location``: a state directory (SQLite) or an ``etcd://`` URL (or a parsed
    :class:`~gitorch.state.location.StateLocation`). ``readonly=True`` (for ``status`` and
    ``history``) creates and migrates nothing and refuses writes with
    :class:`~gitorch.state.errors.StateReadOnly`. Opening needs no
    :class:`~gitorch.state.lock.DaemonLock` nor leadership: the daemon takes those to be
    the only *reconciler*, not the only reader.
    """

    def __init__(
        self,
        location: str | Path | StateLocation,
        *,
        readonly: bool = False,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        clock: Clock = time.time,
        migrations: Sequence[Migration] = MIGRATIONS,
        backend: Backend | None = None,
    ) -> None:
        self.location = (
            location if isinstance(location, StateLocation) else parse_location(location)
        )
        self.readonly = readonly
        self._clock = clock
        if backend is None:
            backend = _open_backend(
                self.location,
                readonly=readonly,
                busy_timeout=busy_timeout,
                clock=clock,
                migrations=migrations,
            )
        self.backend = backend
        self.revisions = backend.revisions
        self.rollouts = backend.rollouts
        self.inventory = backend.inventory
        self.ports = backend.ports
        self.nodes = backend.nodes
        self.backoff = backend.backoff
        self.analysis = backend.analysis
        self.traffic = backend.traffic
        self.autoscalers = backend.autoscalers
        self.node_pools = backend.node_pools
        self.volumes = backend.volumes
        self.audit = backend.audit
        self.schema_version = backend.schema_version

    @property
    def state_dir(self) -> Path:
        """The state directory of a SQLite store (StateError for an etcd one)."""
        if self.location.directory is None:
            raise StateError(f"the state store {self.describe()} has no state directory")
        return self.location.directory

    @property
    def db_path(self) -> Path:
        from gitorch.state.layout import STATE_DB

        return self.state_dir / STATE_DB

    def describe(self) -> str:
        """Where the state lives (a path, or ``etcd://.../NAMESPACE``), for messages."""
        return self.backend.describe()

    def close(self) -> None:
        """Close the backend's connections. Further use raises StateError."""
        self.backend.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything written inside commits together, or (on any exception) not at all.

        Nesting is allowed: an inner block is rolled back alone if it raises (and the
        exception still propagates to the outer block). On etcd the whole block is one
        ``Txn``, sent when the outermost block ends, and conditioned on this daemon's
        leadership when it leads.
        """
        with self.backend.transaction():
            yield

    def atomic(self, work: Callable[[], T]) -> T:
        """``work()`` in one transaction; on etcd, tried again (from the start) when a
        concurrent writer changed what it read, unless it runs inside a caller's
        transaction (the conflict is then the caller's). ``work`` must only write the
        store: it may run more than once."""
        return self.backend.atomic(work)

    def set_trace(self, callback: Callable[[str], None] | None) -> None:
        """Call ``callback`` with each statement (SQL) or request (etcd) this thread sends."""
        set_trace = getattr(self.backend, "set_trace", None)
        if set_trace is not None:
            set_trace(callback)

    # -- applied revisions -------------------------------------------------------------

    def record_revision(
        self,
        sha: str,
        *,
        author: str = "",
        committed_at: str | None = None,
        signer: str | None = None,
        services: Sequence[str] = (),
        result: RevisionResult = RevisionResult.IN_PROGRESS,
        reason: str = "",
        summary: Mapping[str, Any] | None = None,
        at: float | None = None,
        trigger: str = "",
    ) -> RevisionRecord:
        """Record that revision ``sha`` is being (or was) applied to ``services``;
        ``trigger``: what made gitorch read it (``poll``, ``webhook push ...``)."""
        return self.revisions.record(
            sha,
            author=author,
            committed_at=committed_at,
            signer=signer,
            services=services,
            result=result,
            reason=reason,
            summary=summary,
            at=at,
            trigger=trigger,
        )

    def finish_revision(
        self,
        revision_id: int,
        result: RevisionResult,
        *,
        reason: str = "",
        summary: Mapping[str, Any] | None = None,
        service_results: Mapping[str, RevisionResult] | None = None,
    ) -> RevisionRecord:
        """Set the outcome of an application. Services not named in ``service_results``
        take the overall ``result``; ``summary`` replaces the stored one when given."""
        return self.revisions.finish(
            revision_id, result, reason=reason, summary=summary, service_results=service_results
        )

    def get_revision(self, revision_id: int) -> RevisionRecord | None:
        """One application by id."""
        return self.revisions.get(revision_id)

    def list_revisions(
        self,
        *,
        service: str | None = None,
        limit: int | None = 100,
        before_id: int | None = None,
    ) -> list[RevisionRecord]:
        """Applications, newest first, in one query; ``service`` keeps those touching it.

        ``before_id`` pages on: pass the smallest id of the previous page.
        """
        return self.revisions.list(service=service, limit=limit, before_id=before_id)

    def last_applied_revision(self) -> RevisionRecord | None:
        """The newest application that succeeded, or that found nothing to change (Flux's
        ``lastAppliedRevision``)."""
        return self.revisions.last_applied()

    def last_attempted_revision(self) -> RevisionRecord | None:
        """The newest application, whatever its result (in progress included)."""
        return self.revisions.last_attempted()

    def last_admitted_revision(self) -> RevisionRecord | None:
        """The newest application of a revision that was admitted (neither invalid nor
        refused by a policy), whatever its result: the one the daemon is applying or
        applied last. Rejected commits are history entries, never in the way of it."""
        return self.revisions.last_admitted()

    def last_successful_revision(self, service: str) -> RevisionRecord | None:
        """The newest application in which ``service`` itself succeeded."""
        return self.revisions.last_successful(service)

    def last_successful_revisions(self) -> dict[str, RevisionRecord]:
        """For every service ever applied successfully, its newest successful application."""
        return self.revisions.last_successful_per_service()

    # -- crash-loop back-off -------------------------------------------------------------

    def record_backoff(self, record: BackoffRecord) -> None:
        """Store the back-off state of one replica slot's template (replacing the
        record of the same service, slot and template)."""
        self.backoff.record(record)

    def clear_backoff(
        self, service: str, slot: int | None = None, template: str | None = None
    ) -> None:
        """Forget the back-off of one slot's template (it ran stably, or its template
        is gone), of every template of a slot, or of a whole service (pruned)."""
        self.backoff.clear(service, slot, template)

    def list_backoff(self) -> list[BackoffRecord]:
        """Every slot and template in back-off, in one query."""
        return self.backoff.list()

    # -- inventory ---------------------------------------------------------------------

    def record_applied(
        self, kind: str, name: str, revision: str, digest: str, spec: Mapping[str, Any]
    ) -> None:
        """Remember ``spec`` (a canonical object) as what is applied for ``kind/name``."""
        self.inventory.record(kind, name, revision, digest, spec)

    def forget_applied(self, kind: str, name: str) -> bool:
        """Drop ``kind/name`` from the inventory (after it was pruned)."""
        return self.inventory.forget(kind, name)

    def list_applied(self) -> list[AppliedObject]:
        """The whole inventory, ordered by kind then name, in one query."""
        return self.inventory.list()

    # -- rollouts ----------------------------------------------------------------------

    def upsert_rollout(
        self, record: RolloutRecord, *, reset_requests: bool = False
    ) -> RolloutRecord:
        """Store ``record`` as the service's rollout state; return what was stored.

        ``updated_at`` is set to now; a ``started_at`` of 0 also means now.

        The request flags (``promote_requested``, ``abort_requested``) belong to
        ``gitorch promote`` / ``gitorch abort`` (:meth:`request`), which may set them while
        a reconcile pass holds an older copy of the record: saving that copy must not
        write them back to 0, so an update leaves them as stored. Only a new record takes
        them from ``record``; ``reset_requests=True`` (a new rollout begins: requests
        made for the rollout it replaces do not carry over) clears them. A pass that
        acted on a request uses it up with :meth:`consume_request`. The returned record
        carries the flags as stored.
        """
        return self.rollouts.upsert(record, reset_requests=reset_requests)

    def request(self, service: str, what: str) -> bool:
        """``gitorch promote`` / ``gitorch abort``: flag the service's rollout for the next
        pass (``what`` is "promote" or "abort"). False when the service has no rollout.

        Only the flag is written, so it cannot undo a concurrent save of the rest of the
        record, nor be undone by one (see :meth:`upsert_rollout`). Requesting twice
        before a pass acts on it is one request.
        """
        return self.rollouts.request(service, what)

    def consume_request(self, service: str, what: str) -> bool:
        """Use up a pending ``what`` request ("promote" or "abort") of ``service``'s rollout.

        An atomic compare-and-clear: True if the flag was set and is now cleared, False
        if there was none. Call it inside the transaction that saves what acting on the
        request changed (the new step, the rollback), so the request is either acted on
        exactly once or stays pending for the next pass, a crash included.
        """
        return self.rollouts.consume_request(service, what)

    def get_rollout(self, service: str) -> RolloutRecord | None:
        """The service's rollout state, if it was ever rolled out."""
        return self.rollouts.get(service)

    def list_rollouts(self) -> list[RolloutRecord]:
        """Every service's rollout state, by service name."""
        return self.rollouts.list()

    def delete_rollout(self, service: str) -> bool:
        """Forget a service's rollout state (the service left Git); True if there was one."""
        return self.rollouts.delete(service)

    # -- host ports --------------------------------------------------------------------

    def allocate_port(
        self,
        node: str,
        owner: str,
        *,
        port: int | None = None,
        port_range: tuple[int, int] = DEFAULT_PORT_RANGE,
        at: float | None = None,
    ) -> PortAllocation:
        """Give ``owner`` a host port on ``node``: ``port`` if given, else the lowest free
        one in ``port_range`` (inclusive).

        Idempotent per owner: an owner that already holds a port on the node gets it back
        (so a crash between allocation and use leaks nothing). Atomic across threads and
        processes: a double allocation is impossible. Raises :class:`PortUnavailable`
        when the port is someone else's or the range is full.
        """
        return self.ports.allocate(node, owner, port=port, port_range=port_range, at=at)

    def release_port(self, node: str, host_port: int) -> bool:
        """Free one port; True if it was allocated."""
        return self.ports.release(node, host_port)

    def release_owner(self, owner: str) -> int:
        """Free every port ``owner`` holds, on any node; return how many."""
        return self.ports.release_owner(owner)

    def list_ports(self, node: str | None = None) -> list[PortAllocation]:
        """Allocated ports (of one node, or all), by node then port."""
        return self.ports.list(node)

    # -- nodes -------------------------------------------------------------------------

    def register_node(
        self,
        name: str,
        driver: str,
        *,
        endpoint: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> NodeRecord:
        """Add a node or update its driver, endpoint and labels (its last known
        condition is kept: registering is not observing)."""
        return self.nodes.register(name, driver, endpoint=endpoint, labels=labels)

    def update_node_condition(
        self,
        name: str,
        condition: NodeCondition,
        *,
        message: str = "",
        seen: bool = True,
        at: float | None = None,
    ) -> NodeRecord:
        """Record an observation of a node. ``seen=False`` (the node did not answer)
        changes the condition but keeps the time it was last heard from."""
        return self.nodes.update_condition(name, condition, message=message, seen=seen, at=at)

    def set_draining(self, name: str, draining: bool) -> NodeRecord:
        """Start (or stop) draining a registered node."""
        return self.nodes.set_draining(name, draining)

    def get_node(self, name: str) -> NodeRecord | None:
        return self.nodes.get(name)

    def list_nodes(self) -> list[NodeRecord]:
        """Every registered node, by name."""
        return self.nodes.list()

    def remove_node(self, name: str) -> bool:
        """Forget a node; True if it was registered."""
        return self.nodes.remove(name)

    # -- analysis measurements and runs ------------------------------------------------

    def add_measurement(
        self,
        service: str,
        revision: str,
        phase: MeasurementPhase,
        *,
        analysis: str = "",
        value: Mapping[str, Any] | None = None,
        message: str = "",
        at: float | None = None,
        run_id: int | None = None,
    ) -> Measurement:
        """Store one analysis measurement of ``service`` at ``revision`` (counted toward
        the analysis run ``run_id`` when given, see :meth:`open_analysis_run`)."""
        return self.analysis.add_measurement(
            service,
            revision,
            phase,
            analysis=analysis,
            value=value,
            message=message,
            at=at,
            run_id=run_id,
        )

    def list_measurements(
        self,
        service: str,
        *,
        revision: str | None = None,
        analysis: str | None = None,
        run_id: int | None = None,
        limit: int | None = 1000,
    ) -> list[Measurement]:
        """Measurements of a service, oldest first (the order an analysis counts them)."""
        return self.analysis.list_measurements(
            service, revision=revision, analysis=analysis, run_id=run_id, limit=limit
        )

    def open_analysis_run(
        self,
        service: str,
        revision: str,
        analysis: str,
        step_started_at: float,
        *,
        at: float | None = None,
    ) -> AnalysisRunRecord:
        """The analysis run with this identity (see :class:`AnalysisRunRecord`): the stored
        one if there is one (a restarted daemon resumes it), else a new running run that
        starts at ``at``. Idempotent, also across processes (the identity is unique)."""
        return self.analysis.open_run(service, revision, analysis, step_started_at, at=at)

    def conclude_analysis_run(
        self,
        run_id: int,
        phase: AnalysisRunPhase,
        message: str = "",
        *,
        at: float | None = None,
    ) -> AnalysisRunRecord:
        """Set a run's verdict so far; ``concluded_at`` is set when ``phase`` is not
        running (and kept from the first conclusion: a verdict is never re-dated)."""
        return self.analysis.conclude_run(run_id, phase, message, at=at)

    def set_analysis_window(self, run_id: int, figures: Mapping[str, Any]) -> None:
        """Where run ``run_id``'s current window begins: the data plane's cumulative
        figures (see :attr:`AnalysisRunRecord.window_figures`)."""
        self.analysis.set_window(run_id, figures)

    def list_analysis_runs(
        self,
        service: str,
        *,
        revision: str | None = None,
        step_started_at: float | None = None,
    ) -> list[AnalysisRunRecord]:
        """Analysis runs of a service (of one rollout, of one step entry), oldest first."""
        return self.analysis.list_runs(service, revision=revision, step_started_at=step_started_at)

    # -- traffic snapshots -------------------------------------------------------------

    def replace_traffic(self, snapshots: Iterable[TrafficSnapshot]) -> None:
        """Make ``snapshots`` the stored traffic, one per route, in one transaction: a
        route not given (a service that left Git) loses its snapshot."""
        self.traffic.replace(snapshots)

    def get_traffic(self, service: str) -> TrafficSnapshot | None:
        """The latest stored traffic of one route (None when the daemon wrote none)."""
        return self.traffic.get(service)

    def list_traffic(self) -> list[TrafficSnapshot]:
        """Every stored route's latest traffic, by name."""
        return self.traffic.list()

    # -- autoscalers -------------------------------------------------------------------

    def save_autoscaler(self, record: AutoscalerRecord) -> None:
        """Insert or replace the autoscaler record of ``record.service``."""
        self.autoscalers.save(record)

    def get_autoscaler(self, service: str) -> AutoscalerRecord | None:
        return self.autoscalers.get(service)

    def list_autoscalers(self) -> list[AutoscalerRecord]:
        """Every autoscaler record, by service name."""
        return self.autoscalers.list()

    def forget_autoscaler(self, service: str) -> bool:
        """Drop a service's autoscaler record (its autoscale block or itself left Git)."""
        return self.autoscalers.forget(service)

    # -- node pools ---------------------------------------------------------------------

    def save_node_pool(self, record: NodePoolRecord) -> None:
        """Insert or replace the record of NodePool ``record.pool``."""
        self.node_pools.save(record)

    def get_node_pool(self, pool: str) -> NodePoolRecord | None:
        return self.node_pools.get(pool)

    def list_node_pools(self) -> list[NodePoolRecord]:
        """Every NodePool record, by pool name."""
        return self.node_pools.list()

    def forget_node_pool(self, pool: str) -> bool:
        """Drop a pool's record (it left Git and its last node is deleted)."""
        return self.node_pools.forget(pool)

    # -- volumes -----------------------------------------------------------------------

    def bind_volume(
        self, name: str, node: str, spec: Mapping[str, Any], *, at: float | None = None
    ) -> None:
        """Bind ``name`` to ``node`` (or note the Git spec of a bound one). A released
        volume back in Git is bound again: its kept data is its data."""
        self.volumes.bind(name, node, spec, at=at)

    def volume_created(self, name: str, node: str, *, at: float | None = None) -> None:
        """The backend volume of ``name`` exists on ``node`` now (made, or adopted)."""
        self.volumes.created(name, node, at=at)

    def volume_missing(self, name: str, node: str, *, at: float | None = None) -> None:
        """A volume that was made is not on its node any more (kept: it is not re-made)."""
        self.volumes.missing(name, node, at=at)

    def release_volume(self, name: str, *, at: float | None = None) -> None:
        """``name`` left Git with reclaimPolicy Retain: its data stays where it is."""
        self.volumes.release(name, at=at)

    def forget_volume(self, name: str, node: str | None = None) -> bool:
        """Drop the records of ``name`` (on ``node``, or everywhere); True if any."""
        return self.volumes.forget(name, node)

    def reset_volume(self, name: str, message: str, actor: str) -> None:
        """Forget ``name``'s records (a missing volume: the next pass makes it anew) and
        say so in the audit log as ``actor``, both or neither."""

        def write() -> None:
            self.forget_volume(name)
            self.append_event("volume.reset", message, data={"volume": name}, actor=actor)

        self.atomic(write)

    def list_volumes(self) -> list[VolumeRecord]:
        """Every volume record, by name then node."""
        return self.volumes.list()

    # -- history / audit log -----------------------------------------------------------

    def append_event(
        self,
        kind: str,
        message: str,
        *,
        service: str | None = None,
        revision: str | None = None,
        data: Mapping[str, Any] | None = None,
        at: float | None = None,
        actor: str = SYSTEM_ACTOR,
    ) -> AuditEvent:
        """Append one entry to the audit log (which can never be updated or deleted),
        chained by hash to the one before (gitorch.state.audit_chain). ``actor``: who
        did it; by default gitorch itself."""
        return self.audit.append(
            kind, message, service=service, revision=revision, data=data, at=at, actor=actor
        )

    def audit_chain(self) -> tuple[list[ChainEntry], int | None]:
        """Every audit entry in id order, as the chain reads it, and the highest id the
        log ever handed out (None when unknown): what ``gitorch audit --verify`` checks."""
        return self.audit.chain()

    def list_events(
        self,
        *,
        service: str | None = None,
        kind: str | None = None,
        after_id: int | None = None,
        since: float | None = None,
        limit: int | None = 100,
        newest_first: bool = True,
    ) -> list[AuditEvent]:
        """Audit entries in one query. ``after_id`` tails the log (entries added since);
        ``since``: entries at or after that time."""
        return self.audit.list(
            service=service,
            kind=kind,
            after_id=after_id,
            since=since,
            limit=limit,
            newest_first=newest_first,
        )


def _open_backend(
    location: StateLocation,
    *,
    readonly: bool,
    busy_timeout: float,
    clock: Clock,
    migrations: Sequence[Migration],
) -> Backend:
    """The backend ``location`` names (etcd's client loads only when it is used)."""
    if location.etcd is not None:
        from gitorch.state.etcd.backend import EtcdBackend

        return EtcdBackend(location.etcd, readonly=readonly, clock=clock)
    from gitorch.state.moved import refuse_if_moved
    from gitorch.state.sqlite.backend import SqliteBackend

    assert location.directory is not None
    refuse_if_moved(location.directory)
    return SqliteBackend(
        location.directory,
        readonly=readonly,
        busy_timeout=busy_timeout,
        clock=clock,
        migrations=migrations,
    )
