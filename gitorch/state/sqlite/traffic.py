"""The latest per-version traffic of each route (table ``traffic_snapshots``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from gitorch.state import rows
from gitorch.state.records import TrafficSnapshot

if TYPE_CHECKING:
    from gitorch.state.sqlite.database import Database


class Traffic:
    def __init__(self, db: Database) -> None:
        self.db = db

    def replace(self, snapshots: Iterable[TrafficSnapshot]) -> None:
        given = list(snapshots)
        with self.db.transaction():
            for snap in given:
                self.db.execute(
                    "INSERT INTO traffic_snapshots (service, taken_at, data) VALUES (?, ?, ?)"
                    " ON CONFLICT (service) DO UPDATE SET taken_at = excluded.taken_at,"
                    " data = excluded.data",
                    (snap.service, snap.taken_at, rows.dump_json(snap.data_json())),
                )
            names = [snap.service for snap in given]
            marks = ",".join("?" * len(names))
            self.db.execute(
                f"DELETE FROM traffic_snapshots WHERE service NOT IN ({marks})"
                if names
                else "DELETE FROM traffic_snapshots",
                names,
            )

    def get(self, service: str) -> TrafficSnapshot | None:
        row = self.db.query_one("SELECT * FROM traffic_snapshots WHERE service = ?", (service,))
        return None if row is None else rows.traffic(row)

    def list(self) -> list[TrafficSnapshot]:
        found = self.db.query("SELECT * FROM traffic_snapshots ORDER BY service")
        return [rows.traffic(row) for row in found]
