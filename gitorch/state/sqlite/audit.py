"""The append-only history/audit log (table ``audit_log``; triggers refuse updates and
deletes in the database itself)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gitorch.state import rows
from gitorch.state.records import AuditEvent

if TYPE_CHECKING:
    from gitorch.state.sqlite.backend import SqliteBackend


class Audit:
    def __init__(self, db: SqliteBackend) -> None:
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
    ) -> AuditEvent:
        event_at = self.db.now(at)
        with self.db.transaction():
            cursor = self.db.execute(
                "INSERT INTO audit_log (at, kind, service, revision, message, data)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (event_at, kind, service, revision, message, rows.dump_json(data)),
            )
        assert cursor.lastrowid is not None
        return AuditEvent(
            id=cursor.lastrowid,
            at=event_at,
            kind=kind,
            message=message,
            service=service,
            revision=revision,
            data=dict(data or {}),
        )

    def list(
        self,
        *,
        service: str | None,
        kind: str | None,
        after_id: int | None,
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
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        order = "DESC" if newest_first else "ASC"
        params.append(-1 if limit is None else limit)
        found = self.db.query(
            f"SELECT * FROM audit_log {clause} ORDER BY id {order} LIMIT ?", params
        )
        return [rows.audit_event(row) for row in found]
