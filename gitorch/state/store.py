"""The embedded state store: one SQLite database (WAL mode) in the state directory.

Concurrency model, because the daemon is multi-threaded and ``status``/``history`` may run
in other processes at the same time:

* every thread gets its own connection (SQLite connections must not be shared while in
  use); :meth:`StateStore.close` closes them all;
* WAL mode: readers never block the writer and never see a half-written transaction,
  they keep reading the last committed state;
* every write runs in :meth:`StateStore.transaction`, which starts with ``BEGIN
  IMMEDIATE``: the write lock is taken up front, so two writers queue (for up to
  ``busy_timeout`` seconds) instead of failing halfway with ``SQLITE_BUSY``;
* multi-row changes made inside one ``with store.transaction():`` commit together or not
  at all, crash included.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from gitorch.errors import StateError
from gitorch.state import rows
from gitorch.state.audit_chain import SYSTEM_ACTOR, ChainEntry, link, next_prev_hash
from gitorch.state.db import DEFAULT_BUSY_TIMEOUT, connect, error_for, translate
from gitorch.state.errors import PortUnavailable, RecordNotFound
from gitorch.state.layout import STATE_DB, ensure_state_dir, private_file
from gitorch.state.records import (
    AnalysisRunPhase,
    AnalysisRunRecord,
    AppliedObject,
    AuditEvent,
    BackoffRecord,
    Measurement,
    MeasurementPhase,
    NodeCondition,
    NodeRecord,
    PortAllocation,
    RevisionRecord,
    RevisionResult,
    RolloutRecord,
    TrafficSnapshot,
    VolumeRecord,
)
from gitorch.state.schema import (
    MIGRATIONS,
    Migration,
    check_not_newer,
    migrate,
    schema_version,
)

#: Host ports handed out when no port is requested. Below Linux's ephemeral range
#: (32768-60999), so they do not collide with ports the kernel picks for outgoing
#: connections or with Docker's own random publishing.
DEFAULT_PORT_RANGE = (30000, 32767)

# Every revisions query returns the per-service outcomes as one JSON object column, so a
# list of N revisions is one statement, not 1 + N.
_REVISION_COLUMNS = """
    r.id, r.sha, r.author, r.committed_at, r.signer, r.applied_at, r.result, r.reason,
    r.summary, r.trigger,
    (SELECT json_group_object(s.service, s.result) FROM revision_services s
      WHERE s.revision_id = r.id) AS service_results
