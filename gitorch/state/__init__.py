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

from typing import TYPE_CHECKING

if TYPE_CHECKING:
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

#: Where each name below lives. Imported when first asked for (PEP 562): a command that
#: needs only the records (a plan's decision, a read of live state) does not import the
#: store, SQLite and the lock (~10 ms of ``gitorch plan`` without a state directory).
_WHERE = {
    "PortUnavailable": "gitorch.state.errors",
    "RecordNotFound": "gitorch.state.errors",
    "StateReadOnly": "gitorch.state.errors",
    "LOCK_FILE": "gitorch.state.layout",
    "STATE_DB": "gitorch.state.layout",
    "resolve_state_dir": "gitorch.state.layout",
    "DaemonLock": "gitorch.state.lock",
    "LockOwner": "gitorch.state.lock",
    "lock_holder": "gitorch.state.lock",
    "read_owner": "gitorch.state.lock",
    "AnalysisRunPhase": "gitorch.state.records",
    "AnalysisRunRecord": "gitorch.state.records",
    "AppliedObject": "gitorch.state.records",
    "AuditEvent": "gitorch.state.records",
    "AutoscalerRecord": "gitorch.state.records",
    "BackoffRecord": "gitorch.state.records",
    "Measurement": "gitorch.state.records",
    "MeasurementPhase": "gitorch.state.records",
    "NodeCondition": "gitorch.state.records",
    "NodePoolRecord": "gitorch.state.records",
    "NodeRecord": "gitorch.state.records",
    "PortAllocation": "gitorch.state.records",
    "RevisionRecord": "gitorch.state.records",
    "RevisionResult": "gitorch.state.records",
    "RolloutPhase": "gitorch.state.records",
    "RolloutRecord": "gitorch.state.records",
    "TrafficSnapshot": "gitorch.state.records",
    "VersionTraffic": "gitorch.state.records",
    "VolumeRecord": "gitorch.state.records",
    "DEFAULT_PORT_RANGE": "gitorch.state.repositories",
    "SCHEMA_VERSION": "gitorch.state.schema",
    "StateStore": "gitorch.state.store",
}


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


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
