"""A batch of a service's replicas started together is released to a pass as one. Pure.

A rolling update stops as many old replicas as new ones are available. When the first of
a batch (maxSurge 2: a pair) answered its readiness probe a moment before its partner, a
pass that saw it alone stopped one old replica and started one new one, and the
partner's readiness a moment later made a wave of one: 6-7 waves instead of 5 for 10
replicas (issue 20). Whatever woke that pass (a readiness, a timer, a commit), the
replicas of the batch that answered are held back from it until the others answered too,
or until ``settle`` seconds passed since the first answered: a replica that is slow or
never ready delays the batch by that much at most. Each service's batch is held on its
own: another service's slow replica never holds this one's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["NO_HOLD", "READY_SETTLE", "BatchHold", "batch_hold", "merged_holds"]

#: How long (seconds) the replicas of a batch that answered wait for the others: the
#: first readiness probes of a pair land 0.1-0.3 s apart (probed every 0.1 s until first
#: ready), beside a client's load more.
READY_SETTLE = 0.5


@dataclass(frozen=True)
class BatchHold:
    """The replicas a pass treats as not ready yet, and until when (unix time)."""

    held: frozenset[str]
    until: float | None  # None: nothing held

    def seconds_left(self, now: float) -> float:
        """Seconds until the hold ends (0 when nothing is held)."""
        return 0.0 if self.until is None else max(0.0, self.until - now)


NO_HOLD = BatchHold(frozenset(), None)


def batch_hold(first_ready: Mapping[str, float | None], now: float, settle: float) -> BatchHold:
    """``first_ready``: each replica of the last batch started (tracked, not given up) and
    the unix time it first answered its readiness probe, None while it has not.

    Held: the ones that answered, while some have not and the first answered less than
    ``settle`` seconds before ``now``."""
    answered = {rid: at for rid, at in first_ready.items() if at is not None}
    if not answered or len(answered) == len(first_ready):
        return NO_HOLD
    until = min(answered.values()) + settle
    if now >= until:
        return NO_HOLD
    return BatchHold(frozenset(answered), until)


def merged_holds(holds: Iterable[BatchHold]) -> BatchHold:
    """The holds of several services' batches as one: every replica any of them holds,
    until the first of them ends (the pass comes back then; the others go on)."""
    held: set[str] = set()
    ends: list[float] = []
    for hold in holds:
        if hold.until is not None:
            held |= hold.held
            ends.append(hold.until)
    return BatchHold(frozenset(held), min(ends)) if ends else NO_HOLD
