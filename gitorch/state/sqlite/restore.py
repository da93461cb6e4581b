"""Filling an empty SQLite store with a snapshot's records, ids kept (``gitorch state
migrate`` from etcd), in one transaction."""

from __future__ import annotations

from typing import Protocol

from gitorch.state import rows
from gitorch.state.repositories import Backend, StateSnapshot
from gitorch.state.sqlite.database import Database
from gitorch.state.sqlite.volumes import Volumes


class Restorable(Database, Backend, Protocol):
    """The database and its repositories: most records go in as rows, the rest through
    their repository's own writes (the volumes' restore is SQLite's own)."""

    @property
    def volumes(self) -> Volumes: ...


def restore(db: Restorable, snapshot: StateSnapshot) -> None:
    with db.transaction():
        conn = db.conn()
        conn.executemany(
            "INSERT INTO revisions (id, sha, author, committed_at, signer, applied_at, result,"
            " reason, summary, trigger) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    r.id,
                    r.sha,
                    r.author,
                    r.committed_at,
                    r.signer,
                    r.applied_at,
                    r.result.value,
                    r.reason,
                    rows.dump_json(r.summary),
                    r.trigger,
                )
                for r in snapshot.revisions
            ],
        )
        conn.executemany(
            "INSERT INTO revision_services (revision_id, service, result) VALUES (?, ?, ?)",
            [
                (r.id, name, result.value)
                for r in snapshot.revisions
                for name, result in r.service_results.items()
            ],
        )
        for record in snapshot.rollouts:
            db.rollouts.upsert(record, reset_requests=False)
            # upsert stamps updated_at with now: keep the record's own times.
            db.execute(
                "UPDATE rollouts SET started_at = ?, updated_at = ? WHERE service = ?",
                (record.started_at, record.updated_at, record.service),
            )
        conn.executemany(
            "INSERT INTO inventory (kind, name, revision, digest, spec, applied_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [
                (a.kind, a.name, a.revision, a.digest, rows.dump_json(a.spec), a.applied_at)
                for a in snapshot.inventory
            ],
        )
        conn.executemany(
            "INSERT INTO port_allocations (node, host_port, owner, allocated_at)"
            " VALUES (?, ?, ?, ?)",
            [(p.node, p.host_port, p.owner, p.allocated_at) for p in snapshot.ports],
        )
        conn.executemany(
            "INSERT INTO nodes (name, driver, endpoint, labels, last_seen, condition, message,"
            " draining) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    n.name,
                    n.driver,
                    n.endpoint,
                    rows.dump_json(n.labels),
                    n.last_seen,
                    n.condition.value,
                    n.message,
                    int(n.draining),
                )
                for n in snapshot.nodes
            ],
        )
        for backoff in snapshot.backoff:
            db.backoff.record(backoff)
        conn.executemany(
            "INSERT INTO analysis_runs (id, service, revision, analysis, step_started_at,"
            " started_at, phase, message, concluded_at, window_figures)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    r.id,
                    r.service,
                    r.revision,
                    r.analysis,
                    r.step_started_at,
                    r.started_at,
                    r.phase.value,
                    r.message,
                    r.concluded_at,
                    None if r.window_figures is None else rows.dump_json(r.window_figures),
                )
                for r in snapshot.analysis_runs
            ],
        )
        conn.executemany(
            "INSERT INTO measurements (id, service, revision, analysis, taken_at, phase, value,"
            " message, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    m.id,
                    m.service,
                    m.revision,
                    m.analysis,
                    m.taken_at,
                    m.phase.value,
                    rows.dump_json(m.value),
                    m.message,
                    m.run_id,
                )
                for m in snapshot.measurements
            ],
        )
        db.traffic.replace(snapshot.traffic)
        db.volumes.restore(snapshot.volumes)
        for autoscaler in snapshot.autoscalers:
            db.autoscalers.save(autoscaler)
        for pool in snapshot.node_pools:
            db.node_pools.save(pool)
        conn.executemany(
            "INSERT INTO audit_log (id, at, kind, service, revision, message, data, actor,"
            " prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    e.id,
                    e.at,
                    e.kind,
                    e.service,
                    e.revision,
                    e.message,
                    rows.dump_json(e.data),
                    e.actor,
                    e.prev_hash,
                    e.hash,
                )
                for e in snapshot.audit
            ],
        )