"""

Clock = Callable[[], float]


class StateStore:
    """Typed access to gitorch's state directory database.

    ``StateStore(DIR)`` creates ``DIR`` and ``DIR/state.db`` if needed and migrates the
    schema. ``readonly=True`` (for ``status`` and ``history``) creates and migrates
    nothing and refuses writes with :class:`~gitorch.state.errors.StateReadOnly`.
    Opening needs no :class:`~gitorch.state.lock.DaemonLock`; the daemon takes that lock
    to be the only *reconciler*, not the only reader.
    """

    def __init__(
        self,
        state_dir: str | Path,
        *,
        readonly: bool = False,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        clock: Clock = time.time,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.db_path = self.state_dir / STATE_DB
        self.readonly = readonly
        self.busy_timeout = busy_timeout
        self._clock = clock
        self._local = threading.local()
        self._conns: dict[threading.Thread, sqlite3.Connection] = {}
        self._conns_lock = threading.Lock()
        self._closed = False
        if readonly:
            if not self.db_path.is_file():
                raise StateError(f"no state store at {self.state_dir} (no {STATE_DB} in it)")
        else:
            ensure_state_dir(self.state_dir)
            private_file(self.db_path, create=True)
            for suffix in ("-wal", "-shm"):
                private_file(self.db_path.with_name(self.db_path.name + suffix), create=False)
        conn = self._conn()
        with translate(self.db_path):
            if readonly:
                self._check_readable(conn, len(migrations))
            else:
                migrate(conn, self.db_path, migrations)
            self.schema_version = schema_version(conn)
            # A store opened with fewer migrations (tests of older schemas) has no chain.
            self._chained = "hash" in {
                row[1] for row in conn.execute("PRAGMA table_info(audit_log)")
            }

    def _check_readable(self, conn: sqlite3.Connection, known: int) -> None:
        version = schema_version(conn)
        check_not_newer(version, known, self.db_path)
        if version < known:
            raise StateError(
                f"the state store {self.db_path} has schema version {version}, "
                f"this gitorch needs {known}",
                detail=("run `gitorch apply` or the daemon once to migrate it",),
            )

    # -- connections and transactions ------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self._closed:
            raise StateError(f"the state store {self.db_path} is closed")
        conn = connect(self.db_path, busy_timeout=self.busy_timeout, readonly=self.readonly)
        conn.row_factory = sqlite3.Row
        with self._conns_lock:
            # Threads come and go (worker pools); close what dead threads left behind.
            for thread in [t for t in self._conns if not t.is_alive()]:
                self._conns.pop(thread).close()
            self._conns[threading.current_thread()] = conn
        self._local.conn = conn
        self._local.depth = 0
        return conn

    def close(self) -> None:
        """Close every thread's connection. Further use raises StateError."""
        self._closed = True
        with self._conns_lock:
            conns = list(self._conns.values())
            self._conns.clear()
        for conn in conns:
            conn.close()
        self._local = threading.local()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything written inside commits together, or (on any exception) not at all.

        Nesting is allowed: an inner block is a savepoint, rolled back alone if it raises
        (and the exception still propagates to the outer block).
        """
        conn = self._conn()
        depth: int = self._local.depth
        savepoint = f"gitorch_sp{depth}"
        with translate(self.db_path):
            conn.execute("BEGIN IMMEDIATE" if depth == 0 else f"SAVEPOINT {savepoint}")
        self._local.depth = depth + 1
        try:
            yield
        except BaseException:
            self._local.depth = depth
            with translate(self.db_path):
                if depth == 0:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                elif conn.in_transaction:
                    conn.execute(f"ROLLBACK TO {savepoint}")
                    conn.execute(f"RELEASE {savepoint}")
            raise
        self._local.depth = depth
        try:
            conn.execute("COMMIT" if depth == 0 else f"RELEASE {savepoint}")
        except sqlite3.Error as exc:
            if depth == 0 and conn.in_transaction:
                conn.execute("ROLLBACK")
            raise error_for(exc, self.db_path) from exc

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with translate(self.db_path):
            return self._conn().execute(sql, params).fetchall()

    def _query_one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        with translate(self.db_path):
            row: sqlite3.Row | None = self._conn().execute(sql, params).fetchone()
            return row

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        """Run one write; callers hold a transaction (see :meth:`transaction`)."""
        with translate(self.db_path):
            return self._conn().execute(sql, params)

    def set_trace(self, callback: Callable[[str], None] | None) -> None:
        """Call ``callback`` with each SQL statement this thread runs (debugging, tests)."""
        self._conn().set_trace_callback(callback)

    def _now(self, at: float | None) -> float:
        return self._clock() if at is None else at

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
        applied_at = self._now(at)
        with self.transaction():
            cursor = self._execute(
                "INSERT INTO revisions (sha, author, committed_at, signer, applied_at,"
                " result, reason, summary, trigger) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    sha,
                    author,
                    committed_at,
                    signer,
                    applied_at,
                    RevisionResult(result).value,
                    reason,
                    rows.dump_json(summary),
                    trigger,
                ),
            )
            revision_id = cursor.lastrowid
            assert revision_id is not None  # an INSERT into a rowid table always has one
            with translate(self.db_path):
                self._conn().executemany(
                    "INSERT INTO revision_services (revision_id, service, result) VALUES (?, ?, ?)",
                    [(revision_id, name, RevisionResult(result).value) for name in services],
                )
        return RevisionRecord(
            id=revision_id,
            sha=sha,
            author=author,
            committed_at=committed_at,
            signer=signer,
            applied_at=applied_at,
            result=RevisionResult(result),
            reason=reason,
            summary=dict(summary or {}),
            service_results={name: RevisionResult(result) for name in services},
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
        with self.transaction():
            cursor = self._execute(
                "UPDATE revisions SET result = ?, reason = ?,"
                " summary = COALESCE(?, summary) WHERE id = ?",
                (
                    RevisionResult(result).value,
                    reason,
                    None if summary is None else rows.dump_json(summary),
                    revision_id,
                ),
            )
            if cursor.rowcount == 0:
                raise RecordNotFound(f"no applied revision with id {revision_id}")
            self._execute(
                "UPDATE revision_services SET result = ? WHERE revision_id = ?",
                (RevisionResult(result).value, revision_id),
            )
            for name, outcome in (service_results or {}).items():
                self._execute(
                    "INSERT INTO revision_services (revision_id, service, result)"
                    " VALUES (?, ?, ?) ON CONFLICT (revision_id, service)"
                    " DO UPDATE SET result = excluded.result",
                    (revision_id, name, RevisionResult(outcome).value),
                )
            record = self.get_revision(revision_id)
        assert record is not None  # updated above, inside the same transaction
        return record

    def get_revision(self, revision_id: int) -> RevisionRecord | None:
        """One application by id."""
        row = self._query_one(
            f"SELECT {_REVISION_COLUMNS} FROM revisions r WHERE r.id = ?", (revision_id,)
        )
        return None if row is None else rows.revision(row)

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
        where: list[str] = []
        params: list[Any] = []
        if service is not None:
            where.append("r.id IN (SELECT revision_id FROM revision_services WHERE service = ?)")
            params.append(service)
        if before_id is not None:
            where.append("r.id < ?")
            params.append(before_id)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        params.append(-1 if limit is None else limit)
        found = self._query(
            f"SELECT {_REVISION_COLUMNS} FROM revisions r {clause} ORDER BY r.id DESC LIMIT ?",
            params,
        )
        return [rows.revision(row) for row in found]

    def last_applied_revision(self) -> RevisionRecord | None:
        """The newest application that succeeded, or that found nothing to change (Flux's
        ``lastAppliedRevision``)."""
        row = self._query_one(
            f"SELECT {_REVISION_COLUMNS} FROM revisions r WHERE r.result IN (?, ?)"
            " ORDER BY r.id DESC LIMIT 1",
            (RevisionResult.SUCCEEDED.value, RevisionResult.NO_CHANGES.value),
        )
        return None if row is None else rows.revision(row)

    def last_attempted_revision(self) -> RevisionRecord | None:
        """The newest application, whatever its result (in progress included)."""
        row = self._query_one(
            f"SELECT {_REVISION_COLUMNS} FROM revisions r ORDER BY r.id DESC LIMIT 1"
        )
        return None if row is None else rows.revision(row)

    def last_successful_revision(self, service: str) -> RevisionRecord | None:
        """The newest application in which ``service`` itself succeeded."""
        row = self._query_one(
            f"SELECT {_REVISION_COLUMNS} FROM revisions r WHERE r.id = ("
            " SELECT MAX(revision_id) FROM revision_services"
            " WHERE service = ? AND result = ?)",
            (service, RevisionResult.SUCCEEDED.value),
        )
        return None if row is None else rows.revision(row)

    def last_successful_revisions(self) -> dict[str, RevisionRecord]:
        """For every service ever applied successfully, its newest successful application."""
        found = self._query(
            f"SELECT best.service AS for_service, {_REVISION_COLUMNS}"
            " FROM (SELECT service, MAX(revision_id) AS revision_id FROM revision_services"
            "       WHERE result = ? GROUP BY service) AS best"
            " JOIN revisions r ON r.id = best.revision_id ORDER BY best.service",
            (RevisionResult.SUCCEEDED.value,),
        )
        return {row["for_service"]: rows.revision(row) for row in found}

    # -- crash-loop back-off -------------------------------------------------------------

    def record_backoff(self, record: BackoffRecord) -> None:
        """Store the back-off state of one replica slot."""
        with self.transaction():
            self._execute(
                "INSERT INTO backoff (service, slot, restarts, last_restart_at, last_exit_code,"
                " template, replica_id, reason)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (service, slot) DO UPDATE SET"
                " restarts = excluded.restarts, last_restart_at = excluded.last_restart_at,"
                " last_exit_code = excluded.last_exit_code, template = excluded.template,"
                " replica_id = excluded.replica_id, reason = excluded.reason",
                (
                    record.service,
                    record.slot,
                    record.restarts,
                    record.last_restart_at,
                    record.last_exit_code,
                    record.template,
                    record.replica_id,
                    record.reason,
                ),
            )

    def clear_backoff(self, service: str, slot: int | None = None) -> None:
        """Forget the back-off of a slot (it ran stably) or of a whole service (pruned)."""
        with self.transaction():
            if slot is None:
                self._execute("DELETE FROM backoff WHERE service = ?", (service,))
            else:
                self._execute("DELETE FROM backoff WHERE service = ? AND slot = ?", (service, slot))

    def list_backoff(self) -> list[BackoffRecord]:
        """Every slot in back-off, in one query."""
        return [
            BackoffRecord(
                r["service"],
                r["slot"],
                r["restarts"],
                r["last_restart_at"],
                r["last_exit_code"],
                template=r["template"],
                replica_id=r["replica_id"],
                reason=r["reason"],
            )
            for r in self._query("SELECT * FROM backoff ORDER BY service, slot")
        ]

    # -- inventory ---------------------------------------------------------------------

    def record_applied(
        self, kind: str, name: str, revision: str, digest: str, spec: Mapping[str, Any]
    ) -> None:
        """Remember ``spec`` (a canonical object) as what is applied for ``kind/name``."""
        with self.transaction():
            self._execute(
                "INSERT INTO inventory (kind, name, revision, digest, spec, applied_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (kind, name) DO UPDATE SET"
                " revision = excluded.revision, digest = excluded.digest,"
                " spec = excluded.spec, applied_at = excluded.applied_at",
                (kind, name, revision, digest, rows.dump_json(spec), self._clock()),
            )

    def forget_applied(self, kind: str, name: str) -> bool:
        """Drop ``kind/name`` from the inventory (after it was pruned)."""
        with self.transaction():
            cursor = self._execute(
                "DELETE FROM inventory WHERE kind = ? AND name = ?", (kind, name)
            )
        return cursor.rowcount > 0

    def list_applied(self) -> list[AppliedObject]:
        """The whole inventory, ordered by kind then name, in one query."""
        found = self._query(
            "SELECT kind, name, revision, digest, spec, applied_at FROM inventory ORDER BY kind, name"
        )
        return [
            AppliedObject(
                r["kind"],
                r["name"],
                r["revision"],
                r["digest"],
                rows.load_json(r["spec"]),
                r["applied_at"],
            )
            for r in found
        ]

    # -- rollouts ----------------------------------------------------------------------

    def upsert_rollout(
        self, record: RolloutRecord, *, reset_requests: bool = False
    ) -> RolloutRecord:
        """Store ``record`` as the service's rollout state; return what was stored.

        ``updated_at`` is set to now; a ``started_at`` of 0 also means now.

        The request flags (``promote_requested``, ``abort_requested``) belong to
        ``gitorch promote`` / ``gitorch abort`` (:meth:`request`), which may set them while
        a reconcile pass holds an older copy of the record: saving that copy must not
        write them back to 0, so an update leaves them as stored. Only a new row takes
        them from ``record``; ``reset_requests=True`` (a new rollout begins: requests
        made for the rollout it replaces do not carry over) clears them. A pass that
        acted on a request uses it up with :meth:`consume_request`. The returned record
        carries the flags as stored.
        """
        now = self._clock()
        stored = replace(record, started_at=record.started_at or now, updated_at=now)
        with self.transaction():
            cursor = self._execute(
                "INSERT INTO rollouts (service, revision, spec_digest, strategy, phase, step,"
                " weight, started_at, updated_at, last_error, previous_revision,"
                " previous_digest, spec, previous_spec, failed_digest, available,"
                " progress_at, message, reached_healthy, step_started_at, promote_requested,"
                " abort_requested, converged_replicas, failed_revision)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (service) DO UPDATE SET"
                " revision = excluded.revision, spec_digest = excluded.spec_digest,"
                " strategy = excluded.strategy, phase = excluded.phase,"
                " step = excluded.step, weight = excluded.weight,"
                " started_at = excluded.started_at, updated_at = excluded.updated_at,"
                " last_error = excluded.last_error,"
                " previous_revision = excluded.previous_revision,"
                " previous_digest = excluded.previous_digest,"
                " spec = excluded.spec, previous_spec = excluded.previous_spec,"
                " failed_digest = excluded.failed_digest, available = excluded.available,"
                " progress_at = excluded.progress_at, message = excluded.message,"
                " reached_healthy = excluded.reached_healthy,"
                " step_started_at = excluded.step_started_at,"
                " converged_replicas = excluded.converged_replicas,"
                " failed_revision = excluded.failed_revision,"
                # Not excluded.*: the stored flags stay unless this save starts a rollout.
                " promote_requested = CASE WHEN ? THEN 0 ELSE promote_requested END,"
                " abort_requested = CASE WHEN ? THEN 0 ELSE abort_requested END"
                " RETURNING promote_requested, abort_requested",
                (
                    stored.service,
                    stored.revision,
                    stored.spec_digest,
                    stored.strategy,
                    stored.phase.value,
                    stored.step,
                    stored.weight,
                    stored.started_at,
                    stored.updated_at,
                    stored.last_error,
                    stored.previous_revision,
                    stored.previous_digest,
                    rows.dump_json(stored.spec),
                    None if stored.previous_spec is None else rows.dump_json(stored.previous_spec),
                    stored.failed_digest,
                    stored.available,
                    stored.progress_at,
                    stored.message,
                    int(stored.reached_healthy),
                    stored.step_started_at,
                    int(stored.promote_requested and not reset_requests),
                    int(stored.abort_requested and not reset_requests),
                    stored.converged_replicas,
                    stored.failed_revision,
                    int(reset_requests),
                    int(reset_requests),
                ),
            )
            flags = cursor.fetchone()
        return replace(
            stored,
            promote_requested=bool(flags["promote_requested"]),
            abort_requested=bool(flags["abort_requested"]),
        )

    def request(self, service: str, what: str) -> bool:
        """``gitorch promote`` / ``gitorch abort``: flag the service's rollout for the next
        pass (``what`` is "promote" or "abort"). False when the service has no rollout.

        Only this column is written, so it cannot undo a concurrent save of the rest of
        the record, nor be undone by one (see :meth:`upsert_rollout`). Requesting twice
        before a pass acts on it is one request.
        """
        column = _request_column(what)
        with self.transaction():
            cursor = self._execute(
                f"UPDATE rollouts SET {column} = 1 WHERE service = ?",  # noqa: S608 - fixed map
                (service,),
            )
        return cursor.rowcount > 0

    def consume_request(self, service: str, what: str) -> bool:
        """Use up a pending ``what`` request ("promote" or "abort") of ``service``'s rollout.

        An atomic compare-and-clear: True if the flag was set and is now cleared, False
        if there was none. Call it inside the transaction that saves what acting on the
        request changed (the new step, the rollback), so the request is either acted on
        exactly once or stays pending for the next pass, a crash included.
        """
        column = _request_column(what)
        with self.transaction():
            cursor = self._execute(
                f"UPDATE rollouts SET {column} = 0 WHERE service = ? AND {column} = 1",  # noqa: S608
                (service,),
            )
        return cursor.rowcount > 0

    def get_rollout(self, service: str) -> RolloutRecord | None:
        """The service's rollout state, if it was ever rolled out."""
        row = self._query_one("SELECT * FROM rollouts WHERE service = ?", (service,))
        return None if row is None else rows.rollout(row)

    def list_rollouts(self) -> list[RolloutRecord]:
        """Every service's rollout state, by service name."""
        return [rows.rollout(row) for row in self._query("SELECT * FROM rollouts ORDER BY service")]

    def delete_rollout(self, service: str) -> bool:
        """Forget a service's rollout state (the service left Git); True if there was one."""
        with self.transaction():
            cursor = self._execute("DELETE FROM rollouts WHERE service = ?", (service,))
        return cursor.rowcount > 0

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
        processes: the check and the insert happen under SQLite's write lock, and the
        primary key (node, host_port) makes a double allocation impossible anyway.
        Raises :class:`PortUnavailable` when the port is someone else's or the range is full.
        """
        low, high = port_range
        with self.transaction():
            held = self._query_one(
                "SELECT * FROM port_allocations WHERE node = ? AND owner = ?", (node, owner)
            )
            if held is not None:
                if port is None or held["host_port"] == port:
                    return rows.port(held)
                raise PortUnavailable(
                    f"{owner} already holds port {held['host_port']} on node {node};"
                    f" release it before asking for {port}"
                )
            if port is None:
                port = self._lowest_free_port(node, low, high)
            else:
                taken = self._query_one(
                    "SELECT owner FROM port_allocations WHERE node = ? AND host_port = ?",
                    (node, port),
                )
                if taken is not None:
                    raise PortUnavailable(
                        f"port {port} on node {node} is already allocated to {taken['owner']}"
                    )
            allocated_at = self._now(at)
            try:
                self._conn().execute(
                    "INSERT INTO port_allocations (node, host_port, owner, allocated_at)"
                    " VALUES (?, ?, ?, ?)",
                    (node, port, owner, allocated_at),
                )
            except sqlite3.IntegrityError as exc:
                raise PortUnavailable(
                    f"port {port} on node {node} is not available: {exc}"
                ) from exc
            except sqlite3.Error as exc:
                raise error_for(exc, self.db_path) from exc
        return PortAllocation(node=node, host_port=port, owner=owner, allocated_at=allocated_at)

    def _lowest_free_port(self, node: str, low: int, high: int) -> int:
        used = self._query(
            "SELECT host_port FROM port_allocations"
            " WHERE node = ? AND host_port BETWEEN ? AND ? ORDER BY host_port",
            (node, low, high),
        )
        candidate = low
        for row in used:
            if row["host_port"] != candidate:
                break
            candidate += 1
        if candidate > high:
            raise PortUnavailable(f"every port from {low} to {high} on node {node} is allocated")
        return candidate

    def release_port(self, node: str, host_port: int) -> bool:
        """Free one port; True if it was allocated."""
        with self.transaction():
            cursor = self._execute(
                "DELETE FROM port_allocations WHERE node = ? AND host_port = ?", (node, host_port)
            )
        return cursor.rowcount > 0

    def release_owner(self, owner: str) -> int:
        """Free every port ``owner`` holds, on any node; return how many."""
        with self.transaction():
            cursor = self._execute("DELETE FROM port_allocations WHERE owner = ?", (owner,))
        return cursor.rowcount

    def list_ports(self, node: str | None = None) -> list[PortAllocation]:
        """Allocated ports (of one node, or all), by node then port."""
        if node is None:
            found = self._query("SELECT * FROM port_allocations ORDER BY node, host_port")
        else:
            found = self._query(
                "SELECT * FROM port_allocations WHERE node = ? ORDER BY host_port", (node,)
            )
        return [rows.port(row) for row in found]

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
        with self.transaction():
            self._execute(
                "INSERT INTO nodes (name, driver, endpoint, labels) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET driver = excluded.driver,"
                " endpoint = excluded.endpoint, labels = excluded.labels",
                (name, driver, endpoint, rows.dump_json(labels)),
            )
            record = self.get_node(name)
        assert record is not None  # inserted or updated just above
        return record

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
        with self.transaction():
            cursor = self._execute(
                "UPDATE nodes SET condition = ?, message = ?,"
                " last_seen = CASE WHEN ? THEN ? ELSE last_seen END WHERE name = ?",
                (NodeCondition(condition).value, message, seen, self._now(at), name),
            )
            if cursor.rowcount == 0:
                raise RecordNotFound(f"no node named {name!r} is registered")
            record = self.get_node(name)
        assert record is not None
        return record

    def set_draining(self, name: str, draining: bool) -> NodeRecord:
        """Start (or stop) draining a registered node."""
        with self.transaction():
            cursor = self._execute(
                "UPDATE nodes SET draining = ? WHERE name = ?", (int(draining), name)
            )
            if cursor.rowcount == 0:
                raise RecordNotFound(f"no node named {name!r} is registered")
            record = self.get_node(name)
        assert record is not None
        return record

    def get_node(self, name: str) -> NodeRecord | None:
        row = self._query_one("SELECT * FROM nodes WHERE name = ?", (name,))
        return None if row is None else rows.node(row)

    def list_nodes(self) -> list[NodeRecord]:
        """Every registered node, by name."""
        return [rows.node(row) for row in self._query("SELECT * FROM nodes ORDER BY name")]

    def remove_node(self, name: str) -> bool:
        """Forget a node; True if it was registered."""
        with self.transaction():
            cursor = self._execute("DELETE FROM nodes WHERE name = ?", (name,))
        return cursor.rowcount > 0

    # -- analysis measurements ---------------------------------------------------------

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
        taken_at = self._now(at)
        with self.transaction():
            cursor = self._execute(
                "INSERT INTO measurements (service, revision, analysis, taken_at, phase,"
                " value, message, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    service,
                    revision,
                    analysis,
                    taken_at,
                    MeasurementPhase(phase).value,
                    rows.dump_json(value),
                    message,
                    run_id,
                ),
            )
        assert cursor.lastrowid is not None
        return Measurement(
            id=cursor.lastrowid,
            service=service,
            revision=revision,
            analysis=analysis,
            taken_at=taken_at,
            phase=MeasurementPhase(phase),
            value=dict(value or {}),
            message=message,
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
        sql = "SELECT * FROM measurements WHERE service = ?"
        params: list[Any] = [service]
        if revision is not None:
            sql += " AND revision = ?"
            params.append(revision)
        if analysis is not None:
            sql += " AND analysis = ?"
            params.append(analysis)
        if run_id is not None:
            sql += " AND run_id = ?"
            params.append(run_id)
        # The newest `limit`, returned oldest first.
        sql = f"SELECT * FROM ({sql} ORDER BY id DESC LIMIT ?) ORDER BY id"
        params.append(-1 if limit is None else limit)
        return [rows.measurement(row) for row in self._query(sql, params)]

    # -- analysis runs -----------------------------------------------------------------

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
        identity = (service, revision, analysis, step_started_at)
        with self.transaction():
            self._execute(
                "INSERT INTO analysis_runs (service, revision, analysis, step_started_at,"
                " started_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (service, revision, analysis, step_started_at) DO NOTHING",
                (*identity, self._now(at)),
            )
            row = self._query_one(
                "SELECT * FROM analysis_runs WHERE service = ? AND revision = ?"
                " AND analysis = ? AND step_started_at = ?",
                identity,
            )
        assert row is not None  # inserted or found just above, in the same transaction
        return rows.analysis_run(row)

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
        phase = AnalysisRunPhase(phase)
        with self.transaction():
            cursor = self._execute(
                "UPDATE analysis_runs SET phase = ?, message = ?,"
                " concluded_at = CASE WHEN ? = 'running' THEN NULL"
                " ELSE COALESCE(concluded_at, ?) END WHERE id = ?",
                (phase.value, message, phase.value, self._now(at), run_id),
            )
            if cursor.rowcount == 0:
                raise RecordNotFound(f"no analysis run with id {run_id}")
            row = self._query_one("SELECT * FROM analysis_runs WHERE id = ?", (run_id,))
        assert row is not None
        return rows.analysis_run(row)

    def set_analysis_window(self, run_id: int, figures: Mapping[str, Any]) -> None:
        """Where run ``run_id``'s current window begins: the data plane's cumulative
        figures (see :attr:`AnalysisRunRecord.window_figures`)."""
        with self.transaction():
            self._execute(
                "UPDATE analysis_runs SET window_figures = ? WHERE id = ?",
                (rows.dump_json(figures), run_id),
            )

    def list_analysis_runs(
        self,
        service: str,
        *,
        revision: str | None = None,
        step_started_at: float | None = None,
    ) -> list[AnalysisRunRecord]:
        """Analysis runs of a service (of one rollout, of one step entry), oldest first."""
        sql = "SELECT * FROM analysis_runs WHERE service = ?"
        params: list[Any] = [service]
        if revision is not None:
            sql += " AND revision = ?"
            params.append(revision)
        if step_started_at is not None:
            sql += " AND step_started_at = ?"
            params.append(step_started_at)
        return [rows.analysis_run(row) for row in self._query(sql + " ORDER BY id", params)]

    # -- traffic snapshots -------------------------------------------------------------

    def replace_traffic(self, snapshots: Iterable[TrafficSnapshot]) -> None:
        """Make ``snapshots`` the stored traffic, one per route, in one transaction: a
        route not given (a service that left Git) loses its snapshot."""
        given = list(snapshots)
        with self.transaction():
            for snap in given:
                self._execute(
                    "INSERT INTO traffic_snapshots (service, taken_at, data) VALUES (?, ?, ?)"
                    " ON CONFLICT (service) DO UPDATE SET taken_at = excluded.taken_at,"
                    " data = excluded.data",
                    (snap.service, snap.taken_at, rows.dump_json(snap.data_json())),
                )
            names = [snap.service for snap in given]
            marks = ",".join("?" * len(names))
            self._execute(
                f"DELETE FROM traffic_snapshots WHERE service NOT IN ({marks})"
                if names
                else "DELETE FROM traffic_snapshots",
                names,
            )

    def get_traffic(self, service: str) -> TrafficSnapshot | None:
        """The latest stored traffic of one route (None when the daemon wrote none)."""
        row = self._query_one("SELECT * FROM traffic_snapshots WHERE service = ?", (service,))
        return None if row is None else rows.traffic(row)

    def list_traffic(self) -> list[TrafficSnapshot]:
        """Every stored route's latest traffic, by name."""
        found = self._query("SELECT * FROM traffic_snapshots ORDER BY service")
        return [rows.traffic(row) for row in found]

    # -- volumes -----------------------------------------------------------------------

    def bind_volume(
        self, name: str, node: str, spec: Mapping[str, Any], *, at: float | None = None
    ) -> None:
        """Bind ``name`` to ``node`` (or note the Git spec of a bound one). A released
        volume back in Git is bound again: its kept data is its data."""
        self._execute_one(
            "INSERT INTO volumes (name, node, spec, bound_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (name, node) DO UPDATE SET spec = excluded.spec, released_at = NULL",
            (name, node, rows.dump_json(spec), self._now(at)),
        )

    def volume_created(self, name: str, node: str, *, at: float | None = None) -> None:
        """The backend volume of ``name`` exists on ``node`` now (made, or adopted)."""
        self._execute_one(
            "UPDATE volumes SET created_at = ?, missing_at = NULL WHERE name = ? AND node = ?",
            (self._now(at), name, node),
        )

    def volume_missing(self, name: str, node: str, *, at: float | None = None) -> None:
        """A volume that was made is not on its node any more (kept: it is not re-made)."""
        self._execute_one(
            "UPDATE volumes SET missing_at = COALESCE(missing_at, ?) WHERE name = ? AND node = ?",
            (self._now(at), name, node),
        )

    def release_volume(self, name: str, *, at: float | None = None) -> None:
        """``name`` left Git with reclaimPolicy Retain: its data stays where it is."""
        self._execute_one(
            "UPDATE volumes SET released_at = COALESCE(released_at, ?) WHERE name = ?",
            (self._now(at), name),
        )

    def forget_volume(self, name: str, node: str | None = None) -> bool:
        """Drop the records of ``name`` (on ``node``, or everywhere); True if any."""
        if node is None:
            cursor = self._execute_one("DELETE FROM volumes WHERE name = ?", (name,))
        else:
            cursor = self._execute_one(
                "DELETE FROM volumes WHERE name = ? AND node = ?", (name, node)
            )
        return cursor.rowcount > 0

    def list_volumes(self) -> list[VolumeRecord]:
        """Every volume record, by name then node."""
        found = self._query("SELECT * FROM volumes ORDER BY name, node")
        return [rows.volume(row) for row in found]

    def _execute_one(self, sql: str, params: Sequence[Any]) -> sqlite3.Cursor:
        """One statement in its own transaction (or the caller's)."""
        with self.transaction():
            return self._execute(sql, params)

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
        event_at = self._now(at)
        text = rows.dump_json(data)
        with self.transaction():
            # Under the write lock (BEGIN IMMEDIATE): no other writer can append between
            # reading the head and linking to it.
            entry = ChainEntry(
                id=0,
                at=event_at,
                kind=kind,
                message=message,
                actor=actor,
                service=service,
                revision=revision,
                data=rows.load_json(text),  # hashed as it will be read back
            )
            if self._chained:
                prev_hash = self._chain_head_hash()
                entry_hash: str | None = link(prev_hash, entry)
                cursor = self._execute(
                    "INSERT INTO audit_log (at, kind, service, revision, message, data, actor,"
                    " prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        event_at,
                        kind,
                        service,
                        revision,
                        message,
                        text,
                        actor,
                        prev_hash,
                        entry_hash,
                    ),
                )
            else:
                entry_hash = None
                cursor = self._execute(
                    "INSERT INTO audit_log (at, kind, service, revision, message, data)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (event_at, kind, service, revision, message, text),
                )
        assert cursor.lastrowid is not None
        return AuditEvent(
            id=cursor.lastrowid,
            at=event_at,
            kind=kind,
            message=message,
            service=service,
            revision=revision,
            data=entry.data,
            actor=actor,
            hash=entry_hash,
        )

    def _chain_head_hash(self) -> str:
        """What the next audit entry links to (inside the appending transaction)."""
        last = self._query_one(
            "SELECT hash FROM audit_log WHERE hash IS NOT NULL ORDER BY id DESC LIMIT 1"
        )
        if last is not None:
            return str(last["hash"])
        # The first chained entry: it seals what older gitorch versions wrote.
        prefix = self._query("SELECT * FROM audit_log ORDER BY id")
        return next_prev_hash(None, [rows.chain_entry(row) for row in prefix])

    def audit_chain(self) -> tuple[list[ChainEntry], int | None]:
        """Every audit entry in id order, as the chain reads it, and the highest id the
        log ever handed out (None when unknown): what ``gitorch audit --verify`` checks."""
        with _read_snapshot(self._conn(), self.db_path):
            found = self._query("SELECT * FROM audit_log ORDER BY id")
            seq = self._query_one("SELECT seq FROM sqlite_sequence WHERE name = 'audit_log'")
        return [rows.chain_entry(row) for row in found], (int(seq["seq"]) if seq else None)

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
        where: list[str] = []
        params: list[Any] = []
        if service is not None:
            where.append("service = ?")
            params.append(service)
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        if after_id is not None:
            where.append("id > ?")
            params.append(after_id)
        if since is not None:
            where.append("at >= ?")
            params.append(since)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        order = "DESC" if newest_first else "ASC"
        params.append(-1 if limit is None else limit)
        found = self._query(f"SELECT * FROM audit_log {clause} ORDER BY id {order} LIMIT ?", params)
        return [rows.audit_event(row) for row in found]


@contextmanager
def _read_snapshot(conn: sqlite3.Connection, db_path: Path) -> Iterator[None]:
    """One read transaction (or the caller's own): every statement inside sees the same
    committed state, without taking the write lock."""
    if conn.in_transaction:
        yield
        return
    with translate(db_path):
        conn.execute("BEGIN")
    try:
        yield
    finally:
        with translate(db_path):
            conn.execute("COMMIT")


#: The column of each request ``gitorch promote`` / ``gitorch abort`` can make.
_REQUEST_COLUMNS = {"promote": "promote_requested", "abort": "abort_requested"}


def _request_column(what: str) -> str:
    try:
        return _REQUEST_COLUMNS[what]
    except KeyError:
        raise ValueError(f"unknown rollout request {what!r} (promote or abort)") from None
