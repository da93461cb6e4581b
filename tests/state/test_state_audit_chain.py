"""The audit log's hash chain against a real SQLite file: every edit, removal and
reordering someone with the file (and the sqlite3 shell) can make is named by verify;
concurrent writers keep one chain; a store migrated from before the chain is sealed."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gitorch.state import StateStore
from gitorch.state.audit_chain import GENESIS, ChainEntry, link, verify
from gitorch.state.schema import MIGRATIONS


def fill(store: StateStore, count: int = 6) -> None:
    for i in range(count):
        store.append_event(
            f"test.{i}", f"entry {i}", service="web", data={"n": i}, actor=f"user:u{i}@host"
        )


@contextmanager
def tamper(state_dir: Path) -> Iterator[sqlite3.Connection]:
    """What someone with the file can do: drop the append-only triggers, then edit."""
    conn = sqlite3.connect(state_dir / "state.db", isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
    conn.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")
    try:
        yield conn
    finally:
        conn.close()


def problems(state_dir: Path, **kwargs: object) -> list[str]:
    with StateStore(state_dir, readonly=True) as reader:
        entries, highest = reader.audit_chain()
    verdict = verify(entries, highest_id=highest, **kwargs)  # type: ignore[arg-type]
    return [p.message for p in verdict.problems]


def test_an_untouched_log_is_intact(store: StateStore, state_dir: Path) -> None:
    fill(store)
    entries, highest = store.audit_chain()
    verdict = verify(entries, highest_id=highest)
    assert verdict.intact and verdict.entries == 6 and verdict.unchained == 0
    assert entries[0].prev_hash == GENESIS
    assert [e.prev_hash for e in entries[1:]] == [e.hash for e in entries[:-1]]
    assert verdict.head is not None and verdict.head.id == entries[-1].id
    # The stored hash is what the documented formula gives, from the row's own columns.
    row = (
        sqlite3.connect(state_dir / "state.db")
        .execute(
            "SELECT at, kind, actor, service, revision, message, data, prev_hash, hash"
            " FROM audit_log WHERE id = 3"
        )
        .fetchone()
    )
    fields = dict(
        zip(("at", "kind", "actor", "service", "revision", "message"), row[:6], strict=True)
    )
    fields["data"] = json.loads(row[6])
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert hashlib.sha256(f"{row[7]}\n{text}".encode()).hexdigest() == row[8]
    assert store.list_events(limit=1)[0].actor == "user:u5@host"


def test_an_edited_entry_is_named(store: StateStore, state_dir: Path) -> None:
    fill(store)
    with tamper(state_dir) as conn:
        conn.execute("UPDATE audit_log SET message = 'nothing happened' WHERE id = 3")
    assert problems(state_dir) == ["#3 was edited: its content does not match its hash"]


def test_an_edited_actor_or_time_is_named(store: StateStore, state_dir: Path) -> None:
    fill(store)
    with tamper(state_dir) as conn:
        conn.execute("UPDATE audit_log SET actor = 'user:someone-else@host' WHERE id = 2")
        conn.execute("UPDATE audit_log SET at = at - 3600 WHERE id = 5")
    assert problems(state_dir) == [
        "#2 was edited: its content does not match its hash",
        "#5 was edited: its content does not match its hash",
    ]


def test_an_edit_with_its_hash_recomputed_breaks_the_next_link(
    store: StateStore, state_dir: Path
) -> None:
    fill(store)
    with StateStore(state_dir, readonly=True) as reader:
        entries, _ = reader.audit_chain()
    forged = ChainEntry(**{**entries[2].__dict__, "message": "forged"})
    with tamper(state_dir) as conn:
        conn.execute(
            "UPDATE audit_log SET message = 'forged', hash = ? WHERE id = 3",
            (link(forged.prev_hash or "", forged),),
        )
    assert problems(state_dir) == [
        "#4 does not follow #3: an entry between them was removed, or #3 was rewritten"
    ]


def test_a_removed_entry_is_named(store: StateStore, state_dir: Path) -> None:
    fill(store)
    with tamper(state_dir) as conn:
        conn.execute("DELETE FROM audit_log WHERE id = 4")
    assert problems(state_dir) == [
        "#5 does not follow #3: an entry between them was removed, or #3 was rewritten"
    ]


def test_removed_newest_entries_are_named(store: StateStore, state_dir: Path) -> None:
    fill(store)
    with tamper(state_dir) as conn:
        conn.execute("DELETE FROM audit_log WHERE id >= 5")
    assert problems(state_dir) == [
        "the newest 2 entries after #4 were removed (the log had reached #6)"
    ]
    with tamper(state_dir) as conn:
        conn.execute("DELETE FROM audit_log")
    assert problems(state_dir) == ["every entry was removed (the log had reached #6)"]


def test_reordered_entries_are_named(store: StateStore, state_dir: Path) -> None:
    fill(store)
    with tamper(state_dir) as conn:  # swap #3 and #4, whole rows
        conn.execute("UPDATE audit_log SET id = -3 WHERE id = 3")
        conn.execute("UPDATE audit_log SET id = 3 WHERE id = 4")
        conn.execute("UPDATE audit_log SET id = 4 WHERE id = -3")
    found = problems(state_dir)
    assert found[0] == (
        "#3 was moved: in the chain it follows #4, here it comes after #2 (entries reordered)"
    )
    assert "#4 was moved: in the chain it follows #2, here it comes after #3" in found[1]
    assert not any("edited" in p for p in found)


def test_a_rewritten_chain_is_caught_by_a_head_kept_elsewhere(
    store: StateStore, state_dir: Path
) -> None:
    fill(store)
    with StateStore(state_dir, readonly=True) as reader:
        entries, _ = reader.audit_chain()
    kept = {entries[-1].id: entries[-1].hash or ""}
    # Rewrite #2 and re-link everything after it, as someone who read the docs would.
    with tamper(state_dir) as conn:
        prev = entries[0].hash or ""
        for entry in entries[1:]:
            changed = ChainEntry(
                **{
                    **entry.__dict__,
                    "message": "rewritten" if entry.id == 2 else entry.message,
                    "prev_hash": prev,
                }
            )
            prev = link(prev, changed)
            conn.execute(
                "UPDATE audit_log SET message = ?, prev_hash = ?, hash = ? WHERE id = ?",
                (changed.message, changed.prev_hash, prev, entry.id),
            )
    assert problems(state_dir) == []  # the chain alone cannot tell
    found = problems(state_dir, expected=kept)
    assert len(found) == 1 and found[0].startswith(f"#{entries[-1].id} is not the entry")


def test_an_entry_inserted_around_the_chain_is_named(store: StateStore, state_dir: Path) -> None:
    fill(store, 3)
    conn = sqlite3.connect(state_dir / "state.db", isolation_level=None)
    conn.execute("INSERT INTO audit_log (at, kind, message) VALUES (0, 'forged', 'by hand')")
    conn.close()
    store.append_event("test.after", "after the forged one")
    assert problems(state_dir) == ["#4 carries no hash: it was written around the chain"]


def test_a_store_from_before_the_chain_is_sealed(state_dir: Path) -> None:
    before = len(MIGRATIONS) - 1  # the audit chain's migration is the last
    with StateStore(state_dir, migrations=MIGRATIONS[:before]) as old:
        old.append_event("old.one", "written by an older gitorch")
        old.append_event("old.two", "also")
    with StateStore(state_dir) as store:
        store.append_event("new.one", "the first chained entry")
        entries, highest = store.audit_chain()
        verdict = verify(entries, highest_id=highest)
        assert verdict.intact and verdict.unchained == 2 and verdict.entries == 3
        assert [e.hash is None for e in entries] == [True, True, False]
        assert entries[0].actor == ""  # older entries name no actor
    with tamper(state_dir) as conn:
        conn.execute("UPDATE audit_log SET message = 'changed' WHERE id = 1")
    assert problems(state_dir) == [
        "the 2 entries written before the chain began (up to #2) were changed: "
        "their seal does not match"
    ]


def test_concurrent_writers_keep_one_chain(
    state_dir: Path, tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    StateStore(state_dir).close()
    go = tmp_path / "go"
    racers = [spawn("append", str(state_dir), name, "150", str(go)) for name in ("a", "b", "c")]
    for racer in racers:
        assert racer.stdout is not None and racer.stdout.readline().strip() == "ready"
    go.touch()
    for racer in racers:
        out, err = racer.communicate(timeout=120)
        assert racer.returncode == 0, err
    with StateStore(state_dir, readonly=True) as reader:
        entries, highest = reader.audit_chain()
    assert len(entries) == 450 and highest == 450
    assert verify(entries, highest_id=highest).intact
    # The writers did interleave: the chain is one line through all three.
    authors = [e.actor for e in entries]
    switches = sum(1 for a, b in zip(authors, authors[1:], strict=False) if a != b)
    assert switches > 2


@pytest.mark.parametrize("count", [0, 1])
def test_tiny_logs(store: StateStore, count: int) -> None:
    fill(store, count)
    entries, highest = store.audit_chain()
    verdict = verify(entries, highest_id=highest)
    assert verdict.intact and verdict.entries == count
