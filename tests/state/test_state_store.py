"""The StateStore API: revisions, rollouts, ports, nodes, measurements, audit, transactions."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gitorch.errors import StateError
from gitorch.state import (
    AutoscalerRecord,
    MeasurementPhase,
    NodeCondition,
    NodePoolRecord,
    PortUnavailable,
    RecordNotFound,
    RevisionResult,
    RolloutPhase,
    RolloutRecord,
    StateStore,
)

SHA_A, SHA_B, SHA_C = "a" * 40, "b" * 40, "c" * 40


def test_revisions_newest_first_filtered_by_service(store: StateStore) -> None:
    first = store.record_revision(
        SHA_A,
        author="Ann <ann@example.org>",
        committed_at="2026-01-02T03:04:05+01:00",
        signer="ann@example.org",
        services=["web", "db"],
        summary={"changes": [{"kind": "Service", "name": "web", "action": "create"}]},
    )
    assert first.result is RevisionResult.IN_PROGRESS
    store.finish_revision(first.id, RevisionResult.SUCCEEDED, reason="converged")
    second = store.record_revision(SHA_B, services=["db"])
    store.finish_revision(second.id, RevisionResult.FAILED, reason="db did not become ready")
    store.record_revision(SHA_C, services=["web"])

    assert [r.sha for r in store.list_revisions()] == [SHA_C, SHA_B, SHA_A]
    assert [r.sha for r in store.list_revisions(service="web")] == [SHA_C, SHA_A]
    assert [r.sha for r in store.list_revisions(service="db")] == [SHA_B, SHA_A]
    assert store.list_revisions(service="nope") == []
    assert [r.sha for r in store.list_revisions(limit=2)] == [SHA_C, SHA_B]
    assert [r.sha for r in store.list_revisions(before_id=second.id)] == [SHA_A]

    got = store.get_revision(first.id)
    assert got is not None
    assert got.author == "Ann <ann@example.org>" and got.signer == "ann@example.org"
    assert got.committed_at == "2026-01-02T03:04:05+01:00"
    assert got.result is RevisionResult.SUCCEEDED and got.reason == "converged"
    assert got.services == ("db", "web")
    assert got.to_json()["changes"] == [{"kind": "Service", "name": "web", "action": "create"}]
    assert got.to_json()["result"] == "succeeded"


def test_last_applied_and_last_successful_per_service(store: StateStore) -> None:
    assert store.last_applied_revision() is None
    assert store.last_successful_revision("web") is None
    one = store.record_revision(SHA_A, services=["web", "db"])
    store.finish_revision(one.id, RevisionResult.SUCCEEDED)
    two = store.record_revision(SHA_B, services=["web", "db"])
    # Partly failed: web made it, db rolled back.
    store.finish_revision(
        two.id,
        RevisionResult.ROLLED_BACK,
        service_results={"web": RevisionResult.SUCCEEDED},
    )
    store.record_revision(SHA_C, services=["web"])  # still in progress

    applied = store.last_applied_revision()
    assert applied is not None and applied.sha == SHA_A
    attempted = store.last_attempted_revision()
    assert attempted is not None and attempted.sha == SHA_C
    # Commits that were not applied are history entries, never the one being applied.
    for result in (RevisionResult.INVALID, RevisionResult.REFUSED):
        store.record_revision("d" * 40, result=result, reason="not applied")
        assert store.last_attempted_revision().result is result  # type: ignore[union-attr]
        admitted = store.last_admitted_revision()
        assert admitted is not None and admitted.sha == SHA_C
    web, db = store.last_successful_revision("web"), store.last_successful_revision("db")
    assert web is not None and web.sha == SHA_B
    assert db is not None and db.sha == SHA_A
    assert dict(two.service_results) == {
        "web": RevisionResult.IN_PROGRESS,
        "db": RevisionResult.IN_PROGRESS,
    }
    by_service = store.last_successful_revisions()
    assert {name: rec.sha for name, rec in by_service.items()} == {"db": SHA_A, "web": SHA_B}
    final_two = store.get_revision(two.id)
    assert final_two is not None
    assert dict(final_two.service_results) == {
        "web": RevisionResult.SUCCEEDED,
        "db": RevisionResult.ROLLED_BACK,
    }


def test_finishing_an_unknown_revision_is_an_error(store: StateStore) -> None:
    with pytest.raises(RecordNotFound, match="42"):
        store.finish_revision(42, RevisionResult.SUCCEEDED)


def test_listing_500_records_is_one_query(store: StateStore) -> None:
    for batch in range(10):  # transactions of 100 writes (etcd takes 128 in one)
        with store.transaction():
            for i in range(batch * 50, batch * 50 + 50):
                rec = store.record_revision(f"{i:040x}", services=["web", f"svc{i % 7}"])
                store.append_event("revision.started", f"applying {i}", revision=rec.sha)
    statements: list[str] = []
    store.set_trace(statements.append)
    started = time.perf_counter()
    revisions = store.list_revisions(limit=None)
    web_only = store.list_revisions(service="svc3", limit=None)
    events = store.list_events(limit=None)
    elapsed = time.perf_counter() - started
    store.set_trace(None)
    assert len(revisions) == 500 and len(events) == 500
    assert len(web_only) == len([i for i in range(500) if i % 7 == 3])
    assert all(r.services == tuple(sorted(("web", f"svc{int(r.sha, 16) % 7}"))) for r in revisions)
    assert len(statements) == 3, statements
    assert elapsed < 1.0  # generous; about 10 ms on the CI machine


def test_rollout_records_round_trip_with_specs(store: StateStore) -> None:
    spec = {"image": "shop/web:1.4.2", "replicas": 3, "env": {"GREETING": "hello"}}
    old_spec = {"image": "shop/web:1.4.1", "replicas": 3}
    assert store.get_rollout("web") is None
    stored = store.upsert_rollout(
        RolloutRecord(
            service="web",
            revision=SHA_B,
            spec_digest="sha256:new",
            strategy="Canary",
            phase=RolloutPhase.PROGRESSING,
            spec=spec,
            step=1,
            weight=10,
            previous_revision=SHA_A,
            previous_digest="sha256:old",
            previous_spec=old_spec,
        )
    )
    assert stored.started_at > 0 and stored.updated_at >= stored.started_at
    assert store.get_rollout("web") == stored
    assert stored.spec == spec and stored.previous_spec == old_spec

    from dataclasses import replace

    paused = store.upsert_rollout(
        replace(stored, phase=RolloutPhase.PAUSED, step=2, weight=50, last_error="analysis")
    )
    assert paused.started_at == stored.started_at
    again = store.get_rollout("web")
    assert again is not None and again.phase is RolloutPhase.PAUSED and again.weight == 50
    store.upsert_rollout(
        RolloutRecord("api", SHA_A, "sha256:x", "RollingUpdate", RolloutPhase.HEALTHY, {})
    )
    assert [r.service for r in store.list_rollouts()] == ["api", "web"]
    with pytest.raises(StateError, match="CHECK constraint|weight"):
        store.upsert_rollout(replace(stored, weight=150))
    assert store.delete_rollout("api") is True
    assert store.delete_rollout("api") is False
    assert [r.service for r in store.list_rollouts()] == ["web"]


def test_ports_are_lowest_free_idempotent_per_owner_and_exclusive(store: StateStore) -> None:
    a = store.allocate_port("n1", "web-1/http", port_range=(40000, 40002))
    b = store.allocate_port("n1", "web-2/http", port_range=(40000, 40002))
    assert (a.host_port, b.host_port) == (40000, 40001)
    assert store.allocate_port("n1", "web-1/http", port_range=(40000, 40002)) == a
    # Another node has its own ports.
    assert store.allocate_port("n2", "web-3/http", port_range=(40000, 40002)).host_port == 40000
    with pytest.raises(PortUnavailable, match="already allocated to web-1/http"):
        store.allocate_port("n1", "db-1/pg", port=40000)
    with pytest.raises(PortUnavailable, match="already holds port 40000"):
        store.allocate_port("n1", "web-1/http", port=40005)
    assert store.allocate_port("n1", "web-3/http", port_range=(40000, 40002)).host_port == 40002
    with pytest.raises(PortUnavailable, match="every port from 40000 to 40002"):
        store.allocate_port("n1", "web-4/http", port_range=(40000, 40002))
    assert store.release_port("n1", 40001) is True
    assert store.release_port("n1", 40001) is False
    # The gap is reused first.
    assert store.allocate_port("n1", "web-4/http", port_range=(40000, 40002)).host_port == 40001
    assert store.release_owner("web-3/http") == 2  # on n1 and n2
    assert [(p.node, p.host_port, p.owner) for p in store.list_ports()] == [
        ("n1", 40000, "web-1/http"),
        ("n1", 40001, "web-4/http"),
    ]
    assert [p.host_port for p in store.list_ports("n2")] == []


def test_nodes_register_observe_and_remove(store: StateStore) -> None:
    node = store.register_node(
        "node-a", "docker", endpoint="unix:///var/run/docker.sock", labels={"zone": "a"}
    )
    assert node.condition is NodeCondition.UNKNOWN and node.last_seen is None
    seen = store.update_node_condition("node-a", NodeCondition.READY, at=1000.0)
    assert seen.last_seen == 1000.0 and seen.condition is NodeCondition.READY
    lost = store.update_node_condition(
        "node-a", NodeCondition.NOT_READY, message="engine did not answer", seen=False, at=2000.0
    )
    assert lost.last_seen == 1000.0 and lost.message == "engine did not answer"
    # Re-registering (labels changed in Git) keeps what was observed.
    again = store.register_node("node-a", "docker", labels={"zone": "b"})
    assert again.labels == {"zone": "b"} and again.condition is NodeCondition.NOT_READY
    store.register_node("node-0", "process")
    assert [n.name for n in store.list_nodes()] == ["node-0", "node-a"]
    with pytest.raises(RecordNotFound):
        store.update_node_condition("ghost", NodeCondition.READY)
    assert store.remove_node("node-0") is True
    assert store.get_node("node-0") is None


def test_measurements_oldest_first_with_filters(store: StateStore) -> None:
    for i, phase in enumerate(
        [MeasurementPhase.SUCCESSFUL, MeasurementPhase.INCONCLUSIVE, MeasurementPhase.FAILED]
    ):
        store.add_measurement(
            "web", SHA_B, phase, analysis="step-2", value={"successRate": 0.9 + i / 100}
        )
    store.add_measurement("web", SHA_A, MeasurementPhase.SUCCESSFUL, analysis="background")
    got = store.list_measurements("web", revision=SHA_B)
    assert [m.phase for m in got] == [
        MeasurementPhase.SUCCESSFUL,
        MeasurementPhase.INCONCLUSIVE,
        MeasurementPhase.FAILED,
    ]
    assert got[2].value == {"successRate": 0.92}
    assert [m.phase for m in store.list_measurements("web", revision=SHA_B, limit=2)] == [
        MeasurementPhase.INCONCLUSIVE,
        MeasurementPhase.FAILED,
    ]
    assert len(store.list_measurements("web", analysis="background")) == 1
    assert store.list_measurements("db") == []


def test_audit_events_filters_and_tailing(store: StateStore) -> None:
    e1 = store.append_event("revision.started", "applying a", revision=SHA_A, data={"n": 1})
    store.append_event("rollout.progressed", "web at 10%", service="web", revision=SHA_A)
    e3 = store.append_event("rollout.rolled-back", "web back to a", service="web")
    assert [e.id for e in store.list_events()] == [e3.id, e3.id - 1, e1.id]
    assert [e.kind for e in store.list_events(service="web", newest_first=False)] == [
        "rollout.progressed",
        "rollout.rolled-back",
    ]
    assert [e.id for e in store.list_events(after_id=e1.id, newest_first=False)] == [
        e1.id + 1,
        e3.id,
    ]
    assert store.list_events(kind="revision.started")[0].data == {"n": 1}
    assert str(store.list_events(kind="revision.started")[0].to_json()["at"]).endswith("+00:00")


def test_transaction_commits_all_or_nothing(store: StateStore) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        store.record_revision(SHA_A, services=["web"])
        store.append_event("revision.started", "applying a")
        store.allocate_port("n1", "web-1/http")
        raise RuntimeError("apply failed midway")
    assert store.list_revisions() == []
    assert store.list_events() == []
    assert store.list_ports() == []

    with store.transaction():
        store.record_revision(SHA_A, services=["web"])
        with pytest.raises(PortUnavailable), store.transaction():
            store.append_event("port.wanted", "inner block rolled back alone")
            store.allocate_port("n1", "web-1/http", port=30000)
            store.allocate_port("n1", "web-2/http", port=30000)
        store.append_event("revision.started", "outer block goes on")
    assert [r.sha for r in store.list_revisions()] == [SHA_A]
    assert [e.message for e in store.list_events()] == ["outer block goes on"]
    assert store.list_ports() == []


def test_closed_store_refuses_use(store: StateStore) -> None:
    store.close()
    with pytest.raises(StateError, match="closed"):
        store.list_events()


def test_inventory_records_replaces_lists_and_forgets(tmp_path: Path) -> None:
    with StateStore(tmp_path) as store:
        store.record_applied("Service", "web", "a" * 40, "d1", {"spec": {"image": "web:1"}})
        store.record_applied("Node", "n1", "a" * 40, "d2", {"spec": {}})
        store.record_applied("Service", "web", "b" * 40, "d3", {"spec": {"image": "web:2"}})
        applied = store.list_applied()
        assert [(a.kind, a.name, a.revision, a.digest) for a in applied] == [
            ("Node", "n1", "a" * 40, "d2"),
            ("Service", "web", "b" * 40, "d3"),
        ]
        assert applied[1].spec == {"spec": {"image": "web:2"}}
        assert store.forget_applied("Service", "web") is True
        assert store.forget_applied("Service", "web") is False
        assert [a.name for a in store.list_applied()] == ["n1"]


def test_backoff_records_round_trip_and_clear(tmp_path: Path) -> None:
    from gitorch.state import BackoffRecord

    with StateStore(tmp_path) as store:
        store.record_backoff(BackoffRecord("web", 1, 1, 10.0, 3))
        store.record_backoff(BackoffRecord("web", 2, 4, 20.0, None))
        store.record_backoff(BackoffRecord("web", 1, 2, 30.0, 137))
        store.record_backoff(BackoffRecord("api", 1, 1, 5.0, 1))
        assert store.list_backoff() == [
            BackoffRecord("api", 1, 1, 5.0, 1),
            BackoffRecord("web", 1, 2, 30.0, 137),
            BackoffRecord("web", 2, 4, 20.0, None),
        ]
        store.clear_backoff("web", 1)
        assert [(b.service, b.slot) for b in store.list_backoff()] == [("api", 1), ("web", 2)]
        store.clear_backoff("web")
        assert [(b.service, b.slot) for b in store.list_backoff()] == [("api", 1)]


def test_a_slot_keeps_one_backoff_record_per_template(store: StateStore) -> None:
    """During a progressive rollout a slot holds a stable and a new replica, each with
    its own crash-loop history: recording one never replaces the other's, and each is
    forgotten on its own (both backends)."""
    from gitorch.state import BackoffRecord

    stable = BackoffRecord("web", 3, 2, 10.0, 137, template="v1", replica_id="a", reason="x")
    canary = BackoffRecord("web", 3, 1, 20.0, 1, template="v2", replica_id="b", reason="y")
    own = BackoffRecord("web", 0, 1, 30.0, None, reason="port 8000 taken")
    for record in (stable, canary, own):
        store.record_backoff(record)
    assert store.list_backoff() == [own, stable, canary]  # by slot, then template
    again = BackoffRecord("web", 3, 3, 40.0, 137, template="v1", replica_id="c", reason="x")
    store.record_backoff(again)
    assert store.list_backoff() == [own, again, canary]
    store.clear_backoff("web", 3, "v1")
    assert store.list_backoff() == [own, canary]
    store.clear_backoff("web", 0, "")  # the service's own record has no template
    assert store.list_backoff() == [canary]
    store.record_backoff(stable)
    store.clear_backoff("web", 3)  # every template of the slot
    assert store.list_backoff() == []


def test_draining_flag_round_trips_and_needs_a_registered_node(tmp_path: Path) -> None:
    from gitorch.state import RecordNotFound

    with StateStore(tmp_path) as store:
        store.register_node("node-a", "process")
        assert store.get_node("node-a").draining is False  # type: ignore[union-attr]
        assert store.set_draining("node-a", True).draining is True
        store.register_node("node-a", "process")  # re-registering keeps the drain
        assert store.get_node("node-a").draining is True  # type: ignore[union-attr]
        assert store.set_draining("node-a", False).draining is False
        with pytest.raises(RecordNotFound):
            store.set_draining("nope", True)


def test_autoscaler_records_round_trip_and_are_forgotten(store: StateStore) -> None:
    record = AutoscalerRecord(
        service="web",
        desired=3,
        decided_at=100.0,
        changed_at=90.0,
        reason="cpu 100/50 -> 3",
        metrics=({"metric": "cpu", "value": 100.0, "target": 50.0, "proposal": 3},),
        memory={"recommendations": [[100.0, 3]], "events": [[90.0, 2]]},
    )
    store.save_autoscaler(record)
    assert store.get_autoscaler("web") == record
    store.save_autoscaler(AutoscalerRecord("web", 2, 115.0))
    assert [r.desired for r in store.list_autoscalers()] == [2]
    assert store.forget_autoscaler("web") and store.list_autoscalers() == []


def test_node_pool_records_round_trip_and_are_forgotten(store: StateStore) -> None:
    record = NodePoolRecord(
        pool="workers",
        nodes=(
            {
                "name": "workers-1a2b3c",
                "endpoint": "tcp://10.0.0.7:2376",
                "state": "draining",
                # The template's TLS, kept with the node (no schema change: nodes are JSON).
                "tls": {
                    "caCert": "pool/ca.pem",
                    "clientCert": None,
                    "clientKey": None,
                    "verify": True,
                },
            },
        ),
        pending_since=12.5,
        last={"action": "drain", "node": "workers-1a2b3c", "reason": "requested 10% < 50%"},
        error="",
        updated_at=20.0,
        provider={"command": ["/usr/local/bin/make-node"], "timeout": 120.0},
    )
    store.save_node_pool(record)
    assert store.get_node_pool("workers") == record
    assert store.list_node_pools() == [record]
    store.save_node_pool(NodePoolRecord("workers", updated_at=21.0))
    assert store.get_node_pool("workers") == NodePoolRecord("workers", updated_at=21.0)
    assert store.forget_node_pool("workers") is True
    assert store.forget_node_pool("workers") is False
    assert store.list_node_pools() == []
