"""Schema creation, migrations, version refusal, and unreadable files."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gitorch.errors import StateCorrupt, StateError
from gitorch.state import SCHEMA_VERSION, StateReadOnly, StateStore
from gitorch.state.schema import MIGRATIONS, Migration, migrate

Spawn = Callable[..., subprocess.Popen[str]]

TABLES = {
    "revisions",
    "revision_services",
    "rollouts",
    "port_allocations",
    "nodes",
    "measurements",
    "audit_log",
    "inventory",
    "backoff",
    "analysis_runs",
    "traffic_snapshots",
    "volumes",
    "autoscalers",
    "node_pools",
}


def raw(state_dir: Path) -> sqlite3.Connection:
    return sqlite3.connect(state_dir / "state.db", isolation_level=None)


def table_names(conn: sqlite3.Connection) -> set[str]:
    found = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in found} - {"sqlite_sequence"}


def test_new_store_creates_every_table_in_wal_mode(state_dir: Path) -> None:
    with StateStore(state_dir) as store:
        assert store.schema_version == SCHEMA_VERSION == len(MIGRATIONS)
    assert (state_dir / "state.db").is_file()
    assert state_dir.stat().st_mode & 0o077 == 0  # private: specs hold env values
    conn = raw(state_dir)
    assert table_names(conn) == TABLES
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_processes_creating_the_same_new_store_at_once_all_succeed(
    state_dir: Path, tmp_path: Path, spawn: Spawn
) -> None:
    go = tmp_path / "go"
    openers = [spawn("open", str(state_dir), str(go)) for _ in range(3)]
    time.sleep(0.2)  # let the interpreters start, so they race on creation itself
    go.touch()
    for proc in openers:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert out.strip() == str(SCHEMA_VERSION)
    with StateStore(state_dir) as store:
        assert len(store.list_events()) == 3
    conn = raw(state_dir)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_reopen_is_idempotent_and_keeps_data(state_dir: Path) -> None:
    with StateStore(state_dir) as store:
        store.record_revision("1" * 40, services=["web"])
    for _ in range(2):
        with StateStore(state_dir) as store:
            assert store.schema_version == SCHEMA_VERSION
            assert [r.sha for r in store.list_revisions()] == ["1" * 40]
    conn = raw(state_dir)
    assert migrate(conn, state_dir / "state.db") == (SCHEMA_VERSION, SCHEMA_VERSION)
    conn.close()


def test_pending_migrations_are_applied_in_order_from_an_older_version(state_dir: Path) -> None:
    extra = Migration(
        "test: a later step",
        ("CREATE TABLE later (x INTEGER)", "INSERT INTO later VALUES (42)"),
    )
    with StateStore(state_dir) as store:
        store.append_event("k", "kept across the upgrade")
    with StateStore(state_dir, migrations=(*MIGRATIONS, extra)) as store:
        assert store.schema_version == SCHEMA_VERSION + 1
        assert [e.message for e in store.list_events()] == ["kept across the upgrade"]
    conn = raw(state_dir)
    assert conn.execute("SELECT x FROM later").fetchall() == [(42,)]
    conn.close()


def test_a_failing_migration_changes_nothing(state_dir: Path) -> None:
    StateStore(state_dir).close()
    broken = Migration(
        "test: fails at its second statement",
        ("CREATE TABLE half_done (x INTEGER)", "THIS IS NOT SQL"),
    )
    with pytest.raises(StateError, match="syntax error"):
        StateStore(state_dir, migrations=(*MIGRATIONS, broken))
    conn = raw(state_dir)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert "half_done" not in table_names(conn)
    conn.close()


def test_a_store_from_a_newer_gitorch_is_refused(state_dir: Path) -> None:
    StateStore(state_dir).close()
    conn = raw(state_dir)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    conn.close()
    for readonly in (False, True):
        with pytest.raises(StateCorrupt) as caught:
            StateStore(state_dir, readonly=readonly)
        assert f"schema version {SCHEMA_VERSION + 5}" in str(caught.value)
        assert f"up to {SCHEMA_VERSION}" in str(caught.value)
    conn = raw(state_dir)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 5
    conn.close()


def test_a_file_that_is_not_a_database_is_reported_as_corrupt(state_dir: Path) -> None:
    state_dir.mkdir()
    (state_dir / "state.db").write_bytes(b"these are not the bytes of a SQLite file\n" * 50)
    for readonly in (False, True):
        with pytest.raises(StateCorrupt) as caught:
            StateStore(state_dir, readonly=readonly)
        assert "state.db cannot be read (file is not a database)" in str(caught.value)
        assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)


def test_readonly_open_creates_nothing_and_refuses_writes(state_dir: Path) -> None:
    with pytest.raises(StateError, match="no state store"):
        StateStore(state_dir, readonly=True)
    assert not state_dir.exists()

    with StateStore(state_dir) as store:
        store.append_event("k", "written by the daemon")
    with StateStore(state_dir, readonly=True) as reader:
        assert [e.message for e in reader.list_events()] == ["written by the daemon"]
        with pytest.raises(StateReadOnly):
            reader.append_event("k", "must not be written")
    with StateStore(state_dir) as store:
        assert len(store.list_events()) == 1


def test_readonly_open_of_an_older_schema_asks_for_a_migration(state_dir: Path) -> None:
    StateStore(state_dir).close()
    extra = Migration("test: newer code", ("CREATE TABLE later (x INTEGER)",))
    with pytest.raises(StateError, match="needs") as caught:
        StateStore(state_dir, readonly=True, migrations=(*MIGRATIONS, extra))
    assert not isinstance(caught.value, StateCorrupt)


def test_an_unopenable_database_path_is_a_state_error(state_dir: Path) -> None:
    (state_dir / "state.db").mkdir(parents=True)  # a directory where the file should be
    with pytest.raises(StateError, match="cannot open the state store") as caught:
        StateStore(state_dir)
    assert isinstance(caught.value.__cause__, sqlite3.Error)


def test_migration_4_keeps_older_measurements_and_adds_analysis_runs(state_dir: Path) -> None:
    # A store as the released gitorch (schema 3) left it, with a measurement in it.
    with StateStore(state_dir, migrations=MIGRATIONS[:3]) as old:
        assert old.schema_version == 3
        old.backend.conn().execute(
            "INSERT INTO measurements (service, revision, analysis, taken_at, phase)"
            " VALUES ('web', 'sha', 'step-1', 1.0, 'failed')"
        )
    assert "analysis_runs" not in table_names(raw(state_dir))
    with StateStore(state_dir, migrations=MIGRATIONS[:4]) as store:
        assert store.schema_version == 4
        (kept,) = store.list_measurements("web")
        assert (kept.analysis, kept.phase.value, kept.run_id) == ("step-1", "failed", None)
        run = store.open_analysis_run("web", "sha", "step-1", 5.0, at=6.0)
        store.add_measurement("web", "sha", kept.phase, analysis="step-1", run_id=run.id)
        assert [m.run_id for m in store.list_measurements("web")] == [None, run.id]
    conn = raw(state_dir)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(measurements)")}
    assert "run_id" in columns
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    conn.close()
