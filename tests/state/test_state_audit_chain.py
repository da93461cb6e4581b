"""The audit log's hash chain on both backends: every edit, removal and reordering someone
with write access can make (the sqlite3 shell on the file, any etcd client on the
namespace) is named by verify; concurrent writers keep one chain; a store from before the
chain is sealed."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from audit_tamper_helpers import Tamper, tamper_for
from etcd_helpers import EtcdCluster, new_namespace

from gitorch.state import StateStore
from gitorch.state.audit_chain import GENESIS, ChainEntry, link, verify
from gitorch.state.schema import MIGRATIONS


def fill(store: StateStore, count: int = 6) -> None:
    for i in range(count):
        store.append_event(
            f"test.{i}", f"entry {i}", service="web", data={"n": i}, actor=f"user:u{i}@host"
        )


@pytest.fixture
def tamper(location: str) -> Tamper:
    return tamper_for(location)


def problems(location: str, **kwargs: object) -> list[str]:
    with StateStore(location, readonly=True) as reader:
        entries, highest = reader.audit_chain()
    verdict = verify(entries, highest_id=highest, **kwargs)  # type: ignore[arg-type]
    return [p.message for p in verdict.problems]


def test_an_untouched_log_is_intact(store: StateStore, tamper: Tamper) -> None:
    fill(store)
    entries, highest = store.audit_chain()
    verdict = verify(entries, highest_id=highest)
    assert verdict.intact and verdict.entries == 6 and verdict.unchained == 0
    assert entries[0].prev_hash == GENESIS
    assert [e.prev_hash for e in entries[1:]] == [e.hash for e in entries[:-1]]
    assert verdict.head is not None and verdict.head.id == entries[-1].id
    # The stored hash is what the documented formula gives, from the entry's own fields.
    row = tamper.raw(3)
    fields = {k: row[k] for k in ("at", "kind", "actor", "service", "revision", "message")}
    fields["data"] = row["data"]
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert hashlib.sha256(f"{row['prev_hash']}\n{text}".encode()).hexdigest() == row["hash"]
    assert store.list_events(limit=1)[0].actor == "user:u5@host"


def test_an_edited_entry_is_named(store: StateStore, tamper: Tamper, location: str) -> None:
    fill(store)
    tamper.edit(3, message="nothing happened")
    assert problems(location) == ["#3 was edited: its content does not match its hash"]


def test_an_edited_actor_or_time_is_named(store: StateStore, tamper: Tamper, location: str) -> None:
    fill(store)
    tamper.edit(2, actor="user:someone-else@host")
    tamper.edit(5, at=tamper.raw(5)["at"] - 3600)
    assert problems(location) == [
        "#2 was edited: its content does not match its hash",
        "#5 was edited: its content does not match its hash",
    ]


def test_an_edit_with_its_hash_recomputed_breaks_the_next_link(
    store: StateStore, tamper: Tamper, location: str
) -> None:
    fill(store)
    with StateStore(location, readonly=True) as reader:
        entries, _ = reader.audit_chain()
    forged = ChainEntry(**{**entries[2].__dict__, "message": "forged"})
    tamper.edit(3, message="forged", hash=link(forged.prev_hash or "", forged))
    assert problems(location) == [
        "#4 does not follow #3: an entry between them was removed, or #3 was rewritten"
    ]


def test_a_removed_entry_is_named(store: StateStore, tamper: Tamper, location: str) -> None:
    fill(store)
    tamper.delete(4)
    assert problems(location) == [
        "#5 does not follow #3: an entry between them was removed, or #3 was rewritten"
    ]


def test_removed_newest_entries_are_named(store: StateStore, tamper: Tamper, location: str) -> None:
    fill(store)
    tamper.delete(5, 6)
    assert problems(location) == [
        "the newest 2 entries after #4 were removed (the log had reached #6)"
    ]
    tamper.delete(1, 2, 3, 4)
    assert problems(location) == ["every entry was removed (the log had reached #6)"]


def test_reordered_entries_are_named(store: StateStore, tamper: Tamper, location: str) -> None:
    fill(store)
    tamper.swap(3, 4)
    found = problems(location)
    assert found[0] == (
        "#3 was moved: in the chain it follows #4, here it comes after #2 (entries reordered)"
    )
    assert "#4 was moved: in the chain it follows #2, here it comes after #3" in found[1]
    assert not any("edited" in p for p in found)


def test_a_rewritten_chain_is_caught_by_a_head_kept_elsewhere(
    store: StateStore, tamper: Tamper, location: str
) -> None:
    fill(store)
    with StateStore(location, readonly=True) as reader:
        entries, _ = reader.audit_chain()
    kept = {entries[-1].id: entries[-1].hash or ""}
    # Rewrite #2 and re-link everything after it, as someone who read the docs would.
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
        tamper.edit(entry.id, message=changed.message, prev_hash=changed.prev_hash, hash=prev)
    assert problems(location) == []  # the chain alone cannot tell
    found = problems(location, expected=kept)
    assert len(found) == 1 and found[0].startswith(f"#{entries[-1].id} is not the entry")


def test_an_entry_inserted_around_the_chain_is_named(
    store: StateStore, tamper: Tamper, location: str
) -> None:
    fill(store, 3)
    tamper.insert_unchained("forged", "by hand")
    store.append_event("test.after", "after the forged one")
    assert problems(location) == ["#4 carries no hash: it was written around the chain"]


def test_a_store_from_before_the_chain_is_sealed(state_dir: Path) -> None:
    """SQLite: a file written before migration 10."""
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
    tamper_for(str(state_dir)).edit(1, message="changed")
    assert problems(str(state_dir)) == [
        "the 2 entries written before the chain began (up to #2) were changed: "
        "their seal does not match"
    ]


def test_an_etcd_namespace_from_before_the_chain_is_sealed(etcd_cluster: EtcdCluster) -> None:
    """etcd: entries without links (as the etcd backend wrote them before the chain)."""
    url = etcd_cluster.url(new_namespace())
    tamper = tamper_for(url)
    with StateStore(url) as store:
        tamper.insert_unchained("old.one", "written by an older gitorch")
        tamper.insert_unchained("old.two", "also")
        store.append_event("new.one", "the first chained entry")
        store.append_event("new.two", "the second")
        entries, highest = store.audit_chain()
    verdict = verify(entries, highest_id=highest)
    assert verdict.intact and verdict.unchained == 2 and verdict.entries == 4, verdict
    assert [e.hash is None for e in entries] == [True, True, False, False]
    tamper.edit(1, message="changed")
    assert problems(url) == [
        "the 2 entries written before the chain began (up to #2) were changed: "
        "their seal does not match"
    ]


def test_concurrent_writers_keep_one_chain(
    location: str, tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    StateStore(location).close()
    go = tmp_path / "go"
    racers = [spawn("append", location, name, "150", str(go)) for name in ("a", "b", "c")]
    for racer in racers:
        assert racer.stdout is not None and racer.stdout.readline().strip() == "ready"
    go.touch()
    for racer in racers:
        out, err = racer.communicate(timeout=120)
        assert racer.returncode == 0, err
    with StateStore(location, readonly=True) as reader:
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
