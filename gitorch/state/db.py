"""Opening SQLite connections the way the store needs them, and translating its errors.

This is the one module (with :mod:`gitorch.state.schema`) that lets ``sqlite3`` errors
through; everything it raises is a :class:`~gitorch.errors.StateError`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gitorch.errors import StateCorrupt, StateError
from gitorch.state.errors import StateReadOnly

#: Seconds a connection waits for another's write lock before giving up.
DEFAULT_BUSY_TIMEOUT = 10.0

# Substrings of sqlite3 messages that mean the file itself is unusable (not a transient
# condition): SQLITE_NOTADB, SQLITE_CORRUPT, SQLITE_IOERR.
_CORRUPT_MARKERS = (
    "file is not a database",
    "database disk image is malformed",
    "disk i/o error",
)


@contextmanager
def translate(db_path: Path) -> Iterator[None]:
    """Turn any ``sqlite3.Error`` raised inside into a StateError naming ``db_path``."""
    try:
        yield
    except sqlite3.Error as exc:
        raise error_for(exc, db_path) from exc


def error_for(exc: sqlite3.Error, db_path: Path) -> StateError:
    """The StateError that tells a user what ``exc`` means for the store at ``db_path``."""
    text = str(exc)
    lowered = text.lower()
    if any(marker in lowered for marker in _CORRUPT_MARKERS):
        return StateCorrupt(
            f"the state store {db_path} cannot be read ({text})",
            detail=(
                "it is not a gitorch state database or it is damaged;",
                "move it away to start from an empty store (live workloads are rediscovered)",
            ),
        )
    if "readonly database" in lowered or "read-only" in lowered:
        return StateReadOnly(f"the state store {db_path} was opened read-only ({text})")
    if "database is locked" in lowered or "database is busy" in lowered:
        return StateError(
            f"the state store {db_path} stayed busy (another writer held it too long: {text})"
        )
    if "unable to open database" in lowered:
        return StateError(f"cannot open the state store {db_path} ({text})")
    return StateError(f"state store {db_path}: {text}")


def _set_wal(conn: sqlite3.Connection, busy_timeout: float) -> str:
    """Switch to WAL mode, retrying while another process holds the new database.

    Changing the journal mode can fail with SQLITE_BUSY *without* SQLite calling the busy
    handler (seen when several processes create the same store at once), so the
    busy timeout is applied here by hand.
    """
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def connect(db_path: Path, *, busy_timeout: float, readonly: bool) -> sqlite3.Connection:
    """A connection to ``db_path`` in WAL mode, in autocommit (transactions are explicit).

    ``check_same_thread`` is off only so that :meth:`StateStore.close` may close every
    thread's connection; each connection is otherwise used by the thread that opened it.
    """
    with translate(db_path):
        if readonly:
            # mode=rw: never create a store just because someone asked for its status.
            uri = f"{db_path.resolve().as_uri()}?mode=rw"
            conn = sqlite3.connect(
                uri,
                uri=True,
                timeout=busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        else:
            conn = sqlite3.connect(
                db_path,
                timeout=busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        try:
            # sqlite3.connect sets busy_timeout from `timeout` already; set it explicitly
            # so the intent is visible and survives a change of defaults.
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            if readonly:
                conn.execute("PRAGMA query_only = ON")
            else:
                mode = _set_wal(conn, busy_timeout)
                if str(mode).lower() != "wal":
                    raise StateError(
                        f"the state store {db_path} cannot use WAL mode (got {mode!r}); "
                        "put the state directory on a local file system"
                    )
            # FULL: a committed record (audit entry, applied revision) survives power loss,
            # not only a crash of the process; commits are rare, so the fsync is cheap.
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
    return conn
