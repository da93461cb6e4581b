"""The audit log is append-only in the database itself, whoever connects."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gitorch.state import StateStore


def test_audit_rows_cannot_be_updated_or_deleted(sqlite_store: StateStore, state_dir: Path) -> None:
    store = sqlite_store
    event = store.append_event("revision.applied", "the original text", service="web")
    conn = sqlite3.connect(state_dir / "state.db", isolation_level=None)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE audit_log SET message = 'rewritten' WHERE id = ?", (event.id,))
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM audit_log WHERE id = ?", (event.id,))
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM audit_log")
        # Inserting (appending) stays possible.
        conn.execute(
            "INSERT INTO audit_log (at, kind, message) VALUES (0, 'manual', 'appended by hand')"
        )
    finally:
        conn.close()
    assert [e.message for e in store.list_events(newest_first=False)] == [
        "the original text",
        "appended by hand",
    ]


def test_store_offers_no_way_to_rewrite_history() -> None:
    public = {name for name in dir(StateStore) if not name.startswith("_")}
    assert not {n for n in public if "event" in n} - {"append_event", "list_events"}
