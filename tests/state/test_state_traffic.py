"""Traffic snapshots (migration 5): the daemon's latest per-version figures per route."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gitorch.state import StateStore, TrafficSnapshot, VersionTraffic
from gitorch.state.schema import MIGRATIONS


def _snap(service: str, at: float, *versions: VersionTraffic) -> TrafficSnapshot:
    return TrafficSnapshot(
        service, taken_at=at, since=at - 60, data_plane="builtin", versions=versions
    )


V1 = VersionTraffic("aaaaaaaaaaaa", "1" * 40, 80, 2, 300, 3, 1, 2.0, 4.5, 9.0, 2.5)
V2 = VersionTraffic("bbbbbbbbbbbb", None, 20, 1, 100, 0, 0)


def test_replace_and_read_back(store: StateStore) -> None:
    store.replace_traffic([_snap("web", 1000.0, V1, V2), _snap("api", 1000.0)])
    got = store.get_traffic("web")
    assert got == _snap("web", 1000.0, V1, V2)
    assert [s.service for s in store.list_traffic()] == ["api", "web"]
    assert store.get_traffic("nope") is None


def test_replace_drops_routes_not_given(store: StateStore) -> None:
    store.replace_traffic([_snap("web", 1.0, V1), _snap("web.preview", 1.0, V2)])
    store.replace_traffic([_snap("web", 2.0, V1)])
    assert [s.service for s in store.list_traffic()] == ["web"]
    assert store.get_traffic("web").taken_at == 2.0  # type: ignore[union-attr]
    store.replace_traffic([])
    assert store.list_traffic() == []


def test_status_shape_has_shares_success_rate_and_age(store: StateStore) -> None:
    store.replace_traffic([_snap("web", 1000.0, V1, V2)])
    snap = store.get_traffic("web")
    assert snap is not None
    doc = snap.to_json(now=1003.25)
    assert doc["ageSeconds"] == 3.25 and doc["requests"] == 400 and doc["dataPlane"] == "builtin"
    first, second = doc["versions"]  # type: ignore[misc]
    assert first["share"] == 75.0 and second["share"] == 25.0
    assert first["successRate"] == pytest.approx(0.99) and second["successRate"] == 1.0
    assert first["p99Ms"] == 9.0 and second["p99Ms"] is None
    assert first["revision"] == "1" * 40 and second["revision"] is None
    assert (first["weight"], first["errors5xx"], first["openConnections"]) == (80, 3, 1)


def test_readonly_store_reads_snapshots(store: StateStore, location: str) -> None:
    store.replace_traffic([_snap("web", 5.0, V1)])
    with StateStore(location, readonly=True) as reader:
        assert reader.get_traffic("web") == _snap("web", 5.0, V1)


def test_migration_5_upgrades_a_version_4_store(state_dir: Path) -> None:
    """A store written by the previous gitorch (schema 4) gains the table, data kept."""
    with StateStore(state_dir, migrations=MIGRATIONS[:4]) as old:
        assert old.schema_version == 4
        old.append_event("test.kept", "from version 4")
    conn = sqlite3.connect(state_dir / "state.db", isolation_level=None)
    assert "traffic_snapshots" not in {
        row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    conn.close()
    with StateStore(state_dir, migrations=MIGRATIONS[:5]) as store:
        assert store.schema_version == 5
        assert store.list_events()[0].kind == "test.kept"
        store.replace_traffic([_snap("web", 1.0, V1)])
        assert store.get_traffic("web") is not None
