"""Shared builders for the analysis tests (a module name no other test folder uses)."""

from __future__ import annotations

from gitorch.traffic.figures import VersionFigures, bucket_of, empty_histogram


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
