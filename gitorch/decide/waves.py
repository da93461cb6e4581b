"""``dependsOn`` waves: the order services are rolled out and placed in. Pure."""

from __future__ import annotations

from collections.abc import Mapping

from gitorch.manifests.model import Service


def dependency_waves(services: Mapping[str, Service]) -> list[list[str]]:
    """Services grouped so each only depends on earlier groups (validated: no cycles)."""
    remaining = {
        name: {d for d in svc.depends_on if d in services} for name, svc in services.items()
    }
    waves: list[list[str]] = []
    done: set[str] = set()
    while remaining:
        wave = sorted(name for name, deps in remaining.items() if deps <= done)
        if not wave:  # a cycle slipped through validation: keep the rest in one wave
            wave = sorted(remaining)
        waves.append(wave)
        done.update(wave)
        for name in wave:
            del remaining[name]
    return waves
