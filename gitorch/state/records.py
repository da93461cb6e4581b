"""The typed records the state store reads and writes.

Records are frozen dataclasses: what the store returns is a snapshot, never a live row.
Times are unix seconds (float, UTC); JSON columns come back as plain dicts/lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


def iso_time(unix: float | None) -> str | None:
    """``unix`` as an ISO 8601 UTC string (``None`` stays ``None``), for JSON output."""
    if unix is None:
        return None
    return datetime.fromtimestamp(unix, tz=UTC).isoformat(timespec="milliseconds")


class RevisionResult(StrEnum):
    """Outcome of applying one revision (also used per service)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled-back"
    IN_PROGRESS = "in-progress"
    NO_CHANGES = "no-changes"  # the commit changed nothing gitorch applies
    REFUSED = "refused"  # a policy kept it out (the mass-prune guard); not applied
    SUPERSEDED = "superseded"  # a newer revision came before it converged
    INVALID = "invalid"  # its manifests did not validate; not applied


#: Results of revisions that were never applied: the last good revision runs on.
NOT_APPLIED = frozenset({RevisionResult.REFUSED, RevisionResult.INVALID})


class RolloutPhase(StrEnum):
    """Where a service's rollout stands (the ``status`` command shows these names)."""

    HEALTHY = "Healthy"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    DEGRADED = "Degraded"
    ROLLED_BACK = "RolledBack"


class NodeCondition(StrEnum):
    """Last known health of a node."""

    READY = "Ready"
    NOT_READY = "NotReady"
    UNKNOWN = "Unknown"  # never seen, or not heard from: not the same as NotReady


class MeasurementPhase(StrEnum):
    """Verdict of one analysis measurement."""

    SUCCESSFUL = "successful"
    FAILED = "failed"
    INCONCLUSIVE = "inconclusive"  # e.g. fewer requests than minRequests
    ERROR = "error"  # the measurement itself could not be taken


class AnalysisRunPhase(StrEnum):
    """Where one analysis run stands (the values of ``gitorch.analysis.RunPhase``)."""

    RUNNING = "running"
    SUCCESSFUL = "successful"
    FAILED = "failed"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class RevisionRecord:
    """One application of a Git revision (the same sha may be applied several times).

    ``id`` orders applications: a higher id was recorded later. ``services`` are the
    services this application touched; ``service_results`` their individual outcomes.
    """

    id: int
    sha: str
    author: str
    committed_at: str | None  # ISO 8601 as Git gives it
    signer: str | None
    applied_at: float
    result: RevisionResult
    reason: str
    summary: Mapping[str, Any]
    service_results: Mapping[str, RevisionResult] = field(default_factory=dict)
    trigger: str = ""  # what made gitorch read the commit ("poll", "webhook push ...")

    @property
    def services(self) -> tuple[str, ...]:
        """Names of the services this application touched, sorted."""
        return tuple(sorted(self.service_results))

    def to_json(self) -> dict[str, object]:
        """The ``gitorch history --format json`` shape of this record."""
        return {
            "id": self.id,
            "revision": self.sha,
            "author": self.author,
            "committedAt": self.committed_at,
            "appliedAt": iso_time(self.applied_at),
            "signer": self.signer,
            "result": self.result.value,
            "reason": self.reason,
            "trigger": self.trigger,
            "services": {name: res.value for name, res in sorted(self.service_results.items())},
            "changes": list(self.summary.get("changes", [])),
            "summary": dict(self.summary),
        }


