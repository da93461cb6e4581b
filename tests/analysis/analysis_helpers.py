"""Shared builders for the analysis tests (a module name no other test folder uses)."""

from __future__ import annotations

from collections.abc import Iterator

from gitorch.analysis.evaluate import Measurement, MeasurementPhase
from gitorch.traffic.figures import VersionFigures, bucket_of, empty_histogram

#: Measurement phases, short, for scripted runs.
S, F, N, E = (
    MeasurementPhase.SUCCESSFUL,
    MeasurementPhase.FAILED,
    MeasurementPhase.INCONCLUSIVE,
    MeasurementPhase.ERROR,
)


class Script:
    """A measure callable answering the given phases in order; counts its calls."""

    def __init__(self, phases: list[MeasurementPhase]) -> None:
        self.phases: Iterator[MeasurementPhase] = iter(phases)
        self.calls = 0

    def __call__(self) -> Measurement:
        self.calls += 1
        phase = next(self.phases)
        return Measurement(phase, {}, f"measured {phase}")


def window(
    requests: int, errors: int = 0, *, latency_ms: float | None = 10.0, version: str = "new"
) -> VersionFigures:
    """A window of ``requests`` answers, ``errors`` of them 5xx, all at ``latency_ms``."""
    latency = empty_histogram()
    if latency_ms is not None:
        latency[bucket_of(latency_ms)] = requests
    return VersionFigures(
        version=version,
        backends=1,
        in_flight=0,
        requests=requests,
        errors_5xx=errors,
        connect_errors=0,
        latency=tuple(latency),
    )
