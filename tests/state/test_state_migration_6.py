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
    # What a version-5 gitorch wrote, in its own columns (this code writes later ones).
    conn = sqlite3.connect(state_dir / "state.db", isolation_level=None)
    first_id = conn.execute(
        "INSERT INTO revisions (sha, author, applied_at, result, reason)"
        " VALUES (?, 'Ada', 1.0, 'rolled-back', 'api: deadline')",
        ("a" * 40,),
    ).lastrowid
    conn.executemany(
        "INSERT INTO revision_services (revision_id, service, result) VALUES (?, ?, ?)",
        [(first_id, "web", "succeeded"), (first_id, "api", "rolled-back")],
    )
    second_id = conn.execute(
        "INSERT INTO revisions (sha, applied_at, result) VALUES (?, 2.0, 'in-progress')",
        ("b" * 40,),
    ).lastrowid
    conn.execute(
        "INSERT INTO revision_services (revision_id, service, result)"
        " VALUES (?, 'web', 'in-progress')",
        (second_id,),
    )
    conn.execute(
        "INSERT INTO backoff (service, slot, restarts, last_restart_at, last_exit_code)"
        " VALUES ('web', 2, 3, 10.0, 1)"
    )
    conn.close()
    assert first_id is not None and second_id is not None
    with StateStore(state_dir) as store:
        assert store.schema_version == len(MIGRATIONS)
        kept = store.get_revision(first_id)
        assert kept is not None and kept.sha == "a" * 40 and kept.author == "Ada"
        assert kept.result is RevisionResult.ROLLED_BACK and kept.reason == "api: deadline"
        assert dict(kept.service_results) == {
            "web": RevisionResult.SUCCEEDED,
            "api": RevisionResult.ROLLED_BACK,
        }
        assert store.get_revision(second_id) is not None
        third = store.record_revision("c" * 40, result=RevisionResult.NO_CHANGES)
        assert third.id > second_id  # the sequence survived the rebuild
        for result in (RevisionResult.REFUSED, RevisionResult.SUPERSEDED):
            store.finish_revision(second_id, result)
            assert store.get_revision(second_id).result is result  # type: ignore[union-attr]
        assert store.last_applied_revision().sha == "c" * 40  # type: ignore[union-attr]
        (backoff,) = store.list_backoff()
        assert backoff.restarts == 3 and backoff.template is None and backoff.reason == ""