@dataclass(frozen=True)
class RolloutRecord:
    """Where one service's rollout stands, and what to return to if it fails.

    ``spec`` is the JSON of the service spec being rolled out (digest ``spec_digest``);
    ``previous_spec`` the last one that was healthy, so a rollback needs nothing from Git.
    """

    service: str
    revision: str
    spec_digest: str
    strategy: str
    phase: RolloutPhase
    spec: Mapping[str, Any]
    step: int | None = None
    weight: int = 100  # percent of traffic on the new version
    started_at: float = 0.0
    updated_at: float = 0.0
    last_error: str | None = None
    previous_revision: str | None = None
    previous_digest: str | None = None
    previous_spec: Mapping[str, Any] | None = None
    failed_digest: str | None = None  # rolled back from: not retried until Git changes
    available: int = 0  # target replicas available at the last pass
    progress_at: float = 0.0  # when ``available`` last grew (the deadline counts from here)
    message: str = ""  # where the rollout stands, for status
    reached_healthy: bool = False  # this spec was Healthy once: failures now are repairs
    step_started_at: float | None = None  # progressive rollouts: when ``step`` began
    promote_requested: bool = False  # `gitorch promote`, not acted on yet
    abort_requested: bool = False  # `gitorch abort`, not acted on yet
    converged_replicas: int | None = None  # desired count when it last became Healthy
    failed_revision: str | None = None  # the revision whose template was rolled back from

    def to_json(self) -> dict[str, object]:
        return {
            "service": self.service,
            "revision": self.revision,
            "specDigest": self.spec_digest,
            "strategy": self.strategy,
            "phase": self.phase.value,
            "step": self.step,
            "weight": self.weight,
            "startedAt": iso_time(self.started_at),
            "updatedAt": iso_time(self.updated_at),
            "lastError": self.last_error,
            "previousRevision": self.previous_revision,
            "previousDigest": self.previous_digest,
        }


@dataclass(frozen=True)
class PortAllocation:
    """A host port on a node, given to one owner (``"<replica>/<port name>"``)."""

    node: str
    host_port: int
    owner: str
    allocated_at: float


@dataclass(frozen=True)
class NodeRecord:
    """A node gitorch knows about, with its last observed condition."""

    name: str
    driver: str
    endpoint: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    last_seen: float | None = None
    condition: NodeCondition = NodeCondition.UNKNOWN
    message: str = ""
    draining: bool = False  # `gitorch drain`: moving its replicas off

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "driver": self.driver,
            "endpoint": self.endpoint,
            "labels": dict(self.labels),
            "lastSeen": iso_time(self.last_seen),
            "condition": self.condition.value,
            "message": self.message,
        }


@dataclass(frozen=True)
class Measurement:
    """One analysis measurement of one service version."""

    id: int
    service: str
    revision: str
    analysis: str  # which analysis took it ("step-2", "background", "prePromotion")
    taken_at: float
    phase: MeasurementPhase
    value: Mapping[str, Any]
    message: str = ""
    run_id: int | None = None  # the AnalysisRunRecord it counts toward (None: older data)


@dataclass(frozen=True)
class AnalysisRunRecord:
    """One analysis run of one rollout step, so that a restarted daemon resumes it.

    Identified by (``service``, ``revision``, ``analysis``, ``step_started_at``): the
    analysis key ("step-2", "background-1", "pre-promotion", "abtest") of the rollout of
    ``revision`` in the entry of its step that began at ``step_started_at``. Its
    measurements are those with ``run_id == id``; ``phase`` and ``message`` are the run's
    verdict so far (``concluded_at`` is set once ``phase`` is no longer running).
    """

    id: int
    service: str
    revision: str
    analysis: str
    step_started_at: float
    started_at: float
    phase: AnalysisRunPhase = AnalysisRunPhase.RUNNING
    message: str = ""
    concluded_at: float | None = None
    # The data plane's cumulative per-version figures where the run's current window
    # begins (JSON, gitorch.traffic.wire's form; None: not stored yet).
    window_figures: Mapping[str, Any] | None = None

    @property
    def done(self) -> bool:
        return self.phase is not AnalysisRunPhase.RUNNING


@dataclass(frozen=True)
class AuditEvent:
    """One entry of the append-only history/audit log."""

    id: int
    at: float
    kind: str  # dotted, e.g. "revision.applied", "rollout.rolled-back", "drift.corrected"
    message: str
    service: str | None = None
    revision: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    # Who did it ("signer:...", "author:...", "token:NAME", "user:USER@HOST", "gitorch"),
    # and the entry's link in the hash chain (None for entries older than the chain).
    actor: str = ""
    hash: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "at": iso_time(self.at),
            "kind": self.kind,
            "actor": self.actor,
            "service": self.service,
            "revision": self.revision,
            "message": self.message,
            "data": dict(self.data),
            "hash": self.hash,
        }


@dataclass(frozen=True)
class AppliedObject:
    """One inventory entry: the canonical form of an object as gitorch last applied it."""

    kind: str
    name: str
    revision: str
    digest: str
    spec: Mapping[str, Any]
    applied_at: float


