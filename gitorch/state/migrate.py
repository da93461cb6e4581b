"""Copying a cluster's state between stores (``gitorch state migrate``): a state directory
to etcd, so a single daemon can grow into several, and back.

Every record is copied as it is, ids included, so history, audit entries and analysis
runs keep their numbers and their links; the target must be empty. Nothing checks the
copy by trust: the target is read back and compared record by record.
"""

from __future__ import annotations

from gitorch.errors import StateError
from gitorch.state.repositories import StateSnapshot
from gitorch.state.store import StateStore


def export_state(store: StateStore, cluster: str | None) -> StateSnapshot:
    """Every record of ``store`` (``cluster``: its identity, kept outside the records by
    a state directory)."""
    return StateSnapshot(
        cluster=cluster,
        revisions=list(reversed(store.list_revisions(limit=None))),
        rollouts=store.list_rollouts(),
        inventory=store.list_applied(),
        ports=store.list_ports(),
        nodes=store.list_nodes(),
        backoff=store.list_backoff(),
        analysis_runs=store.analysis.list_runs(None, revision=None, step_started_at=None),
        measurements=store.analysis.list_measurements(
            None, revision=None, analysis=None, run_id=None, limit=None
        ),
        traffic=store.list_traffic(),
        audit=store.audit_chain()[0],
        volumes=store.list_volumes(),
        autoscalers=store.list_autoscalers(),
        node_pools=store.list_node_pools(),
    )


def is_empty(store: StateStore) -> bool:
    return not (
        store.list_revisions(limit=1)
        or store.list_rollouts()
        or store.list_applied()
        or store.list_events(limit=1)
        or store.list_volumes()
    )


def copy_state(source: StateStore, target: StateStore, cluster: str | None) -> StateSnapshot:
    """Copy every record of ``source`` into the empty ``target`` and check the copy."""
    if not is_empty(target):
        raise StateError(
            f"{target.describe()} already holds gitorch state: refusing to mix two clusters",
            detail=("migrate into an empty state directory or etcd namespace",),
        )
    snapshot = export_state(source, cluster)
    target.backend.restore(snapshot)
    copied = export_state(target, cluster)
    if _comparable(copied) != _comparable(snapshot):
        differ = [
            name for name, count in snapshot.counts().items() if copied.counts()[name] != count
        ]
        raise StateError(
            f"the copy in {target.describe()} differs from {source.describe()}"
            + (f" ({', '.join(differ)})" if differ else "")
        )
    return snapshot


def _comparable(snapshot: StateSnapshot) -> StateSnapshot:
    """``snapshot`` without what a store stamps by itself (a rollout's updated_at)."""
    from dataclasses import replace

    return replace(snapshot, rollouts=[replace(r, updated_at=0.0) for r in snapshot.rollouts])
