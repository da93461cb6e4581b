"""The state store's repositories, one per concern, as interfaces both backends implement.

A backend (:class:`Backend`) holds one repository per concern and the transaction that
groups their writes. :class:`~gitorch.state.store.StateStore` is the facade callers use:
it opens the backend a location names (a directory: SQLite; ``etcd://...``: etcd) and
delegates each method to the repository that owns it. Nothing above ``gitorch/state/``
knows which backend runs.

::

    Backend
    ├── revisions    applied revisions and their per-service results
    ├── rollouts     each service's rollout record, and promote/abort requests on it
    ├── inventory    the canonical form of every object gitorch applied
    ├── ports        host-port allocations per node
    ├── nodes        registered nodes and their last observed condition
    ├── backoff      crash-loop back-off per replica slot and template
    ├── analysis     analysis runs and their measurements
    ├── traffic      the latest per-version traffic of each route
    ├── volumes      where each Volume is bound, made, released or lost
    ├── autoscalers  the count each autoscaled service runs, and its windows' memory
    ├── node_pools   the nodes each NodePool made, and its decisions' memory
    └── audit        the append-only history/audit log

Every write method groups its own writes in one transaction; called inside
``with backend.transaction():`` it joins that one instead, so a group of writes across
repositories commits together or not at all (SQLite: one ``BEGIN IMMEDIATE``; etcd: one
``Txn``, conditioned on the daemon's leadership when it leads).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from gitorch.state.audit_chain import ChainEntry
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

T = TypeVar("T")

#: Host ports handed out when no port is requested. Below Linux's ephemeral range
#: (32768-60999), so they do not collide with ports the kernel picks for outgoing
#: connections or with Docker's own random publishing.
DEFAULT_PORT_RANGE = (30000, 32767)

#: The requests ``gitorch promote`` / ``gitorch abort`` can make on a rollout.
ROLLOUT_REQUESTS = ("promote", "abort")


def check_request(what: str) -> str:
    """``what`` when it is a rollout request, else ValueError."""
    if what not in ROLLOUT_REQUESTS:
        raise ValueError(f"unknown rollout request {what!r} (promote or abort)")
    return what


class RevisionRepository(Protocol):
    def record(
        self,
        sha: str,
        *,
        author: str,
        committed_at: str | None,
        signer: str | None,
        services: Sequence[str],
        result: RevisionResult,
        reason: str,
        summary: Mapping[str, Any] | None,
        at: float | None,
        trigger: str,
    ) -> RevisionRecord: ...

    def finish(
        self,
        revision_id: int,
        result: RevisionResult,
        *,
        reason: str,
        summary: Mapping[str, Any] | None,
        service_results: Mapping[str, RevisionResult] | None,
    ) -> RevisionRecord: ...

    def get(self, revision_id: int) -> RevisionRecord | None: ...

    def list(
        self, *, service: str | None, limit: int | None, before_id: int | None
    ) -> list[RevisionRecord]: ...

    def last_applied(self) -> RevisionRecord | None: ...

    def last_attempted(self) -> RevisionRecord | None: ...

    def last_admitted(self) -> RevisionRecord | None: ...

    def last_successful(self, service: str) -> RevisionRecord | None: ...

    def last_successful_per_service(self) -> dict[str, RevisionRecord]: ...


class RolloutRepository(Protocol):
    def upsert(self, record: RolloutRecord, *, reset_requests: bool) -> RolloutRecord: ...

    def request(self, service: str, what: str) -> bool: ...

    def consume_request(self, service: str, what: str) -> bool: ...

    def get(self, service: str) -> RolloutRecord | None: ...

    def list(self) -> list[RolloutRecord]: ...

    def delete(self, service: str) -> bool: ...


class InventoryRepository(Protocol):
    def record(
        self, kind: str, name: str, revision: str, digest: str, spec: Mapping[str, Any]
    ) -> None: ...

    def forget(self, kind: str, name: str) -> bool: ...

    def list(self) -> list[AppliedObject]: ...


class PortRepository(Protocol):
    def allocate(
        self,
        node: str,
        owner: str,
        *,
        port: int | None,
        port_range: tuple[int, int],
        at: float | None,
    ) -> PortAllocation: ...

    def release(self, node: str, host_port: int) -> bool: ...

    def release_owner(self, owner: str) -> int: ...

    def list(self, node: str | None) -> list[PortAllocation]: ...


class NodeRepository(Protocol):
    def register(
        self, name: str, driver: str, *, endpoint: str, labels: Mapping[str, str] | None
    ) -> NodeRecord: ...

    def update_condition(
        self, name: str, condition: NodeCondition, *, message: str, seen: bool, at: float | None
    ) -> NodeRecord: ...

    def set_draining(self, name: str, draining: bool) -> NodeRecord: ...

    def get(self, name: str) -> NodeRecord | None: ...

    def list(self) -> list[NodeRecord]: ...

    def remove(self, name: str) -> bool: ...


class BackoffRepository(Protocol):
    def record(self, record: BackoffRecord) -> None: ...

    def clear(self, service: str, slot: int | None, template: str | None = None) -> None: ...

    def list(self) -> list[BackoffRecord]: ...


class AnalysisRepository(Protocol):
    def add_measurement(
        self,
        service: str,
        revision: str,
        phase: MeasurementPhase,
        *,
        analysis: str,
        value: Mapping[str, Any] | None,
        message: str,
        at: float | None,
        run_id: int | None,
    ) -> Measurement: ...

    def list_measurements(
        self,
        service: str | None,  # None: every service's (gitorch state migrate)
        *,
        revision: str | None,
        analysis: str | None,
        run_id: int | None,
        limit: int | None,
    ) -> list[Measurement]: ...

    def open_run(
        self,
        service: str,
        revision: str,
        analysis: str,
        step_started_at: float,
        *,
        at: float | None,
    ) -> AnalysisRunRecord: ...

    def conclude_run(
        self, run_id: int, phase: AnalysisRunPhase, message: str, *, at: float | None
    ) -> AnalysisRunRecord: ...

    def list_runs(
        self, service: str | None, *, revision: str | None, step_started_at: float | None
    ) -> list[AnalysisRunRecord]: ...

    def set_window(self, run_id: int, figures: Mapping[str, Any]) -> None: ...


class TrafficRepository(Protocol):
    def replace(self, snapshots: Iterable[TrafficSnapshot]) -> None: ...

    def get(self, service: str) -> TrafficSnapshot | None: ...

    def list(self) -> list[TrafficSnapshot]: ...


class AutoscalerRepository(Protocol):
    def save(self, record: AutoscalerRecord) -> None:
        """Insert or replace the record of ``record.service``."""
        ...

    def get(self, service: str) -> AutoscalerRecord | None: ...

    def list(self) -> list[AutoscalerRecord]:
        """Every record, by service name."""
        ...

    def forget(self, service: str) -> bool:
        """Drop a service's record; whether there was one."""
        ...


