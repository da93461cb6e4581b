"""Volume records (schema migration 9): a binding outlives the replicas that used it, a
released volume is bound again when it comes back, and a volume removed by hand stays
recorded as missing (so it is never made again, empty, without the operator saying so)."""

from __future__ import annotations

from pathlib import Path

from gitorch.state import StateStore
from gitorch.state.schema import MIGRATIONS

SPEC = {"kind": "Volume", "metadata": {"name": "data"}, "spec": {"reclaimPolicy": "Retain"}}


def test_a_binding_is_kept_and_tracks_its_volume(store: StateStore) -> None:
    store.bind_volume("data", "node-a", SPEC, at=10.0)
    (record,) = store.list_volumes()
    assert (record.name, record.node, record.bound_at) == ("data", "node-a", 10.0)
    assert not record.created and record.spec == SPEC
    store.volume_created("data", "node-a", at=11.0)
    store.volume_missing("data", "node-a", at=12.0)
    store.volume_missing("data", "node-a", at=13.0)  # the first time it was noticed stays
    (record,) = store.list_volumes()
    assert record.created_at == 11.0 and record.missing_at == 12.0
    store.volume_created("data", "node-a", at=14.0)  # made again (after a reset): found
    assert store.list_volumes()[0].missing_at is None


def test_release_then_bind_again_keeps_the_node(store: StateStore) -> None:
    store.bind_volume("data", "node-a", SPEC, at=1.0)
    store.volume_created("data", "node-a", at=2.0)
    store.release_volume("data", at=3.0)
    assert store.list_volumes()[0].released_at == 3.0
    changed = {**SPEC, "spec": {"reclaimPolicy": "Delete"}}
    store.bind_volume("data", "node-a", changed, at=4.0)
    (record,) = store.list_volumes()
    assert record.released_at is None and record.created_at == 2.0 and record.bound_at == 1.0
    assert record.spec == changed


def test_forget_one_node_or_all(store: StateStore) -> None:
    for node in ("a", "b", "ab"):
        store.bind_volume("shared", node, SPEC)
    store.bind_volume("other", "a", SPEC)
    store.bind_volume("shared-2", "a", SPEC)  # a name that begins like another
    assert store.forget_volume("shared", "a")
    assert not store.forget_volume("shared", "a")
    store.volume_created("shared", "a")  # no record: nothing made up
    assert [(r.name, r.node) for r in store.list_volumes()] == [
        ("other", "a"),
        ("shared", "ab"),
        ("shared", "b"),
        ("shared-2", "a"),
    ]
    store.release_volume("shared", at=5.0)
    assert [r.released_at for r in store.list_volumes()] == [None, 5.0, 5.0, None]
    assert store.forget_volume("shared")
    assert not store.forget_volume("shared")
    assert [r.name for r in store.list_volumes()] == ["other", "shared-2"]


def test_a_version_8_store_gets_the_volumes_table(state_dir: Path) -> None:
    with StateStore(state_dir, migrations=MIGRATIONS[:8]) as old:
        assert old.schema_version == 8
        old.record_revision("a" * 40, services=["web"])
    with StateStore(state_dir, migrations=MIGRATIONS[:9]) as store:
        assert store.schema_version == 9
        assert store.list_volumes() == []
        assert [r.sha for r in store.list_revisions()] == ["a" * 40]
        store.bind_volume("data", "n", SPEC)
        assert len(store.list_volumes()) == 1
