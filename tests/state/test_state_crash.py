"""A process that dies inside a transaction leaves either all of its writes or none."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

from gitorch.state import StateStore

Spawn = Callable[..., subprocess.Popen[str]]


def assert_consistent(location: str) -> None:
    """SQLite's own integrity check (an etcd transaction is never half-applied by design)."""
    if location.startswith("etcd://"):
        return
    conn = sqlite3.connect(Path(location) / "state.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def test_exit_between_two_writes_keeps_neither(location: str, spawn: Spawn) -> None:
    proc = spawn("crash", location, "exit-midway")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err
    assert_consistent(location)
    with StateStore(location) as store:
        assert store.list_revisions() == []
        assert store.list_events() == []
        store.append_event("k", "the store is writable again")  # no stale write lock


def test_exit_right_after_commit_keeps_both(location: str, spawn: Spawn) -> None:
    proc = spawn("crash", location, "exit-after-commit")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err
    assert_consistent(location)
    with StateStore(location) as store:
        assert [r.sha for r in store.list_revisions()] == ["a" * 40]
        assert [e.message for e in store.list_events()] == ["second write"]


def test_sigkill_during_a_transaction_keeps_neither(location: str, spawn: Spawn) -> None:
    proc = spawn("crash", location, "hang-midway")
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "midway"
    # The first write is in the WAL or the page cache, uncommitted, when the process dies.
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert_consistent(location)
    with StateStore(location, busy_timeout=2.0) as store:
        assert store.list_revisions() == []
        assert store.list_events() == []
        rec = store.record_revision("b" * 40, services=["web"])
        assert [r.id for r in store.list_revisions()] == [rec.id]
