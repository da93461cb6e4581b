"""Registered nodes and their last observed condition (table ``nodes``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from gitorch.state import rows
from gitorch.state.errors import RecordNotFound
from gitorch.state.records import NodeCondition, NodeRecord

if TYPE_CHECKING:
    from gitorch.state.sqlite.database import Database


class Nodes:
    def __init__(self, db: Database) -> None:
        self.db = db

    def register(
        self, name: str, driver: str, *, endpoint: str, labels: Mapping[str, str] | None
    ) -> NodeRecord:
        with self.db.transaction():
            self.db.execute(
                "INSERT INTO nodes (name, driver, endpoint, labels) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET driver = excluded.driver,"
                " endpoint = excluded.endpoint, labels = excluded.labels",
                (name, driver, endpoint, rows.dump_json(labels)),
            )
            record = self.get(name)
        assert record is not None  # inserted or updated just above
        return record

    def update_condition(
        self, name: str, condition: NodeCondition, *, message: str, seen: bool, at: float | None
    ) -> NodeRecord:
        with self.db.transaction():
            cursor = self.db.execute(
                "UPDATE nodes SET condition = ?, message = ?,"
                " last_seen = CASE WHEN ? THEN ? ELSE last_seen END WHERE name = ?",
                (NodeCondition(condition).value, message, seen, self.db.now(at), name),
            )
            if cursor.rowcount == 0:
                raise RecordNotFound(f"no node named {name!r} is registered")
            record = self.get(name)
        assert record is not None
        return record

    def set_draining(self, name: str, draining: bool) -> NodeRecord:
        with self.db.transaction():
            cursor = self.db.execute(
                "UPDATE nodes SET draining = ? WHERE name = ?", (int(draining), name)
            )
            if cursor.rowcount == 0:
                raise RecordNotFound(f"no node named {name!r} is registered")
            record = self.get(name)
        assert record is not None
        return record

    def get(self, name: str) -> NodeRecord | None:
        row = self.db.query_one("SELECT * FROM nodes WHERE name = ?", (name,))
        return None if row is None else rows.node(row)

    def list(self) -> list[NodeRecord]:
        return [rows.node(row) for row in self.db.query("SELECT * FROM nodes ORDER BY name")]

    def remove(self, name: str) -> bool:
        with self.db.transaction():
            cursor = self.db.execute("DELETE FROM nodes WHERE name = ?", (name,))
        return cursor.rowcount > 0
