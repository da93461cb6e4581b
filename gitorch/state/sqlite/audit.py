"""The append-only history/audit log (table ``audit_log``; triggers refuse updates and
deletes in the database itself), each entry chained by hash to the one before
(:mod:`gitorch.state.audit_chain`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from gitorch.state import rows
from gitorch.state.audit_chain import ChainEntry, link, next_prev_hash
from gitorch.state.db import translate
from gitorch.state.records import AuditEvent

if TYPE_CHECKING:
    from gitorch.state.sqlite.database import Database


class Audit:
    def __init__(self, db: Database) -> None:
        self.db = db

    def append(
        self,
        kind: str,
        message: str,
        *,
        service: str | None,
        revision: str | None,
        data: Mapping[str, Any] | None,
        at: float | None,
        actor: str,
    ) -> AuditEvent:
        event_at = self.db.now(at)
        text = rows.dump_json(data)
        with self.db.transaction():
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
            if self.db.chained:
                prev_hash = self._head_hash()
                entry_hash: str | None = link(prev_hash, entry)
                cursor = self.db.execute(
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
                cursor = self.db.execute(
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

    def _head_hash(self) -> str:
        """What the next entry links to (inside the appending transaction)."""
        last = self.db.query_one(
            "SELECT hash FROM audit_log WHERE hash IS NOT NULL ORDER BY id DESC LIMIT 1"
        )
        if last is not None:
            return str(last["hash"])
        # The first chained entry: it seals what older gitorch versions wrote.
        prefix = self.db.query("SELECT * FROM audit_log ORDER BY id")
        return next_prev_hash(None, [rows.chain_entry(row) for row in prefix])

    def chain(self) -> tuple[list[ChainEntry], int | None]:
        with self._read_snapshot():
            found = self.db.query("SELECT * FROM audit_log ORDER BY id")
            seq = self.db.query_one("SELECT seq FROM sqlite_sequence WHERE name = 'audit_log'")
        return [rows.chain_entry(row) for row in found], (int(seq["seq"]) if seq else None)

    @contextmanager
    def _read_snapshot(self) -> Iterator[None]:
        """One read transaction (or the caller's own): every statement inside sees the
        same committed state, without taking the write lock."""
        conn = self.db.conn()
        if conn.in_transaction:
            yield
            return
        with translate(self.db.db_path):
            conn.execute("BEGIN")
        try:
            yield
        finally:
            with translate(self.db.db_path):
                conn.execute("COMMIT")

    def list(
        self,
        *,
        service: str | None,
        kind: str | None,
        after_id: int | None,
        since: float | None,
        limit: int | None,
        newest_first: bool,
    ) -> list[AuditEvent]:
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
        found = self.db.query(
            f"SELECT * FROM audit_log {clause} ORDER BY id {order} LIMIT ?", params
        )
        return [rows.audit_event(row) for row in found]
