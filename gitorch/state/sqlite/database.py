"""What the SQLite repositories use of their backend: the database, its transactions and
its clock (:class:`~gitorch.state.sqlite.backend.SqliteBackend` is the one
implementation; the repositories know only this, so the backend that assembles them is
the only module that knows both)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol


class Database(Protocol):
    """A state directory's database seen by a repository."""

    db_path: Path
    clock: Callable[[], float]
    chained: bool  # the audit log's rows carry hashes (migration 10 applied)

    def conn(self) -> sqlite3.Connection: ...

    def transaction(self) -> AbstractContextManager[None]: ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]: ...

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None: ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor: ...

    def now(self, at: float | None) -> float: ...
