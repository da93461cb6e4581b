"""The autoscaler's sync (read, decide, record) against a real Prometheus server and a real
state store; the counts reach the pass through ``LiveState.autoscalers``.

The cpu, memory and rps sources run under a real daemon in
``tests/reconciler/test_autoscale_e2e.py``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType

import pytest
from listen_ports import free_port
from prometheus_helpers import running_prometheus

from gitorch.apply.autoscaler import (
    SCALED_EVENT,
    Autoscaler,
    record_bounds_scale,
    rollout_running,
)
from gitorch.apply.scale_metrics import ScaleMetrics
from gitorch.decide.service import bounds_scale
from gitorch.live.model import LiveReplica, LiveService, LiveState
from gitorch.manifests import ManifestLoader
from gitorch.manifests.model import DesiredState
from gitorch.state import AutoscalerRecord, StateStore


class _File:
    def __init__(self, path: str, text: str) -> None:
        self.path, self.data = path, text.encode()
        self.blob_id = hashlib.sha1(self.data).hexdigest()


def desired(metrics: str, *, low: int = 1, high: int = 5) -> DesiredState:
    text = f"""apiVersion: gitorch.dev/v1
kind: Service
metadata: {{name: web}}
spec:
  command: ["sleep", "60"]
  replicas: 1
  ports: [{{name: http, containerPort: 8080}}]
  expose: {{port: 18999, targetPort: http}}
  resources: {{requests: {{cpu: 100m}}}}
  autoscale:
    minReplicas: {low}
    maxReplicas: {high}
    metrics:
{metrics}
    behavior: {{scaleDown: {{stabilizationWindowSeconds: 0}}}}
