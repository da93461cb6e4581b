"""The metric readings from given figures: the rps and latency windows between syncs, the
utilization arithmetic, and what is not measured (and why). Real runtimes and a real data
plane feed them in ``tests/reconciler/test_autoscale_e2e.py``."""

from __future__ import annotations

import hashlib

from gitorch.apply.autoscaler import rollout_running
from gitorch.apply.scale_metrics import ScaleMetrics, Usage
from gitorch.live.model import LiveReplica, LiveService
from gitorch.manifests import ManifestLoader
from gitorch.manifests.model import Service
from gitorch.state.records import RolloutPhase, RolloutRecord
from gitorch.traffic.figures import VersionFigures, bucket_of, empty_histogram


class _File:
    def __init__(self, path: str, text: str) -> None:
        self.path, self.data = path, text.encode()
        self.blob_id = hashlib.sha1(self.data).hexdigest()


def service(metrics: str) -> Service:
    text = f"""apiVersion: gitorch.dev/v1
kind: Service
metadata: {{name: web}}
spec:
  command: ["sleep", "60"]
  ports: [{{name: http, containerPort: 8080}}]
  expose: {{port: 18998, targetPort: http}}
  resources: {{requests: {{cpu: 200m, memory: 100Mi}}}}
  autoscale:
    maxReplicas: 5
    metrics:
{metrics}
"""
    result = ManifestLoader().load([_File("web.yaml", text)], revision="a" * 40)
    assert result.state is not None, [str(d) for d in result.diagnostics]
    return result.state.services["web"]


def figures(requests: int, latency_ms: float = 0.0, epoch: str = "e1") -> VersionFigures:
    histogram = empty_histogram()
    if requests:
        histogram[bucket_of(latency_ms)] = requests
    return VersionFigures("v1", 2, 0, requests, 0, 0, tuple(histogram), epoch=epoch)


def replica(i: int, template: str = "t1") -> LiveReplica:
    return LiveReplica(f"id{i}", f"web-{i}", "web", f"web-{i}", "n1", "r", template, "running")


READY = [replica(1), replica(2)]
TRAFFIC = "      - {type: rps, targetAverageValue: 10}\n      - {type: latency, targetP99: 200ms}"


def test_rps_and_latency_are_read_between_two_syncs() -> None:
    clock = [100.0]
    served = [figures(1000, 50.0)]
    metrics = ScaleMetrics({}, lambda name: {"v1": served[0]}, clock=lambda: clock[0])
    web = service(TRAFFIC)
    first = {r.metric: r for r in metrics.read(web, READY)}
    assert first["rps"].value is None and "first sample" in first["rps"].message
    assert first["latency"].value is None
    clock[0], served[0] = 110.0, figures(1600, 50.0)
    second = {r.metric: r for r in metrics.read(web, READY)}
    # 600 requests in 10 s over 2 ready replicas: 30 per replica.
    assert second["rps"].value == 30.0 and second["rps"].measured == 2
    latency = second["latency"].value
    assert latency is not None and 30.0 < latency <= 50.0  # the p99 of the 50 ms bucket
    assert second["latency"].target == 200.0


def test_a_window_without_requests_has_no_latency_and_zero_rps() -> None:
    clock = [100.0]
    metrics = ScaleMetrics({}, lambda name: {"v1": figures(10, 20.0)}, clock=lambda: clock[0])
    web = service(TRAFFIC)
    metrics.read(web, READY)
    clock[0] = 115.0
    readings = {r.metric: r for r in metrics.read(web, READY)}
    assert readings["rps"].value == 0.0
    assert readings["latency"].value is None
    assert "no request in the window" in readings["latency"].message


def test_a_data_plane_that_began_counting_again_gives_no_window() -> None:
    clock = [100.0]
    served = [figures(5000, epoch="old")]
    metrics = ScaleMetrics({}, lambda name: {"v1": served[0]}, clock=lambda: clock[0])
    web = service(TRAFFIC)
    metrics.read(web, READY)
    clock[0], served[0] = 110.0, figures(40, epoch="new")
    readings = {r.metric: r for r in metrics.read(web, READY)}
    assert readings["rps"].value is None and "counting again" in readings["rps"].message


def test_utilization_is_a_percent_of_the_request_over_the_replicas_that_answered() -> None:
    metrics = ScaleMetrics({}, lambda name: {})
    web = service(
        "      - {type: cpu, targetAverageUtilization: 50}\n"
        "      - {type: memory, targetAverageUtilization: 80}"
    )
    usage = [Usage("web-1", 300.0, 50 * 1024 * 1024), Usage("web-2", 100.0, 150 * 1024 * 1024)]
    readings = {r.metric: r for r in metrics.read(web, READY, usage)}
    assert readings["cpu"].value == 100.0 and readings["cpu"].measured == 2  # 200m of 200m
    assert readings["memory"].value == 100.0
    nobody = {r.metric: r for r in metrics.read(web, [], [])}
    assert nobody["cpu"].value is None and nobody["cpu"].message == "no ready replica"


def test_a_rollout_pauses_the_autoscaler_but_a_rollback_does_not() -> None:
    web = service("      - {type: rps, targetAverageValue: 10}")
    mixed = LiveService("web", None, (replica(1, "old"), replica(2, web.template_digest)))
    assert rollout_running(web, mixed, None)
    settled = LiveService("web", None, (replica(1, web.template_digest),))
    assert not rollout_running(web, settled, None)
    # Rolled back: the record's target is the last good template, which is what runs.
    back = RolloutRecord("web", "r", "good", "RollingUpdate", RolloutPhase.ROLLED_BACK, {})
    assert not rollout_running(web, LiveService("web", None, (replica(1, "good"),)), back)
    paused = RolloutRecord("web", "r", web.template_digest, "Canary", RolloutPhase.PAUSED, {})
    assert rollout_running(web, settled, paused)
