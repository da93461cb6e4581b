"""What triggered a revision (the migration that adds ``revisions.trigger``): stored, read
back by every revision query, and empty for revisions recorded before the column existed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gitorch.state import RevisionResult, StateStore
from gitorch.state.schema import MIGRATIONS

SHA = "ab" * 20
#: The number of the migration that adds the column (found by what it says, so that
#: migrations appended elsewhere before it do not break this test).
TRIGGER_MIGRATION = next(
    number for number, m in enumerate(MIGRATIONS) if "what triggered" in m.description
)


def test_the_trigger_round_trips_through_every_query(store: StateStore) -> None:
    record = store.record_revision(SHA, services=["web"], trigger="webhook push refs/heads/main")
    assert record.trigger == "webhook push refs/heads/main"
    store.finish_revision(record.id, RevisionResult.SUCCEEDED)
    read = (
        store.list_revisions()[0],
        store.last_attempted_revision(),
        store.last_successful_revision("web"),
        store.last_successful_revisions()["web"],
    )
    assert {r.trigger for r in read if r is not None} == {"webhook push refs/heads/main"}
    assert store.list_revisions()[0].to_json()["trigger"] == "webhook push refs/heads/main"


def test_revisions_of_an_older_store_have_an_empty_trigger(state_dir: Path) -> None:
    with StateStore(state_dir, migrations=MIGRATIONS[:TRIGGER_MIGRATION]) as old:
        assert old.schema_version == TRIGGER_MIGRATION
    conn = sqlite3.connect(state_dir / "state.db", isolation_level=None)
    conn.execute(
        "INSERT INTO revisions (sha, author, committed_at, signer, applied_at, result, reason,"
        " summary) VALUES (?, 'a', NULL, NULL, 1.0, 'succeeded', '', '{}')",
        (SHA,),
    )
    conn.close()
    with StateStore(state_dir) as store:
        (kept,) = store.list_revisions()
        assert (kept.sha, kept.trigger, kept.to_json()["trigger"]) == (SHA, "", "")
