"""Schema migration 13 (invalid commits in history) upgrades a version-12 store with its
history kept: the revisions tables are rebuilt again (a CHECK cannot be altered in
SQLite), so ids, triggers, per-service results and the AUTOINCREMENT sequence must
survive, and "invalid", refused by the old CHECK, must be accepted afterwards."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gitorch.state import RevisionResult, StateStore
from gitorch.state.schema import MIGRATIONS


def test_a_version_12_store_keeps_its_history_and_takes_invalid_entries(
    state_dir: Path,
) -> None:
    with StateStore(state_dir, migrations=MIGRATIONS[:12]) as old:
        assert old.schema_version == 12
        first = old.record_revision(
            "a" * 40, author="Ada", services=["web", "api"], trigger="webhook push"
        )
        old.finish_revision(
            first.id,
            RevisionResult.ROLLED_BACK,
            reason="api: deadline",
            service_results={"web": RevisionResult.SUCCEEDED},
        )
        second = old.record_revision("b" * 40, result=RevisionResult.REFUSED, reason="guard")
    conn = sqlite3.connect(state_dir / "state.db", isolation_level=None)
    with pytest.raises(sqlite3.IntegrityError):  # what this migration is for
        conn.execute("INSERT INTO revisions (sha, applied_at, result) VALUES ('c', 1.0, 'invalid')")
    conn.close()

    with StateStore(state_dir, migrations=MIGRATIONS[:13]) as store:
        assert store.schema_version == 13
        kept = store.get_revision(first.id)
        assert kept is not None and kept.author == "Ada" and kept.trigger == "webhook push"
        assert kept.result is RevisionResult.ROLLED_BACK and kept.reason == "api: deadline"
        assert dict(kept.service_results) == {
            "web": RevisionResult.SUCCEEDED,
            "api": RevisionResult.ROLLED_BACK,
        }
        refused = store.get_revision(second.id)
        assert refused is not None and refused.result is RevisionResult.REFUSED
        invalid = store.record_revision(
            "c" * 40, result=RevisionResult.INVALID, reason="api.yaml:3:1: bad"
        )
        assert invalid.id > second.id  # the sequence survived the rebuild
        assert store.last_attempted_revision().result is RevisionResult.INVALID  # type: ignore[union-attr]
        assert store.last_admitted_revision().sha == "a" * 40  # type: ignore[union-attr]
        # The per-service index and the cascade still hold on the rebuilt tables.
        assert [r.sha for r in store.list_revisions(service="api")] == ["a" * 40]
