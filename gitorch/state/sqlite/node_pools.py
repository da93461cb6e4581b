"""The nodes each NodePool made, and what its decisions remember (table ``node_pools``)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from gitorch.state import rows
from gitorch.state.records import NodePoolRecord

if TYPE_CHECKING:
    from gitorch.state.sqlite.database import Database


class NodePools:
    def __init__(self, db: Database) -> None:
        self.db = db

    def save(self, record: NodePoolRecord) -> None:
        with self.db.transaction():
            self.db.execute(
                "INSERT INTO node_pools (pool, nodes, pending_since, last, error, updated_at,"
                " provider) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (pool) DO UPDATE SET nodes = excluded.nodes,"
                " pending_since = excluded.pending_since, last = excluded.last,"
                " error = excluded.error, updated_at = excluded.updated_at,"
                " provider = excluded.provider",
                (
                    record.pool,
                    json.dumps([dict(n) for n in record.nodes], sort_keys=True),
                    record.pending_since,
                    rows.dump_json(record.last),
                    record.error,
                    record.updated_at,
                    rows.dump_json(record.provider),
                ),
            )

    def get(self, pool: str) -> NodePoolRecord | None:
        row = self.db.query_one("SELECT * FROM node_pools WHERE pool = ?", (pool,))
        return None if row is None else rows.node_pool(row)

    def list(self) -> list[NodePoolRecord]:
        return [rows.node_pool(r) for r in self.db.query("SELECT * FROM node_pools ORDER BY pool")]

    def forget(self, pool: str) -> bool:
        with self.db.transaction():
            done = self.db.execute("DELETE FROM node_pools WHERE pool = ?", (pool,))
        return done.rowcount > 0