class NodePoolRepository(Protocol):
    def save(self, record: NodePoolRecord) -> None:
        """Insert or replace the record of ``record.pool``."""
        ...

    def get(self, pool: str) -> NodePoolRecord | None: ...

    def list(self) -> list[NodePoolRecord]:
        """Every record, by pool name."""
        ...

    def forget(self, pool: str) -> bool:
        """Drop a pool's record; whether there was one."""
        ...


class VolumeRepository(Protocol):
    def bind(self, name: str, node: str, spec: Mapping[str, Any], *, at: float | None) -> None: ...

    def created(self, name: str, node: str, *, at: float | None) -> None: ...

    def missing(self, name: str, node: str, *, at: float | None) -> None: ...

    def release(self, name: str, *, at: float | None) -> None: ...

    def forget(self, name: str, node: str | None) -> bool: ...

    def list(self) -> list[VolumeRecord]: ...


class AuditRepository(Protocol):
    def append(
        self,
        kind: str,
        message: str,
        *,
        service: str | None,
        revision: str | None,
        data: Mapping[str, Any] | None,
        at: float | None,
        actor: str,
    ) -> AuditEvent:
        """One entry, chained by hash to the one before (:mod:`.audit_chain`)."""
        ...

    def chain(self) -> tuple[list[ChainEntry], int | None]:
        """Every entry in id order as the chain reads it (read at one point in time), and
        the highest id the log ever handed out (None when unknown)."""
        ...

    def list(
        self,
        *,
        service: str | None,
        kind: str | None,
        after_id: int | None,
        since: float | None,
        limit: int | None,
        newest_first: bool,
    ) -> list[AuditEvent]: ...


@dataclass(frozen=True)
class StateSnapshot:
    """Every record of one store, ids included: what ``gitorch state migrate`` copies."""

    cluster: str | None
    revisions: list[RevisionRecord]
    rollouts: list[RolloutRecord]
    inventory: list[AppliedObject]
    ports: list[PortAllocation]
    nodes: list[NodeRecord]
    backoff: list[BackoffRecord]
    analysis_runs: list[AnalysisRunRecord]
    measurements: list[Measurement]
    traffic: list[TrafficSnapshot]
    audit: list[ChainEntry]  # with their links in the hash chain, copied as they are
    volumes: list[VolumeRecord]
    autoscalers: list[AutoscalerRecord] = field(default_factory=list)
    node_pools: list[NodePoolRecord] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {
            name: len(getattr(self, name))
            for name in (
                "revisions",
                "rollouts",
                "inventory",
                "ports",
                "nodes",
                "backoff",
                "analysis_runs",
                "measurements",
                "traffic",
                "audit",
                "volumes",
                "autoscalers",
                "node_pools",
            )
        }


class Backend(Protocol):
    """One state backend: its repositories and the transaction that groups their writes."""

    @property
    def revisions(self) -> RevisionRepository: ...

    @property
    def rollouts(self) -> RolloutRepository: ...

    @property
    def inventory(self) -> InventoryRepository: ...

    @property
    def ports(self) -> PortRepository: ...

    @property
    def nodes(self) -> NodeRepository: ...

    @property
    def backoff(self) -> BackoffRepository: ...

    @property
    def analysis(self) -> AnalysisRepository: ...

    @property
    def traffic(self) -> TrafficRepository: ...

    @property
    def volumes(self) -> VolumeRepository: ...

    @property
    def autoscalers(self) -> AutoscalerRepository: ...

    @property
    def node_pools(self) -> NodePoolRepository: ...

    @property
    def audit(self) -> AuditRepository: ...

    readonly: bool
    #: The backend's own schema version (SQLite: ``PRAGMA user_version``; etcd: the
    #: data model version kept in the namespace).
    schema_version: int

    def transaction(self) -> AbstractContextManager[None]:
        """Everything written inside commits together, or (on any exception) not at all."""
        ...

    def atomic(self, work: Callable[[], T]) -> T:
        """``work()`` in one transaction, tried again on a conflict where the backend has
        them (etcd's optimistic transactions; SQLite's writers queue instead)."""
        ...

    def describe(self) -> str:
        """Where the state lives, for messages (a path, or ``etcd://.../NAMESPACE``)."""
        ...

    def close(self) -> None: ...

    def restore(self, snapshot: StateSnapshot) -> None:
        """Write every record of ``snapshot`` as it is, ids included, into this (empty)
        store; the sequences go on after the highest ids."""
        ...
