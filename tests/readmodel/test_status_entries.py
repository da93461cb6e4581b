"""The daemon's status document keeps its service entries between requests (issue 20:
`gitorch status` < 300 ms at 2,000 services): reused while the observed service is the
same object, built again when it changes, never kept when it shows a clock."""

from __future__ import annotations

import time
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from gitorch.live.model import AppliedSpec, LiveNode, LiveReplica, LiveService, LiveState
from gitorch.readmodel.cluster import ClusterView
from gitorch.readmodel.status import ServiceEntries, service_json, status_json
from gitorch.state.records import BackoffRecord, ServiceBackoff


def _replica(service: str, slot: int, *, ready: bool | None = True) -> LiveReplica:
    return LiveReplica(
        id=f"{service}-{slot}-id",
        name=f"c-{service}-{slot}",
        service=service,
        replica=f"{service}-{slot}",
        node="vm",
        revision="r1",
        template_digest="d1",
        state="running",
        started_at=1.0,
        ready=ready,
    )


def _service(name: str, replicas: int = 2, autoscale: bool = False) -> LiveService:
    spec: dict[str, Any] = {"replicas": replicas}
    if autoscale:
        spec["autoscale"] = {"minReplicas": 1, "maxReplicas": 4}
    applied = AppliedSpec("r1", "d1", {"kind": "Service", "spec": spec}, "Healthy")
    return LiveService(name, applied, tuple(_replica(name, i) for i in range(1, replicas + 1)))


def _live(*services: LiveService, backoff: Any = None) -> LiveState:
    node = LiveNode("vm", "process", True, "127.0.0.1", 2000, 1 << 30)
    return LiveState(
        cluster="c",
        observed_at=time.time(),
        nodes=MappingProxyType({"vm": node}),
        services=MappingProxyType({s.name: s for s in services}),
        last_applied_revision="r1",
        backoff=MappingProxyType(backoff or {}),
    )


def _doc(live: LiveState, entries: ServiceEntries | None) -> dict[str, Any]:
    view = ClusterView(None, [], {}, live)
    return status_json(view, None, traffic={}, control_plane={}, entries=entries)


def _by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in doc["services"]}


def test_kept_entries_are_what_a_fresh_document_says() -> None:
    live = _live(_service("a"), _service("b"))
    entries = ServiceEntries()
    first, second = _doc(live, entries), _doc(live, entries)
    assert first == second == _doc(live, None)
    # The same object reused: nothing of the service was built again.
    assert _by_name(first)["a"]["instances"] is _by_name(second)["a"]["instances"]


def test_the_document_changes_when_the_cluster_changes() -> None:
    a, b = _service("a"), _service("b")
    entries = ServiceEntries()
    before = _by_name(_doc(_live(a, b), entries))
    # A new observation: a's replica is no longer ready, b is the same object.
    moved = replace(a, replicas=(replace(a.replicas[0], ready=False), a.replicas[1]))
    after = _by_name(_doc(_live(moved, b), entries))
    assert before["a"]["replicas"]["ready"] == 2
    assert after["a"]["replicas"]["ready"] == 1
    assert [i["ready"] for i in after["a"]["instances"]] == [False, True]
    assert after["b"]["instances"] is before["b"]["instances"]
    # A service that left and one that came.
    c = _service("c", replicas=3)
    last = _by_name(_doc(_live(moved, c), entries))
    assert sorted(last) == ["a", "c"]
    assert last["c"]["replicas"]["running"] == 3


def test_entries_showing_a_clock_are_built_every_time() -> None:
    auto = _service("auto", autoscale=True)
    live = _live(auto)
    entries = ServiceEntries()
    first, second = _by_name(_doc(live, entries)), _by_name(_doc(live, entries))
    assert first["auto"]["autoscale"] is not None
    assert second["auto"]["instances"] is not first["auto"]["instances"]
    # A slot in back-off: its retry counts down, so its entry is never kept.
    crashing = _service("crashing", replicas=1)
    failure = BackoffRecord("crashing", 1, 3, time.time(), reason="exit code 1")
    kept: dict[int, Any] = {}
    early = entries.entry(crashing, ServiceBackoff((failure,)), live, time.time(), kept)
    assert kept == {}
    later = entries.entry(crashing, ServiceBackoff((failure,)), live, time.time() + 1, kept)
    assert early["backoff"][0]["retryInSeconds"] > later["backoff"][0]["retryInSeconds"]


def test_restarts_of_a_version_rolled_back_from_are_not_shown() -> None:
    """After a rollback the failed version runs nowhere: its slots' restarts are history,
    not the live replicas' (status said `api-1: 4 restart(s), last: liveness probe
    failed` under replicas that were all ready)."""
    failed = BackoffRecord("a", 1, 4, 1.0, None, template="d2", reason="liveness probe failed")
    running = BackoffRecord("a", 2, 2, 1.0, 3, template="d1", reason="exit code 3")
    doc = service_json(_service("a"), ServiceBackoff((failed, running)), time.time())
    assert [b["replica"] for b in doc["backoff"]] == ["a-2"]
    assert doc["restarts"] == 2


def test_failed_starts_are_not_restarts_and_go_once_the_slot_runs() -> None:
    """A start that failed ran no replica: status names it a failed start, never a
    restart of the replica that runs (it said `6 restart(s), last: start failed: image
    ... not on node h1` beside a Healthy service until the record reset, 60 s)."""
    # a-1's template d1 failed to start twice, then started: it runs, nothing to show.
    ran = BackoffRecord("a", 1, 6, 1.0, None, template="d1", reason="start failed: no image")
    # a-2's new template d2 cannot start; its old replica (d1) runs on beside it.
    failing = BackoffRecord("a", 2, 3, 1.0, None, template="d2", reason="start failed: no image")
    service = _service("a")
    assert service.applied is not None
    service = replace(service, applied=replace(service.applied, digest="d2"))
    doc = service_json(service, ServiceBackoff((ran, failing)), time.time())
    assert [i["restarts"] for i in doc["instances"]] == [0, 0]
    assert doc["restarts"] == 0 and doc["failedStarts"] == 3
    (entry,) = doc["backoff"]
    assert entry["replica"] == "a-2" and entry["failedStarts"] == 3 and entry["restarts"] == 0
    # A crash is still a restart, with its count on the replica that runs now.
    crashed = BackoffRecord("a", 1, 2, 1.0, 3, template="d1", replica_id="x", reason="exit code 3")
    doc = service_json(_service("a"), ServiceBackoff((crashed,)), time.time())
    assert doc["restarts"] == 2 and doc["failedStarts"] == 0
    assert [i["restarts"] for i in doc["instances"]] == [2, 0]
