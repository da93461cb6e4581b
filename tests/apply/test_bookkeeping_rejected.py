"""Rejected commits (invalid manifests, refused by a policy) in the history: one entry per
commit and result however often a daemon meets it, and never the revision in progress."""

from __future__ import annotations

from pathlib import Path

from gitorch.apply.bookkeeping import Bookkeeper, CommitMeta
from gitorch.decide.backoff import DEFAULT_CRASH_LOOP
from gitorch.state import RevisionResult, StateStore

GOOD, BAD = "a" * 40, "b" * 40


def commit(sha: str) -> CommitMeta:
    return CommitMeta(sha=sha, author="Ada <ada@example.com>", message="change", trigger="poll")


def test_an_invalid_commit_is_one_entry_with_its_first_problem(tmp_path: Path) -> None:
    with StateStore(tmp_path / "state") as store:
        books = Bookkeeper(store, DEFAULT_CRASH_LOOP)
        applying = store.record_revision(GOOD, services=["api"])
        problems = ["api.yaml:3:1: duplicate key 'replicas'", "web.yaml:9:5: bad port"]
        books.record_invalid(BAD, commit(BAD), problems)
        # The revision it runs on gets entries of its own since (a recovery, a restart)...
        store.finish_revision(applying.id, RevisionResult.FAILED, reason="api: not ready")
        store.record_revision(GOOD, result=RevisionResult.SUCCEEDED, trigger="recovered")
        # ...and a restarted daemon, or a new leader, meets the invalid head again.
        books.record_invalid(BAD, commit(BAD), problems)
        rejected = [r for r in store.list_revisions() if r.sha == BAD]
        assert [r.result for r in rejected] == [RevisionResult.INVALID]
        assert rejected[0].reason == "api.yaml:3:1: duplicate key 'replicas' (and 1 more)"
        assert rejected[0].author == "Ada <ada@example.com>" and rejected[0].trigger == "poll"
        (event,) = store.list_events(kind="revision.invalid")
        assert event.revision == BAD and event.data == {"diagnostics": problems}
        assert event.actor == "author:Ada <ada@example.com>"
        # The same commit refused by a policy is a different verdict: its own entry.
        books.record_refused(BAD, commit(BAD), "unsigned")
        assert [r.result for r in store.list_revisions() if r.sha == BAD] == [
            RevisionResult.REFUSED,
            RevisionResult.INVALID,
        ]
        admitted = store.last_admitted_revision()
        assert admitted is not None and admitted.sha == GOOD
