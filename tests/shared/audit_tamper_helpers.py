"""What someone with write access to the state can do to the audit log, on either backend:
the sqlite3 shell on ``state.db`` (the append-only triggers dropped first), or any etcd
client on the namespace's ``audit/ID`` keys. The audit chain's tests tamper through these
and check that ``verify`` names what was done."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Protocol

from gitorch.state import StateStore
from gitorch.state.etcd.backend import EtcdBackend

FIELDS = ("at", "kind", "actor", "service", "revision", "message", "data", "prev_hash", "hash")


class Tamper(Protocol):
    def raw(self, entry_id: int) -> dict[str, Any]:
        """The stored fields of one entry (``data`` decoded)."""
        ...

    def edit(self, entry_id: int, **fields: Any) -> None: ...

    def delete(self, *entry_ids: int) -> None: ...

    def swap(self, first: int, second: int) -> None:
        """Exchange two whole entries (their ids stay where they were)."""
        ...

    def insert_unchained(self, kind: str, message: str) -> None:
        """A new entry after the newest, with no hash (written around the chain)."""
        ...


class SqliteTamper:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "state.db"

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, isolation_level=None)) as conn:
            conn.row_factory = sqlite3.Row
            conn.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
            conn.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")
            yield conn

    def raw(self, entry_id: int) -> dict[str, Any]:
        import json

        with self._conn() as conn:
            row = conn.execute("SELECT * FROM audit_log WHERE id = ?", (entry_id,)).fetchone()
        found = {name: row[name] for name in FIELDS}
        found["data"] = json.loads(found["data"])
        return found

    def edit(self, entry_id: int, **fields: Any) -> None:
        sets = ", ".join(f"{name} = ?" for name in fields)
        with self._conn() as conn:
            conn.execute(f"UPDATE audit_log SET {sets} WHERE id = ?", (*fields.values(), entry_id))  # noqa: S608

    def delete(self, *entry_ids: int) -> None:
        with self._conn() as conn:
            conn.executemany("DELETE FROM audit_log WHERE id = ?", [(i,) for i in entry_ids])

    def swap(self, first: int, second: int) -> None:
        with self._conn() as conn:
            conn.execute("UPDATE audit_log SET id = -1 WHERE id = ?", (first,))
            conn.execute("UPDATE audit_log SET id = ? WHERE id = ?", (first, second))
            conn.execute("UPDATE audit_log SET id = ? WHERE id = -1", (second,))

    def insert_unchained(self, kind: str, message: str) -> None:
        with self._conn() as conn:
            conn.execute(
                "INSERT INTO audit_log (at, kind, message) VALUES (0, ?, ?)", (kind, message)
            )


class EtcdTamper:
    def __init__(self, url: str) -> None:
        self.url = url

    @contextmanager
    def _backend(self) -> Iterator[EtcdBackend]:
        with StateStore(self.url) as store:
            assert isinstance(store.backend, EtcdBackend)
            yield store.backend

    @staticmethod
    def _key(entry_id: int) -> str:
        return f"audit/{entry_id:012d}"

    def raw(self, entry_id: int) -> dict[str, Any]:
        with self._backend() as kv:
            value = kv.get(self._key(entry_id))
        return {name: value.get(name) for name in FIELDS}

    def edit(self, entry_id: int, **fields: Any) -> None:
        with self._backend() as kv, kv.transaction():
            value = kv.get(self._key(entry_id))
            kv.put(self._key(entry_id), {**value, **fields})

    def delete(self, *entry_ids: int) -> None:
        with self._backend() as kv, kv.transaction():
            for entry_id in entry_ids:
                kv.delete(self._key(entry_id))

    def swap(self, first: int, second: int) -> None:
        with self._backend() as kv, kv.transaction():
            one, two = kv.get(self._key(first)), kv.get(self._key(second))
            kv.put(self._key(first), {**two, "id": first})
            kv.put(self._key(second), {**one, "id": second})

    def insert_unchained(self, kind: str, message: str) -> None:
        with self._backend() as kv, kv.transaction():
            entry_id = kv.next_id("audit")
            kv.put(
                self._key(entry_id),
                {"id": entry_id, "at": 0.0, "kind": kind, "message": message, "data": {}},
            )


def tamper_for(location: str) -> Tamper:
    if location.startswith("etcd://"):
        return EtcdTamper(location)
    return SqliteTamper(Path(location))
