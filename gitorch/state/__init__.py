"""The state store: what gitorch has applied, is rolling out, and has allocated.

Repositories per concern (:mod:`gitorch.state.repositories`) behind the
:class:`StateStore` facade, over one of two backends (:mod:`gitorch.state.location`):

* a state directory (``--state DIR``, default ``$GITORCH_STATE`` or ``./.gitorch``) holds
  ``state.db`` (SQLite in WAL mode, see :mod:`gitorch.state.schema` for its tables and
  migrations) and ``daemon.lock`` (see :mod:`gitorch.state.lock`);
* ``--state etcd://HOST:PORT[,...][/NAMESPACE]`` keeps the records in etcd, where several
  daemons elect a leader whose writes are fenced (:mod:`gitorch.state.etcd`).

::

    with DaemonLock(state_dir), StateStore(state_dir) as store:    # the daemon
        with store.transaction():
            rev = store.record_revision(sha, author=..., services=["web"])
            store.append_event("revision.started", f"applying {sha[:8]}", revision=sha)

    store = StateStore(state_dir, readonly=True)                   # status, history
    store.list_revisions(service="web", limit=20)

Every error is a :class:`gitorch.errors.StateError` (``StateLocked``, ``StateCorrupt``,
or one of :mod:`gitorch.state.errors`).
"""

from gitorch.state.errors import PortUnavailable, RecordNotFound, StateReadOnly
from gitorch.state.layout import LOCK_FILE, STATE_DB, resolve_state_dir
from gitorch.state.lock import DaemonLock, LockOwner, lock_holder, read_owner
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
    RolloutPhase,
    RolloutRecord,
    TrafficSnapshot,
    VersionTraffic,
    VolumeRecord,
)
from gitorch.state.repositories import DEFAULT_PORT_RANGE
from gitorch.state.schema import SCHEMA_VERSION
from gitorch.state.store import StateStore

__all__ = [
    "DEFAULT_PORT_RANGE",
    "LOCK_FILE",
    "SCHEMA_VERSION",
    "STATE_DB",
    "AnalysisRunPhase",
    "AnalysisRunRecord",
    "AutoscalerRecord",
    "NodePoolRecord",
    "AppliedObject",
    "AuditEvent",
    "BackoffRecord",
    "DaemonLock",
    "LockOwner",
    "Measurement",
    "MeasurementPhase",
    "NodeCondition",
    "NodeRecord",
    "PortAllocation",
    "PortUnavailable",
    "RecordNotFound",
    "RevisionRecord",
    "RevisionResult",
    "RolloutPhase",
    "RolloutRecord",
    "StateReadOnly",
    "StateStore",
    "TrafficSnapshot",
    "VersionTraffic",
    "VolumeRecord",
    "lock_holder",
    "read_owner",
    "resolve_state_dir",
]
