"""Where each Volume is bound, made, released or lost (table ``volumes``, migration 9)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from gitorch.state import rows
from gitorch.state.records import VolumeRecord

if TYPE_CHECKING:
    from gitorch.state.sqlite.database import Database


class Volumes:
    def __init__(self, db: Database) -> None:
        self.db = db

    def _execute_one(self, sql: str, params: tuple[Any, ...]) -> int:
        """One statement in its own transaction (or the caller's); the rows it changed."""
        with self.db.transaction():
            return self.db.execute(sql, params).rowcount

    def bind(self, name: str, node: str, spec: Mapping[str, Any], *, at: float | None) -> None:
        self._execute_one(
            "INSERT INTO volumes (name, node, spec, bound_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (name, node) DO UPDATE SET spec = excluded.spec, released_at = NULL",
            (name, node, rows.dump_json(spec), self.db.now(at)),
        )

    def created(self, name: str, node: str, *, at: float | None) -> None:
        self._execute_one(
            "UPDATE volumes SET created_at = ?, missing_at = NULL WHERE name = ? AND node = ?",
            (self.db.now(at), name, node),
        )

    def missing(self, name: str, node: str, *, at: float | None) -> None:
        self._execute_one(
            "UPDATE volumes SET missing_at = COALESCE(missing_at, ?) WHERE name = ? AND node = ?",
            (self.db.now(at), name, node),
        )

    def release(self, name: str, *, at: float | None) -> None:
        self._execute_one(
            "UPDATE volumes SET released_at = COALESCE(released_at, ?) WHERE name = ?",
            (self.db.now(at), name),
        )

    def forget(self, name: str, node: str | None) -> bool:
        if node is None:
            return self._execute_one("DELETE FROM volumes WHERE name = ?", (name,)) > 0
        return (
            self._execute_one("DELETE FROM volumes WHERE name = ? AND node = ?", (name, node)) > 0
        )

    def list(self) -> list[VolumeRecord]:
        found = self.db.query("SELECT * FROM volumes ORDER BY name, node")
        return [rows.volume(row) for row in found]

    def restore(self, records: Iterable[VolumeRecord]) -> None:
        with self.db.transaction():
            self.db.conn().executemany(
                "INSERT INTO volumes (name, node, spec, bound_at, created_at, released_at,"
                " missing_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        v.name,
                        v.node,
                        rows.dump_json(v.spec),
                        v.bound_at,
                        v.created_at,
                        v.released_at,
                        v.missing_at,
                    )
                    for v in records
                ],
            )