#: The back-off slot of a failure of the service itself, not of one replica.
SERVICE_SLOT = 0

#: How a slot's back-off record names a start that failed (no replica ran: a command or
#: image missing on the node, a port taken), before the runtime's message.
START_FAILED = "start failed: "


@dataclass(frozen=True)
class BackoffRecord:
    """Crash-loop back-off of one replica slot's replicas of one template.

    A record is keyed by ``(service, slot, template)``: during a progressive rollout a
    slot holds a stable and a new replica, and each crash-loops (and backs off) on its
    own. ``template`` None (stored as "") is a record of the service itself (slot 0) or
    of any template (records written before the key had it)."""

    service: str
    slot: int  # 0: the service itself (a failure not of one replica: a port, an error)
    restarts: int
    last_restart_at: float
    last_exit_code: int | None = None
    template: str | None = None  # the template whose replica died (None: any)
    replica_id: str | None = None  # the dead replica counted last (counted once)
    reason: str = ""  # why, in words: "exit code 3", "OOMKilled", "start failed: ..."

    @property
    def failed_start(self) -> bool:
        """The slot's last failure was a start that failed: no replica of it ran, so its
        count is of failed starts, not of restarts (a crash counts on the same record:
        the back-off grows over both)."""
        return self.replica_id is None and self.reason.startswith(START_FAILED)

    @property
    def key(self) -> tuple[str, int, str]:
        """What identifies the record in the store (a missing template is "")."""
        return (self.service, self.slot, self.template or "")

    def of(self, template: str | None) -> bool:
        """Whether the record counts for replicas of ``template`` (one without a
        template counts for any)."""
        return self.template is None or self.template == template


@dataclass(frozen=True)
class ServiceBackoff:
    """A service's crash-loop records: its own failure (slot 0: a port it cannot bind)
    and one per replica slot and template."""

    records: tuple[BackoffRecord, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.records)

    @property
    def failure(self) -> BackoffRecord | None:
        """The failure of the service itself, if any."""
        return next((b for b in self.records if b.slot == SERVICE_SLOT), None)

    @property
    def replicas(self) -> tuple[BackoffRecord, ...]:
        """The records of replica slots (every template), by slot."""
        return tuple(b for b in self.records if b.slot != SERVICE_SLOT)

    def slots(self, template: str | None) -> dict[int, BackoffRecord]:
        """The records of ``template``'s replicas, by slot (a record of the very
        template wins over one of any template)."""
        found: dict[int, BackoffRecord] = {}
        for b in self.replicas:
            if b.template == template or (b.of(template) and b.slot not in found):
                found[b.slot] = b
        return found

    def get(self, slot: int, template: str | None) -> BackoffRecord | None:
        """The record of ``template``'s replica in ``slot``, if any (as :meth:`slots`)."""
        mine = [b for b in self.replicas if b.slot == slot and b.of(template)]
        return next((b for b in mine if b.template == template), mine[0] if mine else None)


#: The back-off of a service with no record.
NO_BACKOFF = ServiceBackoff()


