"""Host-port allocations per node (table ``port_allocations``)."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from gitorch.state import rows
from gitorch.state.db import error_for
from gitorch.state.errors import PortUnavailable
from gitorch.state.records import PortAllocation

if TYPE_CHECKING:
    from gitorch.state.sqlite.database import Database


class Ports:
    """Atomic across threads and processes: the check and the insert happen under
    SQLite's write lock, and the primary key (node, host_port) makes a double allocation
    impossible anyway."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def allocate(
        self,
        node: str,
        owner: str,
        *,
        port: int | None,
        port_range: tuple[int, int],
        at: float | None,
    ) -> PortAllocation:
        low, high = port_range
        with self.db.transaction():
            held = self.db.query_one(
                "SELECT * FROM port_allocations WHERE node = ? AND owner = ?", (node, owner)
            )
            if held is not None:
                if port is None or held["host_port"] == port:
                    return rows.port(held)
                raise PortUnavailable(
                    f"{owner} already holds port {held['host_port']} on node {node};"
                    f" release it before asking for {port}"
                )
            if port is None:
                port = self._lowest_free_port(node, low, high)
            else:
                taken = self.db.query_one(
                    "SELECT owner FROM port_allocations WHERE node = ? AND host_port = ?",
                    (node, port),
                )
                if taken is not None:
                    raise PortUnavailable(
                        f"port {port} on node {node} is already allocated to {taken['owner']}"
                    )
            allocated_at = self.db.now(at)
            try:
                self.db.conn().execute(
                    "INSERT INTO port_allocations (node, host_port, owner, allocated_at)"
                    " VALUES (?, ?, ?, ?)",
                    (node, port, owner, allocated_at),
                )
            except sqlite3.IntegrityError as exc:
                raise PortUnavailable(
                    f"port {port} on node {node} is not available: {exc}"
                ) from exc
            except sqlite3.Error as exc:
                raise error_for(exc, self.db.db_path) from exc
        return PortAllocation(node=node, host_port=port, owner=owner, allocated_at=allocated_at)

    def _lowest_free_port(self, node: str, low: int, high: int) -> int:
        used = self.db.query(
            "SELECT host_port FROM port_allocations"
            " WHERE node = ? AND host_port BETWEEN ? AND ? ORDER BY host_port",
            (node, low, high),
        )
        candidate = low
        for row in used:
            if row["host_port"] != candidate:
                break
            candidate += 1
        if candidate > high:
            raise PortUnavailable(f"every port from {low} to {high} on node {node} is allocated")
        return candidate

    def release(self, node: str, host_port: int) -> bool:
        with self.db.transaction():
            cursor = self.db.execute(
                "DELETE FROM port_allocations WHERE node = ? AND host_port = ?", (node, host_port)
            )
        return cursor.rowcount > 0

    def release_owner(self, owner: str) -> int:
        with self.db.transaction():
            cursor = self.db.execute("DELETE FROM port_allocations WHERE owner = ?", (owner,))
        return cursor.rowcount

    def list(self, node: str | None) -> list[PortAllocation]:
        if node is None:
            found = self.db.query("SELECT * FROM port_allocations ORDER BY node, host_port")
        else:
            found = self.db.query(
                "SELECT * FROM port_allocations WHERE node = ? ORDER BY host_port", (node,)
            )
        return [rows.port(row) for row in found]
