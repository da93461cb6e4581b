"""The count each autoscaled service runs, and what its windows remember (table
``autoscalers``)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from gitorch.state import rows
from gitorch.state.records import AutoscalerRecord

if TYPE_CHECKING:
    from gitorch.state.sqlite.database import Database


class Autoscalers:
    def __init__(self, db: Database) -> None:
        self.db = db

    def save(self, record: AutoscalerRecord) -> None:
        with self.db.transaction():
            self.db.execute(
                "INSERT INTO autoscalers (service, desired, decided_at, changed_at, reason,"
                " metrics, memory, usage) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (service) DO UPDATE SET desired = excluded.desired,"
                " decided_at = excluded.decided_at, changed_at = excluded.changed_at,"
                " reason = excluded.reason, metrics = excluded.metrics,"
                " memory = excluded.memory, usage = excluded.usage",
                (
                    record.service,
                    record.desired,
                    record.decided_at,
                    record.changed_at,
                    record.reason,
                    json.dumps([dict(m) for m in record.metrics], sort_keys=True),
                    rows.dump_json(record.memory),
                    rows.dump_json(record.usage),
                ),
            )

    def get(self, service: str) -> AutoscalerRecord | None:
        row = self.db.query_one("SELECT * FROM autoscalers WHERE service = ?", (service,))
        return None if row is None else rows.autoscaler(row)

    def list(self) -> list[AutoscalerRecord]:
        return [
            rows.autoscaler(r) for r in self.db.query("SELECT * FROM autoscalers ORDER BY service")
        ]

    def forget(self, service: str) -> bool:
        with self.db.transaction():
            done = self.db.execute("DELETE FROM autoscalers WHERE service = ?", (service,))
        return done.rowcount > 0
