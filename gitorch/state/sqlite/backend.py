"""The embedded backend: one SQLite database (WAL mode) in the state directory.

Concurrency model, because the daemon is multi-threaded and ``status``/``history`` may run
in other processes at the same time:

* every thread gets its own connection (SQLite connections must not be shared while in
  use); :meth:`SqliteBackend.close` closes them all;
* WAL mode: readers never block the writer and never see a half-written transaction,
  they keep reading the last committed state;
* every write runs in :meth:`SqliteBackend.transaction`, which starts with ``BEGIN
  IMMEDIATE``: the write lock is taken up front, so two writers queue (for up to
  ``busy_timeout`` seconds) instead of failing halfway with ``SQLITE_BUSY``;
* multi-row changes made inside one ``with backend.transaction():`` commit together or
  not at all, crash included.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from gitorch.errors import StateError
from gitorch.state.db import DEFAULT_BUSY_TIMEOUT, connect, error_for, translate
from gitorch.state.layout import STATE_DB, ensure_state_dir, private_file
from gitorch.state.repositories import StateSnapshot
from gitorch.state.schema import MIGRATIONS, Migration, check_not_newer, migrate, schema_version

Clock = Callable[[], float]
T = TypeVar("T")


class SqliteBackend:
    """The state directory's database and its repositories (see :mod:`..repositories`).

    Creates ``DIR`` and ``DIR/state.db`` if needed and migrates the schema;
    ``readonly=True`` (for ``status`` and ``history``) creates and migrates nothing and
    refuses writes with :class:`~gitorch.state.errors.StateReadOnly`.
    """

    def __init__(
        self,
        state_dir: str | Path,
        *,
        readonly: bool = False,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        clock: Clock,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> None:
        from gitorch.state.sqlite import repos

        self.state_dir = Path(state_dir)
        self.db_path = self.state_dir / STATE_DB
        self.readonly = readonly
        self.busy_timeout = busy_timeout
        self.clock = clock
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
        conn = self.conn()
        with translate(self.db_path):
            if readonly:
                self._check_readable(conn, len(migrations))
            else:
                migrate(conn, self.db_path, migrations)
            self.schema_version = schema_version(conn)
            # A store opened with fewer migrations (tests of older schemas) has no chain.
            self.chained = "hash" in {
                row[1] for row in conn.execute("PRAGMA table_info(audit_log)")
            }
        self.revisions = repos.Revisions(self)
        self.rollouts = repos.Rollouts(self)
        self.inventory = repos.Inventory(self)
        self.ports = repos.Ports(self)
        self.nodes = repos.Nodes(self)
        self.backoff = repos.Backoff(self)
        self.analysis = repos.Analysis(self)
        self.traffic = repos.Traffic(self)
        self.volumes = repos.Volumes(self)
        self.autoscalers = repos.Autoscalers(self)
        self.node_pools = repos.NodePools(self)
        self.audit = repos.Audit(self)

    def describe(self) -> str:
        return str(self.state_dir)

    def restore(self, snapshot: StateSnapshot) -> None:
        """Every record of ``snapshot``, ids kept, in one transaction."""
        from gitorch.state.sqlite.restore import restore

        restore(self, snapshot)

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

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
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

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything written inside commits together, or (on any exception) not at all.

        Nesting is allowed: an inner block is a savepoint, rolled back alone if it raises
        (and the exception still propagates to the outer block).
        """
        conn = self.conn()
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

    def atomic(self, work: Callable[[], T]) -> T:
        """``work()`` in one transaction (writers queue on SQLite: no conflict to retry)."""
        with self.transaction():
            return work()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with translate(self.db_path):
            return self.conn().execute(sql, params).fetchall()

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        with translate(self.db_path):
            row: sqlite3.Row | None = self.conn().execute(sql, params).fetchone()
            return row

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        """Run one write; callers hold a transaction (see :meth:`transaction`)."""
        with translate(self.db_path):
            return self.conn().execute(sql, params)

    def set_trace(self, callback: Callable[[str], None] | None) -> None:
        """Call ``callback`` with each SQL statement this thread runs (debugging, tests)."""
        self.conn().set_trace_callback(callback)

    def now(self, at: float | None) -> float:
        return self.clock() if at is None else at
