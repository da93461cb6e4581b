"""evaluate(): the built-in figures' verdicts, table-driven; combine() picks the worst."""

from __future__ import annotations

from dataclasses import replace

import pytest
from analysis_helpers import window

from gitorch.analysis.evaluate import Measurement, MeasurementPhase, combine, evaluate
from gitorch.manifests.model import Analysis

S, F, N, E = (
    MeasurementPhase.SUCCESSFUL,
    MeasurementPhase.FAILED,
    MeasurementPhase.INCONCLUSIVE,
    MeasurementPhase.ERROR,
)


@pytest.mark.parametrize(
    ("analysis", "requests", "errors", "latency_ms", "phase", "says"),
    [
        (Analysis(), 0, 0, 10, N, "only 0 requests"),
        (Analysis(), 19, 0, 10, N, "minRequests 20"),
        (Analysis(), 20, 0, 10, S, "20 requests"),
        (Analysis(success_rate=0.99), 100, 1, 10, S, "success rate 0.9900"),
        (Analysis(success_rate=0.99), 100, 2, 10, F, "below 0.99"),
        (Analysis(success_rate=0.99), 19, 19, 10, N, "only 19"),  # too few even if all fail
        (Analysis(success_rate=None), 100, 100, 10, S, "100 requests"),
        (Analysis(max_latency_p99_seconds=0.5), 100, 0, 400, S, "p99"),
        (Analysis(max_latency_p99_seconds=0.5), 100, 0, 900, F, "above 500ms"),
        (Analysis(max_latency_p99_seconds=0.5), 100, 0, None, N, "no latency samples"),
        (Analysis(max_latency_p99_seconds=0.5), 100, 50, None, F, "below 0.99"),
        (Analysis(max_latency_p99_seconds=0.5), 100, 50, 900, F, "above 500ms"),
        (Analysis(min_requests=0), 0, 0, None, S, "0 requests"),
    ],
)
def test_verdicts(
    analysis: Analysis,
    requests: int,
    errors: int,
    latency_ms: float | None,
    phase: MeasurementPhase,
    says: str,
) -> None:
    result = evaluate(analysis, window(requests, errors, latency_ms=latency_ms))
    assert result.phase is phase, result.message
    assert says in result.message
    assert result.value["requests"] == requests
    assert result.value["errors5xx"] == errors


def test_baseline_reported_beside_the_version() -> None:
    new = window(100, 1, version="new")
    old = window(300, 0, latency_ms=40, version="old")
    result = evaluate(Analysis(), new, baseline=old)
    assert result.phase is S
    assert result.value["version"] == "new"
    assert result.value["successRate"] == pytest.approx(0.99)
    baseline = result.value["baseline"]
    assert isinstance(baseline, dict)
    assert baseline["version"] == "old"
    assert baseline["requests"] == 300
    assert baseline["successRate"] == 1.0
    assert 30 <= baseline["p99Ms"] <= 50
    assert "baseline success rate 1.0000" in result.message


def test_the_verdict_is_on_the_version_not_the_baseline() -> None:
    bad_baseline = window(100, 100, version="old")
    assert evaluate(Analysis(), window(100), baseline=bad_baseline).phase is S
    assert evaluate(Analysis(), window(100, 100), baseline=window(100)).phase is F


@pytest.mark.parametrize(
    ("phases", "worst"),
    [((S, S), S), ((S, N), N), ((N, E), E), ((E, F), F), ((F, S), F), ((S,), S)],
)
def test_combine_takes_the_worst(
    phases: tuple[MeasurementPhase, ...], worst: MeasurementPhase
) -> None:
    parts = [Measurement(p, {f"k{i}": i}, f"m{i}") for i, p in enumerate(phases)]
    combined = combine(*parts)
    assert combined.phase is worst
    assert set(combined.value) == {f"k{i}" for i in range(len(phases))}
    assert combined.message == "; ".join(f"m{i}" for i in range(len(phases)))


def test_a_window_whose_counting_restarted_says_so() -> None:
    """Snapshots of two countings (a proxy that started afresh) are never subtracted: the
    window holds what the new counting saw, and the measurement says the rest is missing."""
    spec = Analysis(interval_seconds=10, count=3, min_requests=10, success_rate=0.99)
    before = replace(window(500, 5), epoch="old")
    after = replace(window(40), epoch="new")
    judged = after.since(before)
    assert (judged.requests, judged.errors_5xx, judged.restarted) == (40, 0, True)
    result = evaluate(spec, judged)
    assert result.phase is MeasurementPhase.SUCCESSFUL
    assert "counting restarted" in result.message and result.value["countingRestarted"] is True
    same = replace(window(540, 5), epoch="old").since(before)
    assert (same.requests, same.restarted) == (40, False)
    assert "countingRestarted" not in evaluate(spec, same).value
