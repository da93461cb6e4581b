"""Crash-loop back-off per replica slot and template (table ``backoff``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gitorch.state.records import BackoffRecord

if TYPE_CHECKING:
    from gitorch.state.sqlite.database import Database


class Backoff:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, record: BackoffRecord) -> None:
        with self.db.transaction():
            self.db.execute(
                "INSERT INTO backoff (service, slot, template, restarts, last_restart_at,"
                " last_exit_code, replica_id, reason)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (service, slot, template)"
                " DO UPDATE SET restarts = excluded.restarts,"
                " last_restart_at = excluded.last_restart_at,"
                " last_exit_code = excluded.last_exit_code,"
                " replica_id = excluded.replica_id, reason = excluded.reason",
                (
                    *record.key,
                    record.restarts,
                    record.last_restart_at,
                    record.last_exit_code,
                    record.replica_id,
                    record.reason,
                ),
            )

    def clear(self, service: str, slot: int | None, template: str | None = None) -> None:
        with self.db.transaction():
            if slot is None:
                self.db.execute("DELETE FROM backoff WHERE service = ?", (service,))
            elif template is None:
                self.db.execute(
                    "DELETE FROM backoff WHERE service = ? AND slot = ?", (service, slot)
                )
            else:
                self.db.execute(
                    "DELETE FROM backoff WHERE service = ? AND slot = ? AND template = ?",
                    (service, slot, template),
                )

    def list(self) -> list[BackoffRecord]:
        return [
            BackoffRecord(
                r["service"],
                r["slot"],
                r["restarts"],
                r["last_restart_at"],
                r["last_exit_code"],
                template=r["template"] or None,
                replica_id=r["replica_id"],
                reason=r["reason"],
            )
            for r in self.db.query("SELECT * FROM backoff ORDER BY service, slot, template")
        ]