"""
    result = ManifestLoader().load([_File("web.yaml", text)], revision="a" * 40)
    assert result.state is not None, [str(d) for d in result.diagnostics]
    return result.state


def live_with(replicas: int, store: StateStore, template: str | None = None) -> LiveState:
    running = tuple(
        LiveReplica(f"id{i}", f"web-{i}", "web", f"web-{i}", "n1", "a" * 40, template, "running")
        for i in range(1, replicas + 1)
    )
    return LiveState(
        cluster="c",
        observed_at=0.0,
        nodes=MappingProxyType({}),
        services=MappingProxyType({"web": LiveService("web", None, running)}),
        autoscalers=MappingProxyType({a.service: a for a in store.list_autoscalers()}),
    )


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_prometheus(tmp_path_factory.mktemp("prometheus")) as address:
        yield address


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    with StateStore(tmp_path / "state") as opened:
        yield opened


def autoscaler(store: StateStore, clock: list[float]) -> Autoscaler:
    metrics = ScaleMetrics({}, lambda service: {})
    return Autoscaler(store, metrics, clock=lambda: clock[0])


def test_a_prometheus_metric_scales_in_proportion(prometheus: str, store: StateStore) -> None:
    metric = (
        f'      - {{type: prometheus, address: "{prometheus}", '
        'query: "scalar(vector(30))", targetValue: 10}'
    )
    state, clock = desired(metric), [1000.0]
    scaler = autoscaler(store, clock)
    [result] = scaler.sync(state, live_with(1, store), lambda r: True)
    # 30 against a target of 10 at one replica: three.
    assert (result.decision.current, result.decision.desired) == (1, 3)
    record = store.get_autoscaler("web")
    assert record is not None and record.desired == 3 and record.changed_at == 1000.0
    assert record.metrics[0]["value"] == 30.0 and record.metrics[0]["proposal"] == 3
    [event] = store.list_events(kind=SCALED_EVENT)
    assert event.data["from"] == 1 and event.data["to"] == 3
    assert event.data["metric"] == "prometheus" and event.data["value"] == 30.0
    # At three replicas the value is on target: no change, no new event.
    clock[0] = 1015.0
    state = desired(metric.replace("vector(30)", "vector(10)"))
    [again] = scaler.sync(state, live_with(3, store), lambda r: True)
    assert not again.decision.changed and again.record.changed_at == 1000.0
    assert len(store.list_events(kind=SCALED_EVENT)) == 1


def test_a_rollout_in_progress_does_not_hold_the_count(prometheus: str, store: StateStore) -> None:
    """The replicas run a template other than Git's (a rollout under way): the count still
    follows the metric; every strategy carries a count that moves
    (``tests/strategies/test_count_mid_rollout.py``)."""
    metric = (
        f'      - {{type: prometheus, address: "{prometheus}", '
        'query: "scalar(vector(30))", targetValue: 10}'
    )
    state = desired(metric)
    live = live_with(1, store, template="b" * 64)
    assert rollout_running(state.services["web"], live.services["web"], None)
    [result] = autoscaler(store, [1000.0]).sync(state, live, lambda r: True)
    assert (result.decision.current, result.decision.desired) == (1, 3)
    assert "rollout" not in result.decision.reason
    [event] = store.list_events(kind=SCALED_EVENT)
    assert (event.data["from"], event.data["to"]) == (1, 3)


def test_an_unreadable_metric_never_lets_another_scale_down(store: StateStore) -> None:
    gone = f"http://127.0.0.1:{free_port()}"
    metrics = (
        f'      - {{type: prometheus, address: "{gone}", query: "up", targetValue: 10}}\n'
        "      - {type: rps, targetAverageValue: 10}"
    )
    scaler = autoscaler(store, [1000.0])
    store.save_autoscaler(AutoscalerRecord("web", 4, 990.0))
    [result] = scaler.sync(desired(metrics), live_with(4, store), lambda r: True)
    assert result.decision.desired == 4
    readings = {m["metric"]: m for m in result.record.metrics}
    assert readings["prometheus"]["value"] is None
    assert "did not answer" in readings["prometheus"]["message"]
    # rps has no window yet (the first sample): not measured either.
    assert readings["rps"]["value"] is None and "first sample" in readings["rps"]["message"]


def test_bounds_changed_in_git_hold_at_once(store: StateStore) -> None:
    # maxReplicas went from 5 to 3 in Git: the pass clamps at once (desired_count), the
    # record follows at the next sync.
    store.save_autoscaler(AutoscalerRecord("web", 5, 990.0))
    scaler = autoscaler(store, [1000.0])
    metric = "      - {type: rps, targetAverageValue: 10}"
    [result] = scaler.sync(desired(metric, high=3), live_with(5, store), lambda r: True)
    assert (result.decision.current, result.decision.desired) == (3, 3)
    record = store.get_autoscaler("web")
    assert record is not None and record.desired == 3


def test_a_service_no_longer_autoscaled_loses_its_record(store: StateStore) -> None:
    store.save_autoscaler(AutoscalerRecord("gone", 2, 990.0))
    scaler = autoscaler(store, [1000.0])
    state = desired("      - {type: rps, targetAverageValue: 10}")
    live = live_with(1, store)
    scaler.sync(state, live, lambda r: True)
    assert [r.service for r in store.list_autoscalers()] == ["web"]


def events_of(store: StateStore) -> list[str]:
    return [e.message for e in store.list_events(kind=SCALED_EVENT)]


def test_a_sync_that_observed_before_the_pass_wrote_writes_nothing(store: StateStore) -> None:
    """minReplicas went from 2 to 3 in Git; the sync observed the record at 2, then the
    pass held the count at 3 and recorded that: the sync's stale decision is not written
    (it would put 2 back, and the next pass would record the same raise again)."""
    store.save_autoscaler(AutoscalerRecord("web", 2, 990.0))
    stale = live_with(2, store)
    store.save_autoscaler(AutoscalerRecord("web", 3, 995.0, 995.0, "below minReplicas"))
    scaler = autoscaler(store, [1000.0])
    metric = "      - {type: rps, targetAverageValue: 10}"
    [result] = scaler.sync(desired(metric, low=3), stale, lambda r: True)
    assert not result.decision.changed
    assert store.get_autoscaler("web") == AutoscalerRecord(
        "web", 3, 995.0, 995.0, "below minReplicas"
    )
    assert events_of(store) == []


def test_a_raise_to_min_replicas_is_recorded_once_by_whoever_makes_it(
    store: StateStore,
) -> None:
    """The sync is first to hold a count below a raised minReplicas: it records the raise;
    the pass, which saw the same old count, then records nothing more."""
    store.save_autoscaler(AutoscalerRecord("web", 2, 990.0))
    live = live_with(2, store)
    scaler = autoscaler(store, [1000.0])
    state = desired("      - {type: rps, targetAverageValue: 10}", low=3)
    scaler.sync(state, live, lambda r: True)
    assert events_of(store) == ["web: 2 -> 3 replicas (below minReplicas)"]
    scale = bounds_scale(state.services["web"], live.services["web"], 2, 1001.0)
    assert scale is not None and scale.observed == 2
    with store.transaction():
        record_bounds_scale(store, scale)
    assert events_of(store) == ["web: 2 -> 3 replicas (below minReplicas)"]
    record = store.get_autoscaler("web")
    assert record is not None and record.desired == 3
