"""The inventory: every object gitorch applied, as its canonical form (table ``inventory``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gitorch.state import rows
from gitorch.state.records import AppliedObject

if TYPE_CHECKING:
    from gitorch.state.sqlite.database import Database


class Inventory:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(
        self, kind: str, name: str, revision: str, digest: str, spec: Mapping[str, Any]
    ) -> None:
        with self.db.transaction():
            self.db.execute(
                "INSERT INTO inventory (kind, name, revision, digest, spec, applied_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (kind, name) DO UPDATE SET"
                " revision = excluded.revision, digest = excluded.digest,"
                " spec = excluded.spec, applied_at = excluded.applied_at",
                (kind, name, revision, digest, rows.dump_json(spec), self.db.clock()),
            )

    def forget(self, kind: str, name: str) -> bool:
        with self.db.transaction():
            cursor = self.db.execute(
                "DELETE FROM inventory WHERE kind = ? AND name = ?", (kind, name)
            )
        return cursor.rowcount > 0

    def list(self) -> list[AppliedObject]:
        found = self.db.query(
            "SELECT kind, name, revision, digest, spec, applied_at FROM inventory ORDER BY kind, name"
        )
        return [
            AppliedObject(
                r["kind"],
                r["name"],
                r["revision"],
                r["digest"],
                rows.load_json(r["spec"]),
                r["applied_at"],
            )
            for r in found
        ]
