"""RollingUpdate arithmetic: how many replicas may be added or removed at each point.

Kubernetes' rules: maxSurge (rounded up from a percentage) bounds how many replicas may
exist above the desired count; maxUnavailable (rounded down) bounds how many of the
desired count may be unavailable. Both are resolved against the desired count.
"""

from __future__ import annotations

from dataclasses import dataclass

from gitorch.manifests.quantities import resolve_int_or_percent


@dataclass(frozen=True)
class Batch:
    """One step of a rolling update: start ``start`` new replicas, then stop ``stop`` old."""

    start: int
    stop: int
    total_max: int  # replicas existing at most during the batch
    available_min: int  # ready replicas at least during the batch


def resolve_limits(
    desired: int, max_surge: int | str, max_unavailable: int | str
) -> tuple[int, int]:
    """(surge, unavailable) as counts; never both 0 (the schema forbids it, this guards)."""
    surge = resolve_int_or_percent(max_surge, desired, round_up=True)
    unavailable = resolve_int_or_percent(max_unavailable, desired, round_up=False)
    if surge == 0 and unavailable == 0:
        surge = 1
    return surge, unavailable


def plan_batches(
    desired: int, old: int, max_surge: int | str, max_unavailable: int | str
) -> list[Batch]:
    """The batches a rolling update from ``old`` old replicas to ``desired`` new ones runs,
    assuming each new replica becomes ready (the rollout itself waits for it)."""
    surge, unavailable = resolve_limits(desired, max_surge, max_unavailable)
    new = 0
    batches: list[Batch] = []
    floor = max(0, desired - unavailable)
    while old > 0 or new < desired:
        # Stop old replicas first while more than the floor stays available ...
        stop_first = min(old, max(0, old + new - floor)) if new + old > desired + surge else 0
        # ... start as many new as the surge allows ...
        room = desired + surge - (old - stop_first) - new
        start = max(0, min(desired - new, room))
        if start == 0 and stop_first == 0:
            # at the ceiling: make room by stopping what availability allows
            stop_first = min(old, max(1, old + new - floor))
            room = desired + surge - (old - stop_first) - new
            start = max(0, min(desired - new, room))
        old -= stop_first
        new += start
        # ... then, once they are ready, stop old ones down to the floor.
        stop_after = min(old, max(0, old + new - floor))
        if new + old - stop_after > desired + surge:
            stop_after = old
        old -= stop_after
        total_max = old + stop_after + new
        batches.append(Batch(start, stop_first + stop_after, total_max, min(old + new, desired)))
        if len(batches) > 10_000:  # pragma: no cover - arithmetic guard
            break
    return batches
