"""Vertical recommendations (pure): decaying histograms, p90 cpu, peak memory, margin, bounds."""

from __future__ import annotations

from gitorch.decide.vertical import (
    FIRST_MEMORY_BUCKET,
    HALF_LIFE_SECONDS,
    Histogram,
    Histograms,
    Recommendation,
    auto_update,
    bucket_end,
    bucket_of,
    differs,
    recommend,
    with_vertical,
)
from gitorch.manifests.model import DesiredState, ResourceList, Service, VerticalScaling
from gitorch.state.records import AutoscalerRecord

MIB = 1024 * 1024
RECOMMEND = VerticalScaling()


def test_buckets_are_five_percent_wide() -> None:
    for value in (0.5, 10.0, 57.0, 250.0, 4000.0):
        index = bucket_of(value, 10.0)
        assert value < bucket_end(index, 10.0) <= max(value, 10.0) * 1.05 + 1e-9


def test_a_steady_200_mib_replica_gets_200_to_260_mib() -> None:
    histograms = Histograms()
    for minute in range(30):
        histograms = histograms.add([(100.0, 200 * MIB)], at=60.0 * minute)
    rec = recommend(histograms, RECOMMEND, now=1800.0)
    assert rec.memory_bytes is not None and 200 * MIB < rec.memory_bytes <= 260 * MIB
    # 15% over the bucket holding 200 MiB (at most 5% above it)
    assert rec.memory_bytes <= 200 * MIB * 1.05 * 1.15 + 1


def test_cpu_is_the_90th_percentile_with_a_margin() -> None:
    histograms = Histograms()
    # 90 samples at 100m, 10 at 1000m: p90 is 100m (+ bucket + 15%), not the spikes.
    samples = [(100.0, 50 * MIB)] * 90 + [(1000.0, 50 * MIB)] * 10
    histograms = histograms.add(samples, at=10.0)
    rec = recommend(histograms, RECOMMEND, now=10.0)
    assert rec.cpu_millis is not None and 115 <= rec.cpu_millis <= 122


def test_memory_is_the_peak_until_it_fades() -> None:
    histograms = Histograms().add([(10.0, 500 * MIB)], at=0.0)
    for hour in range(1, 4):
        histograms = histograms.add([(10.0, 100 * MIB)], at=hour * 3600.0)
    peak = recommend(histograms, RECOMMEND, now=4 * 3600.0).memory_bytes
    assert peak is not None and peak > 500 * MIB * 1.15  # one spike sets it
    # Five days later (new samples at 100 MiB all along), the spike no longer counts.
    later = histograms
    for day in range(1, 6):
        later = later.add([(10.0, 100 * MIB)], at=day * HALF_LIFE_SECONDS)
    faded = recommend(later, RECOMMEND, now=5 * HALF_LIFE_SECONDS).memory_bytes
    assert faded is not None and faded < 130 * MIB


def test_bounds_and_too_few_samples() -> None:
    bounded = VerticalScaling(
        "Recommend", ResourceList(cpu_millis=50, memory_bytes=32 * MIB), ResourceList(cpu_millis=80)
    )
    histograms = Histograms().add([(1.0, 1 * MIB)] * 3, at=0.0)
    rec = recommend(histograms, bounded, now=0.0)
    assert rec.cpu_millis == 50 and rec.memory_bytes == 32 * MIB
    big = Histograms().add([(900.0, 1 * MIB)] * 3, at=0.0)
    assert recommend(big, bounded, now=0.0).cpu_millis == 80
    few = Histograms().add([(100.0, 1 * MIB)] * 2, at=0.0)
    assert recommend(few, RECOMMEND, now=0.0).cpu_millis is None


def test_weights_renormalize_after_long_runs_and_survive_json() -> None:
    histogram = Histogram(FIRST_MEMORY_BUCKET)
    for day in range(0, 80, 2):
        histogram = histogram.add(100 * MIB, at=day * HALF_LIFE_SECONDS)
    assert max(histogram.weights.values()) < 2.0**31
    again = Histograms.from_json(Histograms(memory=histogram, samples=40).to_json())
    assert again.memory.weights.keys() == histogram.weights.keys()
    assert again.memory.peak(80 * HALF_LIFE_SECONDS) == histogram.peak(80 * HALF_LIFE_SECONDS)


def test_differs_by_more_than_twenty_percent() -> None:
    assert differs(250, 120) and not differs(100, 115) and differs(None, 10)
    assert not differs(100, None)


# -- mode Auto ------------------------------------------------------------------------------


def _service(mode: str, limits: str = "") -> Service:
    from decide_helpers import load_docs

    text = f"""apiVersion: gitorch.dev/v1
kind: Service
metadata: {{name: holder}}
spec:
  image: holder:1
  resources: {{requests: {{cpu: 250m, memory: 512Mi}}{limits}}}
  autoscale:
    minReplicas: 1
    maxReplicas: 1
    vertical: {{mode: {mode}}}
"""
    return load_docs(text, revision="r1").services["holder"]


def _record(applied: dict[str, int] | None = None) -> AutoscalerRecord:
    return AutoscalerRecord("holder", 1, 0.0, usage={"applied": applied} if applied else {})


def test_auto_applies_a_recommendation_more_than_20_percent_away() -> None:
    service = _service("Auto")
    far = Recommendation(200, 237 * MIB, 10)  # cpu within 20%, memory far: both applied
    assert auto_update(service, None, far) == {"cpu": 200, "memory": 237 * MIB}
    near = Recommendation(230, 450 * MIB, 10)  # both within 20% of 250m and 512Mi
    assert auto_update(service, None, near) is None
    # Compared with what runs: the requests applied before, not Git's.
    running = _record({"cpu": 200, "memory": 237 * MIB})
    assert auto_update(service, running, far) is None
    assert auto_update(_service("Recommend"), None, far) is None


def test_the_applied_requests_change_the_template_and_scale_limits_in_proportion() -> None:
    state = load_desired_with(_service("Auto", ", limits: {cpu: 500m, memory: 1Gi}"))
    applied = with_vertical(state, {"holder": _record({"cpu": 125, "memory": 256 * MIB})})
    svc, git = applied.services["holder"], state.services["holder"]
    assert svc.resources.requests.cpu_millis == 125
    assert svc.resources.requests.memory_bytes == 256 * MIB
    assert svc.resources.limits.cpu_millis == 250 and svc.resources.limits.memory_bytes == 512 * MIB
    assert svc.template_digest != git.template_digest
    assert with_vertical(state, {}) is state  # nothing applied: Git's, unchanged
    recommend_only = load_desired_with(_service("Recommend"))
    assert with_vertical(recommend_only, {"holder": _record({"cpu": 125})}) is recommend_only


def load_desired_with(service: Service) -> DesiredState:
    return DesiredState("r1", "", {service.name: service}, {}, {}, "d")
