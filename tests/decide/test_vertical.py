"""Vertical recommendations (pure): decaying histograms, p90 cpu, peak memory, margin, bounds."""

from __future__ import annotations

from gitorch.decide.vertical import (
    FIRST_MEMORY_BUCKET,
    HALF_LIFE_SECONDS,
    Histogram,
    Histograms,
    bucket_end,
    bucket_of,
    differs,
    recommend,
)
from gitorch.manifests.model import ResourceList, VerticalScaling

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
