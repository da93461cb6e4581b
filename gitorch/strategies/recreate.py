"""Recreate: stop every old replica, and only once none is left start the new ones.

For services that must never run two versions at once (a schema migration, a singleton
holding a lock). There is no availability floor: the service is down between the last
old replica stopping and the first new one becoming ready.
"""

from __future__ import annotations

from gitorch.strategies.machine import Create, Decision, RolloutInput, Stop
from gitorch.strategies.rolling import conclude, free_slots, take_census


def recreate_step(inp: RolloutInput) -> Decision:
    """One pass of a Recreate rollout; pure and idempotent.

    Exited replicas are removed (their slots are free). While any old replica is alive
    (``unknown`` ones included: their node may still run them) every old one is stopped and
    nothing is created; the next pass, seeing none, fills the free slots 1..desired at once.
    Excess target replicas (above ``desired``, or a second one in a slot) are stopped
    straight away: Recreate promises no availability.
    """
    census = take_census(inp)
    stops = [Stop(r.id, "exited") for r in census.exited]
    stops += [Stop(r.id, "old template (recreate)") for r in census.old]
    stops += [
        Stop(r.id, "scale down" if r.slot > inp.desired else f"second replica in slot {r.slot}")
        for r in census.excess
    ]
    creates: list[Create] = []
    if not census.old:
        creates = [Create(slot, inp.target) for slot in free_slots(inp, census)]
    return conclude(inp, census, (*stops, *creates))
