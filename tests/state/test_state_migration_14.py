"""Schema migration 14 (back-off per slot and template) upgrades a version-13 store with
its crash-loop records kept: the table is rebuilt with the template in its key, so a
record without a template (the service's own failure, or one written before) survives
as one of any template, and a slot takes a second template's record beside the first."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gitorch.state import BackoffRecord, StateStore
from gitorch.state.schema import MIGRATIONS


def test_a_version_13_store_keeps_its_backoff_and_takes_a_record_per_template(
    state_dir: Path,
) -> None:
    own = BackoffRecord("web", 0, 2, 5.0, None, reason="port 8000 taken")
    canary = BackoffRecord("web", 1, 3, 9.0, 1, template="v2", replica_id="b", reason="exit 1")
    with StateStore(state_dir, migrations=MIGRATIONS[:13]) as old:
        assert old.schema_version == 13
    # Written as a version-13 gitorch wrote them (its key had no template).
    conn = sqlite3.connect(state_dir / "state.db", isolation_level=None)
    conn.execute(
        "INSERT INTO backoff (service, slot, restarts, last_restart_at, reason)"
        " VALUES ('web', 0, 2, 5.0, 'port 8000 taken')"
    )
    conn.execute(
        "INSERT INTO backoff (service, slot, restarts, last_restart_at, last_exit_code,"
        " template, replica_id, reason) VALUES ('web', 1, 3, 9.0, 1, 'v2', 'b', 'exit 1')"
    )
    with pytest.raises(sqlite3.IntegrityError):  # what this migration is for
        conn.execute(
            "INSERT INTO backoff (service, slot, restarts, last_restart_at, template)"
            " VALUES ('web', 1, 1, 7.0, 'v1')"
        )
    conn.close()
    stable = BackoffRecord("web", 1, 1, 7.0, 137, template="v1", reason="OOMKilled")

    with StateStore(state_dir, migrations=MIGRATIONS[:14]) as store:
        assert store.schema_version == 14
        assert store.list_backoff() == [own, canary]
        store.record_backoff(stable)
        assert store.list_backoff() == [own, stable, canary]
        store.clear_backoff("web", 1, "v2")
        assert store.list_backoff() == [own, stable]
