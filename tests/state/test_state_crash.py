"""A process that dies inside a transaction leaves either all of its writes or none."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

from gitorch.state import StateStore

Spawn = Callable[..., subprocess.Popen[str]]


def assert_consistent(state_dir: Path) -> None:
    conn = sqlite3.connect(state_dir / "state.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def test_exit_between_two_writes_keeps_neither(state_dir: Path, spawn: Spawn) -> None:
    proc = spawn("crash", str(state_dir), "exit-midway")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err
    assert_consistent(state_dir)
    with StateStore(state_dir) as store:
        assert store.list_revisions() == []
        assert store.list_events() == []
        store.append_event("k", "the store is writable again")  # no stale write lock


def test_exit_right_after_commit_keeps_both(state_dir: Path, spawn: Spawn) -> None:
    proc = spawn("crash", str(state_dir), "exit-after-commit")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err
    assert_consistent(state_dir)
    with StateStore(state_dir) as store:
        assert [r.sha for r in store.list_revisions()] == ["a" * 40]
        assert [e.message for e in store.list_events()] == ["second write"]


def test_sigkill_during_a_transaction_keeps_neither(state_dir: Path, spawn: Spawn) -> None:
    proc = spawn("crash", str(state_dir), "hang-midway")
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "midway"
    # The first write is in the WAL or the page cache, uncommitted, when the process dies.
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert_consistent(state_dir)
    with StateStore(state_dir, busy_timeout=2.0) as store:
        assert store.list_revisions() == []
        assert store.list_events() == []
        rec = store.record_revision("b" * 40, services=["web"])
        assert [r.id for r in store.list_revisions()] == [rec.id]
