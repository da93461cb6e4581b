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
        # (kind, name) -> (the stored JSON text, its decoded value). A pass reads the
        # whole inventory several times (observe, the records of Nodes and Volumes,
        # status): decoding 2,000 Services' specs each time was ~0.1 s of every read.
        # Comparing the stored text is a memcmp; a changed row is decoded again. The
        # decoded value is shared between readers, who never change it.
        self._decoded: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}

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
        decoded: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
        known = self._decoded
        out = []
        for r in found:
            key, text = (r["kind"], r["name"]), r["spec"]
            cached = known.get(key)
            if cached is None or cached[0] != text:
                cached = (text, rows.load_json(text))
            decoded[key] = cached
            out.append(
                AppliedObject(
                    key[0], key[1], r["revision"], r["digest"], cached[1], r["applied_at"]
                )
            )
        self._decoded = decoded  # forgotten rows leave the cache
        return out
