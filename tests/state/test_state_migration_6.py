"""Schema migration 6 (truthful bookkeeping) upgrades a version-5 store with its history
kept: the revisions tables are rebuilt (a CHECK cannot be altered in SQLite), so ids,
per-service results and the AUTOINCREMENT sequence must survive, and the new results
(no-changes, refused, superseded) must be accepted afterwards."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gitorch.state import RevisionResult, StateStore
from gitorch.state.schema import MIGRATIONS


def test_a_version_5_store_keeps_its_history(state_dir: Path) -> None:
    with StateStore(state_dir, migrations=MIGRATIONS[:5]) as old:
        assert old.schema_version == 5
        first = old.record_revision("a" * 40, author="Ada", services=["web", "api"])
        old.finish_revision(
            first.id,
            RevisionResult.ROLLED_BACK,
            reason="api: deadline",
            service_results={"web": RevisionResult.SUCCEEDED, "api": RevisionResult.ROLLED_BACK},
        )
        second = old.record_revision("b" * 40, services=["web"])
    conn = sqlite3.connect(state_dir / "state.db", isolation_level=None)
    conn.execute(  # what a version-5 gitorch wrote (this code writes the new columns)
        "INSERT INTO backoff (service, slot, restarts, last_restart_at, last_exit_code)"
        " VALUES ('web', 2, 3, 10.0, 1)"
    )
    conn.close()
    with StateStore(state_dir) as store:
        assert store.schema_version == len(MIGRATIONS)
        kept = store.get_revision(first.id)
        assert kept is not None and kept.sha == "a" * 40 and kept.author == "Ada"
        assert kept.result is RevisionResult.ROLLED_BACK and kept.reason == "api: deadline"
        assert dict(kept.service_results) == {
            "web": RevisionResult.SUCCEEDED,
            "api": RevisionResult.ROLLED_BACK,
        }
        assert store.get_revision(second.id) is not None
        third = store.record_revision("c" * 40, result=RevisionResult.NO_CHANGES)
        assert third.id > second.id  # the sequence survived the rebuild
        for result in (RevisionResult.REFUSED, RevisionResult.SUPERSEDED):
            store.finish_revision(second.id, result)
            assert store.get_revision(second.id).result is result  # type: ignore[union-attr]
        assert store.last_applied_revision().sha == "c" * 40  # type: ignore[union-attr]
        (backoff,) = store.list_backoff()
        assert backoff.restarts == 3 and backoff.template is None and backoff.reason == ""
