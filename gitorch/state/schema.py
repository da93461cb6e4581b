"""The versioned schema of the state database and how it is migrated.

The schema version is SQLite's ``PRAGMA user_version``: version *N* means the first *N*
entries of :data:`MIGRATIONS` have been applied. Migrations are only ever appended; an
applied one is never edited (a fix is a new migration). Every pending migration is applied
in one ``BEGIN IMMEDIATE`` transaction together with the version bump, so a crash midway
leaves the database exactly as it was.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gitorch.errors import StateCorrupt


@dataclass(frozen=True)
class Migration:
    """One schema step: a description and its SQL statements, applied in order."""

    description: str
    statements: tuple[str, ...]


_APPEND_ONLY = "RAISE(ABORT, 'the audit log is append-only')"


def _rebuilt_revisions(results: tuple[str, ...], *, trigger: bool) -> tuple[str, ...]:
    """Statements that rebuild ``revisions`` and ``revision_services`` with ``results`` as
    the allowed values of ``result`` (a CHECK cannot be altered in SQLite), ids and the
    AUTOINCREMENT sequence kept; ``trigger``: the table has that column (migration 7 on).
    Children first, so dropping the parent cascades to nothing."""
    allowed = ", ".join(f"'{result}'" for result in results)
    trigger_column = ",\n            trigger      TEXT NOT NULL DEFAULT ''" if trigger else ""
    columns = "id, sha, author, committed_at, signer, applied_at, result, reason, summary"
    if trigger:
        columns += ", trigger"
    return (
        f"""
        CREATE TABLE revisions_rebuilt (
            id           INTEGER PRIMARY KEY AUTOINCREMENT,
            sha          TEXT NOT NULL,
            author       TEXT NOT NULL DEFAULT '',
            committed_at TEXT,
            signer       TEXT,
            applied_at   REAL NOT NULL,
            result       TEXT NOT NULL CHECK (result IN ({allowed})),
            reason       TEXT NOT NULL DEFAULT '',
            summary      TEXT NOT NULL DEFAULT '{{}}'{trigger_column}
        )
        """,
        f"INSERT INTO revisions_rebuilt ({columns}) SELECT {columns} FROM revisions",
        f"""
        CREATE TABLE revision_services_rebuilt (
            revision_id INTEGER NOT NULL REFERENCES revisions_rebuilt (id) ON DELETE CASCADE,
            service     TEXT NOT NULL,
            result      TEXT NOT NULL CHECK (result IN ({allowed})),
            PRIMARY KEY (revision_id, service)
        ) WITHOUT ROWID
        """,
        "INSERT INTO revision_services_rebuilt (revision_id, service, result)"
        " SELECT revision_id, service, result FROM revision_services",
        "DROP TABLE revision_services",
        "DROP TABLE revisions",
        "ALTER TABLE revisions_rebuilt RENAME TO revisions",
        "ALTER TABLE revision_services_rebuilt RENAME TO revision_services",
        "CREATE INDEX revisions_by_result ON revisions (result, id)",
        "CREATE INDEX revisions_by_sha ON revisions (sha)",
        "CREATE INDEX revision_services_by_service"
        " ON revision_services (service, result, revision_id)",
    )


#: The revision results the bookkeeping migration (6) allowed.
_BOOKKEEPING_RESULTS = (
    "succeeded",
    "failed",
    "rolled-back",
    "in-progress",
    "no-changes",
    "refused",
    "superseded",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "initial schema: revisions, rollouts, ports, nodes, measurements, audit log",
        (
            """
            CREATE TABLE revisions (
                id           INTEGER PRIMARY KEY AUTOINCREMENT,
                sha          TEXT NOT NULL,
                author       TEXT NOT NULL DEFAULT '',
                committed_at TEXT,
                signer       TEXT,
                applied_at   REAL NOT NULL,
                result       TEXT NOT NULL CHECK (result IN
                                 ('succeeded', 'failed', 'rolled-back', 'in-progress')),
                reason       TEXT NOT NULL DEFAULT '',
                summary      TEXT NOT NULL DEFAULT '{}'
            )
            """,
            "CREATE INDEX revisions_by_result ON revisions (result, id)",
            "CREATE INDEX revisions_by_sha ON revisions (sha)",
            # Which services one application touched, and how each fared.
            """
            CREATE TABLE revision_services (
                revision_id INTEGER NOT NULL REFERENCES revisions (id) ON DELETE CASCADE,
                service     TEXT NOT NULL,
                result      TEXT NOT NULL CHECK (result IN
                                ('succeeded', 'failed', 'rolled-back', 'in-progress')),
                PRIMARY KEY (revision_id, service)
            ) WITHOUT ROWID
            """,
            "CREATE INDEX revision_services_by_service"
            " ON revision_services (service, result, revision_id)",
            """
            CREATE TABLE rollouts (
                service            TEXT PRIMARY KEY,
                revision           TEXT NOT NULL,
                spec_digest        TEXT NOT NULL,
                strategy           TEXT NOT NULL,
                phase              TEXT NOT NULL,
                step               INTEGER,
                weight             INTEGER NOT NULL DEFAULT 100
                                       CHECK (weight BETWEEN 0 AND 100),
                started_at         REAL NOT NULL,
                updated_at         REAL NOT NULL,
                last_error         TEXT,
                previous_revision  TEXT,
                previous_digest    TEXT,
                spec               TEXT NOT NULL,
                previous_spec      TEXT
            )
            """,
            """
            CREATE TABLE port_allocations (
                node         TEXT NOT NULL,
                host_port    INTEGER NOT NULL CHECK (host_port BETWEEN 1 AND 65535),
                owner        TEXT NOT NULL,
                allocated_at REAL NOT NULL,
                PRIMARY KEY (node, host_port),
                UNIQUE (node, owner)
            ) WITHOUT ROWID
            """,
            "CREATE INDEX port_allocations_by_owner ON port_allocations (owner)",
            """
            CREATE TABLE nodes (
                name      TEXT PRIMARY KEY,
                driver    TEXT NOT NULL,
                endpoint  TEXT NOT NULL DEFAULT '',
                labels    TEXT NOT NULL DEFAULT '{}',
                last_seen REAL,
                condition TEXT NOT NULL DEFAULT 'Unknown',
                message   TEXT NOT NULL DEFAULT ''
            )
            """,
            """
            CREATE TABLE measurements (
                id       INTEGER PRIMARY KEY AUTOINCREMENT,
                service  TEXT NOT NULL,
                revision TEXT NOT NULL,
                analysis TEXT NOT NULL DEFAULT '',
                taken_at REAL NOT NULL,
                phase    TEXT NOT NULL CHECK (phase IN
                             ('successful', 'failed', 'inconclusive', 'error')),
                value    TEXT NOT NULL DEFAULT '{}',
                message  TEXT NOT NULL DEFAULT ''
            )
            """,
            "CREATE INDEX measurements_by_service ON measurements (service, revision, id)",
            """
            CREATE TABLE audit_log (
                id       INTEGER PRIMARY KEY AUTOINCREMENT,
                at       REAL NOT NULL,
                kind     TEXT NOT NULL,
                service  TEXT,
                revision TEXT,
                message  TEXT NOT NULL,
                data     TEXT NOT NULL DEFAULT '{}'
            )
            """,
            "CREATE INDEX audit_log_by_service ON audit_log (service, id)",
            # Append-only in the database itself, not only by the absence of an API: any
            # code (or a person with the sqlite3 shell) trying to rewrite history fails.
            f"CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log"
            f" BEGIN SELECT {_APPEND_ONLY}; END",
            f"CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log"
            f" BEGIN SELECT {_APPEND_ONLY}; END",
        ),
    ),
    Migration(
        "inventory: every object gitorch applied (kind, name, revision, canonical spec)",
        (
            # Flux-style inventory: what was applied last, per object. plan diffs desired
            # state against it; prune deletes what is here but no longer in Git.
            """
            CREATE TABLE inventory (
                kind       TEXT NOT NULL,
                name       TEXT NOT NULL,
                revision   TEXT NOT NULL,
                digest     TEXT NOT NULL,
                spec       TEXT NOT NULL,
                applied_at REAL NOT NULL,
                PRIMARY KEY (kind, name)
            ) WITHOUT ROWID
            """,
        ),
    ),
    Migration(
        "rollout progress and failed digest; crash-loop back-off per replica slot",
        (
            # The template digest whose rollout failed and was rolled back: not retried
            # until Git changes it again (no rollback loop).
            "ALTER TABLE rollouts ADD COLUMN failed_digest TEXT",
            # How many target replicas were available, and since when that number last
            # grew: the progress deadline counts from there.
            "ALTER TABLE rollouts ADD COLUMN available INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE rollouts ADD COLUMN progress_at REAL NOT NULL DEFAULT 0",
            "ALTER TABLE rollouts ADD COLUMN message TEXT NOT NULL DEFAULT ''",
            # The current spec reached Healthy once: later trouble is repaired, never
            # answered by rolling back a version that worked.
            "ALTER TABLE rollouts ADD COLUMN reached_healthy INTEGER NOT NULL DEFAULT 0",
            # `gitorch drain NODE`: place nothing there and move its replicas off through
            # each service's strategy (cordon keeps them; drain moves them).
            "ALTER TABLE nodes ADD COLUMN draining INTEGER NOT NULL DEFAULT 0",
            # Progressive rollouts: when the current step began, and `gitorch promote` /
            # `gitorch abort` waiting to be acted on by the next pass.
            "ALTER TABLE rollouts ADD COLUMN step_started_at REAL",
            "ALTER TABLE rollouts ADD COLUMN promote_requested INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE rollouts ADD COLUMN abort_requested INTEGER NOT NULL DEFAULT 0",
            """
            CREATE TABLE backoff (
                service         TEXT NOT NULL,
                slot            INTEGER NOT NULL,
                restarts        INTEGER NOT NULL,
                last_restart_at REAL NOT NULL,
                last_exit_code  INTEGER,
                PRIMARY KEY (service, slot)
            ) WITHOUT ROWID
            """,
        ),
    ),
    Migration(
        "analysis runs: a run survives a daemon restart; measurements name their run",
        (
            # One row per analysis run (Argo Rollouts keeps AnalysisRun objects): a
            # restarted daemon resumes a running one from its measurements and never
            # re-runs a concluded one. A run is one analysis (the request key, "step-2")
            # of one rollout (service, revision) in one entry of its step: a step entered
            # again (a later rollout of the same revision) has another step_started_at,
            # so it is a new run.
            """
            CREATE TABLE analysis_runs (
                id              INTEGER PRIMARY KEY AUTOINCREMENT,
                service         TEXT NOT NULL,
                revision        TEXT NOT NULL,
                analysis        TEXT NOT NULL,
                step_started_at REAL NOT NULL,
                started_at      REAL NOT NULL,
                phase           TEXT NOT NULL DEFAULT 'running' CHECK (phase IN
                                    ('running', 'successful', 'failed', 'inconclusive')),
                message         TEXT NOT NULL DEFAULT '',
                concluded_at    REAL,
                UNIQUE (service, revision, analysis, step_started_at)
            )
            """,
            # NULL for measurements taken before this migration (no run was stored then).
            "ALTER TABLE measurements ADD COLUMN run_id INTEGER"
            " REFERENCES analysis_runs (id) ON DELETE CASCADE",
            "CREATE INDEX measurements_by_run ON measurements (run_id, id)",
        ),
    ),
    Migration(
        "traffic snapshots: the daemon's latest per-version figures of each route",
        (
            # One row per route (a service, or its blue-green "NAME.preview" listener),
            # replaced every few seconds by the daemon, so `gitorch status` shows traffic
            # without asking the daemon. ``data`` is the JSON of the per-version figures.
            """
            CREATE TABLE traffic_snapshots (
                service  TEXT PRIMARY KEY,
                taken_at REAL NOT NULL,
                data     TEXT NOT NULL DEFAULT '{}'
            ) WITHOUT ROWID
            """,
        ),
    ),
    Migration(
        "truthful bookkeeping: no-changes and refused revisions, restarts per replica",
        (
            # Every commit the daemon reaches gets a history entry: one that changes
            # nothing is "no-changes", one refused by a policy (the mass-prune guard) is
            # "refused", one a newer commit replaced before it converged is "superseded".
            # A CHECK cannot be altered in SQLite, so both tables are rebuilt.
            *_rebuilt_revisions(
                _BOOKKEEPING_RESULTS,
                trigger=False,
            ),
            # A restart is counted once per dead replica (replica_id), on the template
            # that died (a failed new version's deaths are not the old version's), with
            # its cause in words (exit code, OOMKilled, liveness probe, start failure).
            "ALTER TABLE backoff ADD COLUMN template TEXT",
            "ALTER TABLE backoff ADD COLUMN replica_id TEXT",
            "ALTER TABLE backoff ADD COLUMN reason TEXT NOT NULL DEFAULT ''",
            # The replica count at which the service last converged (drift: a slot below
            # it with no replica was removed outside gitorch), and the revision whose
            # template was rolled back from (history blames that commit, no other).
            "ALTER TABLE rollouts ADD COLUMN converged_replicas INTEGER",
            "ALTER TABLE rollouts ADD COLUMN failed_revision TEXT",
        ),
    ),
    Migration(
        "revisions: what triggered each application",
        (
            # "poll", "local commit", "webhook push REF SHA (delivery ID)", "api request",
            # "cli apply"...: `gitorch history` shows why a revision was read. Empty for
            # revisions recorded before this migration.
            "ALTER TABLE revisions ADD COLUMN trigger TEXT NOT NULL DEFAULT ''",
        ),
    ),
    Migration(
        "analysis windows: the data plane's cumulative figures at a run's last measurement",
        (
            # A daemon that restarts mid-analysis resumes the run's window from here, so
            # the requests the proxy served while no daemon ran are judged (the proxy
            # outlives the daemon and keeps counting), and a window whose counting epoch
            # changed (a new proxy) is marked, never invented.
            "ALTER TABLE analysis_runs ADD COLUMN window_figures TEXT",
        ),
    ),
    Migration(
        "volumes: which node each Volume is bound to, made on, released or lost",
        (
            # A ReadWriteOnce volume is bound to one node (spec.node, or where its first
            # user was placed) and must stay there: its data lives there. One row per
            # (volume, node): a volume on a backend that can share is made on every node
            # that runs a user. ``spec`` is the Volume as Git last described it, so its
            # reclaimPolicy is known once it has left Git; ``released_at``: left Git with
            # Retain (the data is kept for a Volume of the same name); ``missing_at``: made,
            # then removed outside gitorch (never silently made again, empty).
            """
            CREATE TABLE volumes (
                name        TEXT NOT NULL,
                node        TEXT NOT NULL,
                spec        TEXT NOT NULL DEFAULT '{}',
                bound_at    REAL NOT NULL,
                created_at  REAL,
                released_at REAL,
                missing_at  REAL,
                PRIMARY KEY (name, node)
            ) WITHOUT ROWID
            """,
        ),
    ),
    Migration(
        "audit log: every entry names its actor and is chained by hash to the one before",
        (
            # Who did it: "signer:NAME <EMAIL>" / "author:..." (a commit), "token:NAME" (the
            # API), "user:USER@HOST" (the CLI) or "gitorch" (the daemon on its own).
            "ALTER TABLE audit_log ADD COLUMN actor TEXT NOT NULL DEFAULT ''",
            # sha256(prev_hash + canonical entry): see gitorch/state/audit_chain.py. Rows
            # written before this migration keep NULL: the unchained prefix, sealed by the
            # first chained entry (its prev_hash is a hash over all of them).
            "ALTER TABLE audit_log ADD COLUMN prev_hash TEXT",
            "ALTER TABLE audit_log ADD COLUMN hash TEXT",
            "CREATE INDEX audit_log_by_at ON audit_log (at)",
        ),
    ),
    Migration(
        "autoscalers: the count each autoscaled service runs, why, and what it remembers",
        (
            # One row per autoscaled service, written by the daemon's sync loop: the count
            # the pass runs (``desired``), the last decision's reason and per-metric
            # readings (JSON), the recommendations and scale events its windows and
            # policies need (JSON), and the vertical recommender's usage histograms (JSON).
            """
            CREATE TABLE autoscalers (
                service     TEXT PRIMARY KEY,
                desired     INTEGER NOT NULL,
                decided_at  REAL NOT NULL,
                changed_at  REAL,
                reason      TEXT NOT NULL DEFAULT '',
                metrics     TEXT NOT NULL DEFAULT '[]',
                memory      TEXT NOT NULL DEFAULT '{}',
                usage       TEXT NOT NULL DEFAULT '{}'
            ) WITHOUT ROWID
            """,
        ),
    ),
    Migration(
        "node_pools: the nodes each NodePool made, and what its decisions remember",
        (
            # One row per NodePool, written by the daemon's node-pool sync: its nodes
            # (JSON: name, endpoint, address, state, since when under-used or draining),
            # since when replicas a template node would fit stay unschedulable, the last
            # decision that changed something (JSON), the provider's last error, and its
            # command (JSON: the nodes of a pool that left Git are still deleted).
            """
            CREATE TABLE node_pools (
                pool          TEXT PRIMARY KEY,
                nodes         TEXT NOT NULL DEFAULT '[]',
                pending_since REAL,
                last          TEXT NOT NULL DEFAULT '{}',
                error         TEXT NOT NULL DEFAULT '',
                updated_at    REAL NOT NULL,
                provider      TEXT NOT NULL DEFAULT '{}'
            ) WITHOUT ROWID
            """,
        ),
    ),
    Migration(
        "revisions: a commit whose manifests did not validate is an 'invalid' entry",
        # An auditor reads history to see every commit the daemon reached; a rejected one
        # was only in the audit log. A CHECK cannot be altered in SQLite: both tables are
        # rebuilt as in the bookkeeping migration, ids and sequence kept.
        _rebuilt_revisions(
            (*_BOOKKEEPING_RESULTS, "invalid"),
            trigger=True,
        ),
    ),
    Migration(
        "back-off: one record per slot and template",
        (
            # During a progressive rollout a slot holds a stable and a new replica, and
            # each crash-loops on its own: the key gains the template ("" for a record of
            # the service itself or of any template). A key cannot be altered: rebuilt.
            """
            CREATE TABLE backoff_by_template (
                service         TEXT NOT NULL,
                slot            INTEGER NOT NULL,
                template        TEXT NOT NULL DEFAULT '',
                restarts        INTEGER NOT NULL,
                last_restart_at REAL NOT NULL,
                last_exit_code  INTEGER,
                replica_id      TEXT,
                reason          TEXT NOT NULL DEFAULT '',
                PRIMARY KEY (service, slot, template)
            ) WITHOUT ROWID
            """,
            "INSERT INTO backoff_by_template (service, slot, template, restarts,"
            " last_restart_at, last_exit_code, replica_id, reason)"
            " SELECT service, slot, COALESCE(template, ''), restarts, last_restart_at,"
            " last_exit_code, replica_id, reason FROM backoff",
            "DROP TABLE backoff",
            "ALTER TABLE backoff_by_template RENAME TO backoff",
        ),
    ),
)

#: The schema version this code writes and understands.
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    """The version recorded in the database (0 for a new, empty one)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def check_not_newer(version: int, known: int, db_path: Path) -> None:
    """Refuse a database written by a newer gitorch: guessing its meaning could lose data."""
    if version > known:
        raise StateCorrupt(
            f"the state store {db_path} has schema version {version}, "
            f"but this gitorch only knows versions up to {known}",
            detail=("it was written by a newer gitorch; upgrade gitorch to use it",),
        )


def migrate(
    conn: sqlite3.Connection,
    db_path: Path,
    migrations: Sequence[Migration] = MIGRATIONS,
) -> tuple[int, int]:
    """Apply every pending migration in one transaction; return (version before, after).

    Safe to call from several processes at once: the version is read again under the
    write lock, so the second caller finds nothing left to do.
    """
    known = len(migrations)
    check_not_newer(schema_version(conn), known, db_path)
    conn.execute("BEGIN IMMEDIATE")
    try:
        before = schema_version(conn)
        check_not_newer(before, known, db_path)
        for migration in migrations[before:]:
            for statement in migration.statements:
                conn.execute(statement)
        if before != known:
            # PRAGMA does not take parameters; `known` is an int we computed.
            conn.execute(f"PRAGMA user_version = {known}")
        conn.execute("COMMIT")
    except BaseException:
        # Some errors (SQLITE_FULL, SQLITE_IOERR) already ended the transaction.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return before, known