@dataclass(frozen=True)
class VersionTraffic:
    """What one version of a route served, as the daemon counted it.

    Counts are totals since the daemon began counting (``TrafficSnapshot.since``); they
    only grow while it runs, even when a version's backends leave the data plane.
    ``weight`` is the percent of new traffic the routing table gives the version now (0
    for a version whose backends are draining); ``revision`` the Git commit the version
    came from (None when the store does not know it).
    """

    version: str
    revision: str | None
    weight: int
    backends: int
    requests: int
    errors_5xx: int
    open_connections: int
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None

    @property
    def success_rate(self) -> float | None:
        """Share of non-5xx answers (None without any request)."""
        if self.requests == 0:
            return None
        return 1.0 - self.errors_5xx / self.requests

    def to_json(self, total_requests: int) -> dict[str, object]:
        """The status shape; ``share`` is this version's percent of ``total_requests``."""
        share = 100.0 * self.requests / total_requests if total_requests else None
        return {
            "version": self.version,
            "revision": self.revision,
            "weight": self.weight,
            "backends": self.backends,
            "share": None if share is None else round(share, 2),
            "requests": self.requests,
            "errors5xx": self.errors_5xx,
            "successRate": self.success_rate,
            "p50Ms": _ms(self.p50_ms),
            "p90Ms": _ms(self.p90_ms),
            "p99Ms": _ms(self.p99_ms),
            "meanMs": _ms(self.mean_ms),
            "openConnections": self.open_connections,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VersionTraffic:
        return cls(
            version=str(data["version"]),
            revision=data.get("revision"),
            weight=int(data.get("weight", 0)),
            backends=int(data.get("backends", 0)),
            requests=int(data.get("requests", 0)),
            errors_5xx=int(data.get("errors5xx", 0)),
            open_connections=int(data.get("openConnections", 0)),
            p50_ms=data.get("p50Ms"),
            p90_ms=data.get("p90Ms"),
            p99_ms=data.get("p99Ms"),
            mean_ms=data.get("meanMs"),
        )


@dataclass(frozen=True)
class AutoscalerRecord:
    """What the horizontal autoscaler decided for one service, and what it remembers.

    ``desired`` is the count the reconcile pass runs while ``spec.autoscale`` is set;
    ``metrics`` the last decision's readings (``{"metric", "value", "target",
    "proposal", "message"}`` each), ``memory`` its recommendations and scale events
    (``{"recommendations": [[at, n]...], "events": [[at, change]...]}``), ``usage`` the
    vertical recommender's histograms (see ``gitorch.decide.vertical``).
    """

    service: str
    desired: int
    decided_at: float
    changed_at: float | None = None
    reason: str = ""
    metrics: tuple[Mapping[str, Any], ...] = ()
    memory: Mapping[str, Any] = field(default_factory=dict)
    usage: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NodePoolRecord:
    """The nodes a NodePool made, and what its decisions remember.

    ``nodes``: one ``{"name", "endpoint", "address", "created_at", "state" (ready |
    draining), "low_since", "draining_since"}`` per node the provider made;
    ``pending_since``: since when replicas a template node would fit stay unschedulable;
    ``last``: the last decision that changed something (``{"at", "action", "node",
    "reason", "from", "to"}``); ``error``: the provider's last failure, if any;
    ``provider``: its command and timeout as Git last said (``{"command", "timeout"}``),
    so the nodes of a pool that left Git can still be deleted.
    """

    pool: str
    nodes: tuple[Mapping[str, Any], ...] = ()
    pending_since: float | None = None
    last: Mapping[str, Any] = field(default_factory=dict)
    error: str = ""
    updated_at: float = 0.0
    provider: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrafficSnapshot:
    """The per-version traffic of one route (a service, or ``NAME.preview``) at one time.

    The daemon stores one per route every few seconds (``gitorch status`` reads it without
    a daemon); ``since`` is when it began counting (its start), ``data_plane`` which data
    plane served (builtin | haproxy).
    """

    service: str
    taken_at: float
    since: float
    data_plane: str
    versions: tuple[VersionTraffic, ...] = ()

    @property
    def requests(self) -> int:
        return sum(v.requests for v in self.versions)

    def to_json(self, now: float) -> dict[str, object]:
        """The ``traffic`` section of ``gitorch status``; ``ageSeconds`` is as of ``now``."""
        total = self.requests
        return {
            "asOf": iso_time(self.taken_at),
            "ageSeconds": round(max(0.0, now - self.taken_at), 3),
            "since": iso_time(self.since),
            "dataPlane": self.data_plane,
            "requests": total,
            "versions": [v.to_json(total) for v in self.versions],
        }

    def data_json(self) -> dict[str, Any]:
        """What the store keeps in ``traffic_snapshots.data``."""
        return {
            "since": self.since,
            "dataPlane": self.data_plane,
            "versions": [v.to_json(self.requests) for v in self.versions],
        }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@dataclass(frozen=True)
class VolumeRecord:
    """Where a Volume lives, and what happened to it.

    A ReadWriteOnce volume has one record: the node it is bound to. A volume on a backend
    that can share has one record per node it was made on. ``spec`` is the Volume as Git
    last described it (its reclaimPolicy decides what happens once it leaves Git).
    """

    name: str
    node: str
    spec: Mapping[str, Any]
    bound_at: float
    created_at: float | None = None  # the backend volume was made (or an existing one adopted)
    released_at: float | None = None  # left Git with reclaimPolicy Retain: the data is kept
    missing_at: float | None = None  # made, then not found on its node: removed by hand

    @property
    def created(self) -> bool:
        return self.created_at is not None
