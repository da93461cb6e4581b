"""RollingUpdate: the limits arithmetic, the plan preview's batches and the step function.

Kubernetes' rules: maxSurge (rounded up from a percentage) bounds how many replicas may
exist above the desired count; maxUnavailable (rounded down) bounds how many of the
desired count may be unavailable. Both are resolved against the desired count.

:func:`rolling_step` is the rollout itself (one pure pass, see ``machine.py``);
:func:`plan_batches` is what ``gitorch plan`` previews. With replicas that become ready
by the next pass they agree: pass *k* starts what batch *k* starts and stops what batch
*k-1* stopped after its new replicas were ready plus what batch *k* stops first
(``tests/strategies/test_preview_agreement.py``). The census and status helpers here are
shared with :mod:`gitorch.strategies.recreate`.
"""

from __future__ import annotations

from dataclasses import dataclass

from gitorch.manifests.model import Service
from gitorch.manifests.quantities import resolve_int_or_percent
from gitorch.strategies.machine import (
    Action,
    Create,
    Decision,
    Phase,
    ReplicaView,
    RolloutInput,
    Stop,
)


@dataclass(frozen=True)
class Batch:
    """One step of a rolling update: start ``start`` new replicas, then stop ``stop`` old.

    ``stop_first`` of the ``stop`` happen before the start (only when the ceiling leaves
    no room: ``maxSurge`` 0, or more old replicas than ``desired + surge``); the rest once
    the new replicas are ready.
    """

    start: int
    stop: int
    total_max: int  # replicas existing at most during the batch
    available_min: int  # ready replicas at least during the batch
    stop_first: int = 0


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
        batches.append(
            Batch(start, stop_first + stop_after, total_max, min(old + new, desired), stop_first)
        )
        if len(batches) > 10_000:  # pragma: no cover - arithmetic guard
            break
    return batches


def single_writer_limits(service: Service, desired: int) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) of a RollingUpdate whose replicas write a ReadWriteOnce
    volume: no surge (two writers would run at once), at least one unavailable."""
    rolling = service.strategy.rolling_update
    unavailable = resolve_int_or_percent(rolling.max_unavailable, desired, round_up=False)
    return 0, max(1, unavailable)


# --- The observed replicas of one pass, sorted into what the strategies act on -----------


def is_available(replica: ReplicaView, inp: RolloutInput) -> bool:
    """Available means running, ready, and ready for ``min_ready_seconds``.

    The state check matters: an ``unknown`` replica may still carry the last ``ready`` seen
    before its node stopped answering, and that stale flag must not count.
    """
    return replica.state == "running" and replica.available(inp.now, inp.min_ready_seconds)


def _keep_rank(replica: ReplicaView, inp: RolloutInput) -> tuple[bool, bool, bool, str]:
    """Sort key choosing which of two target replicas in one slot to keep (smallest wins)."""
    return (
        not is_available(replica, inp),
        not replica.ready,
        replica.state != "running",
        replica.id,
    )


@dataclass(frozen=True)
class Census:
    """One pass's observation, sorted.

    ``targets`` maps each slot 1..desired to the target replica kept there; ``excess`` holds
    the target replicas that must go (slots above ``desired`` after a scale-down, or a second
    replica of one slot, which only a bug elsewhere could produce); ``old`` holds every live
    replica of another template; ``exited`` the dead ones, whatever their template.
    """

    targets: dict[int, ReplicaView]
    excess: tuple[ReplicaView, ...]
    old: tuple[ReplicaView, ...]
    exited: tuple[ReplicaView, ...]
    available: frozenset[str]  # ids of the live replicas that are available now

    @property
    def live(self) -> int:
        """Replicas that exist (everything but exited; unknown ones hold their slot)."""
        return len(self.targets) + len(self.excess) + len(self.old)

    def done(self, desired: int) -> bool:
        """The rollout's goal: ``desired`` target replicas in slots 1..desired, all available,
        nothing else alive."""
        return (
            not self.old
            and not self.excess
            and len(self.targets) == desired
            and all(r.id in self.available for r in self.targets.values())
        )


def take_census(inp: RolloutInput) -> Census:
    """Sort ``inp.replicas``; the result does not depend on their order in the input."""
    replicas = sorted(inp.replicas, key=lambda r: (r.slot, r.template, r.id))
    exited = tuple(r for r in replicas if r.state == "exited")
    live = [r for r in replicas if r.state != "exited"]
    old = tuple(r for r in live if r.template != inp.target)
    targets: dict[int, ReplicaView] = {}
    excess: list[ReplicaView] = []
    for replica in sorted(
        (r for r in live if r.template == inp.target), key=lambda r: (r.slot, _keep_rank(r, inp))
    ):
        if 1 <= replica.slot <= inp.desired and replica.slot not in targets:
            targets[replica.slot] = replica
        else:
            excess.append(replica)
    available = frozenset(r.id for r in live if is_available(r, inp))
    return Census(targets, tuple(excess), old, exited, available)


def free_slots(inp: RolloutInput, census: Census) -> list[int]:
    """Slots 1..desired with no live target replica and not in crash-loop back-off, lowest
    first. An old replica in the slot does not block: old and new share a slot for a while."""
    return [
        slot
        for slot in range(1, inp.desired + 1)
        if slot not in census.targets and slot not in inp.blocked_slots
    ]


def backing_off(inp: RolloutInput, census: Census) -> list[int]:
    """Slots 1..desired in back-off after their target replica failed to start or crashed
    (not completed for good), with no live target replica now, lowest first."""
    return sorted(
        slot
        for slot in inp.blocked_slots - inp.completed_slots
        if 1 <= slot <= inp.desired and slot not in census.targets
    )


def replica_name(inp: RolloutInput, slot: int) -> str:
    """How status names a replica: ``web-3`` for slot 3 of service ``web``."""
    return f"{inp.service}-{slot}"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def describe_progress(inp: RolloutInput, census: Census, actions: tuple[Action, ...]) -> str:
    """The one status line: where the rollout stands, what it waits for, what it does now.

    e.g. ``2/3 updated and available, 1 old, waiting for web-3 ready; stopping 1 old,
    starting web-3`` (the actions in the order the executor runs them: Stops, then
    Creates). "Updated and available": on the new template and ready for minReadySeconds
    (status's UPDATED column counts every replica on the new template, ready or not).
    """
    updated = sum(1 for r in census.targets.values() if r.id in census.available)
    parts = [f"{updated}/{inp.desired} updated and available"]
    if census.old:
        parts.append(f"{len(census.old)} old")
    if census.excess:
        parts.append(f"{len(census.excess)} extra")
    not_ready: list[str] = []
    soon: list[str] = []  # ready, not yet for minReadySeconds
    silent: list[str] = []
    for slot, replica in sorted(census.targets.items()):
        if replica.id in census.available:
            continue
        name = replica_name(inp, slot)
        if replica.state == "unknown":
            silent.append(name)
        elif replica.ready and replica.ready_since is not None:
            left = inp.min_ready_seconds - (inp.now - replica.ready_since)
            soon.append(f"{name} available in {max(left, 0):.0f}s")
        else:
            not_ready.append(name)
    waiting = bool(not_ready or soon or silent)
    line = ", ".join(parts)
    if not_ready:
        line += ", waiting for " + ", ".join(not_ready) + " ready"
    if soon:
        line += ", " + ", ".join(soon)
    if silent:
        line += ", node not answering for " + ", ".join(silent)
    waiting_out = backing_off(inp, census)
    if waiting_out:
        line += ", in back-off: " + ", ".join(replica_name(inp, s) for s in waiting_out)
    doing: list[str] = []
    stopping = {a.replica_id for a in actions if isinstance(a, Stop)}
    for group, word in ((census.old, "old"), (census.excess, "extra"), (census.exited, "exited")):
        count = sum(1 for r in group if r.id in stopping)
        if count:
            doing.append(f"{'removing' if word == 'exited' else 'stopping'} {count} {word}")
    creates = [a.slot for a in actions if isinstance(a, Create)]
    if creates:
        doing.append("starting " + ", ".join(replica_name(inp, s) for s in creates))
    if doing:
        line += "; " + ", ".join(doing)
    elif not waiting:
        line += f"; holding: {len(census.available)} available, none may stop yet"
    return line


def conclude(inp: RolloutInput, census: Census, actions: tuple[Action, ...]) -> Decision:
    """Phase and message for a pass, shared by the strategies: HEALTHY once done, FAILED
    when no progress for ``progress_deadline_seconds``, PROGRESSING otherwise.

    A FAILED decision still carries the pass's actions: they respect the same limits, so a
    reconciler that may not roll back (Degraded) can keep executing them as Kubernetes keeps
    progressing past its deadline; one that rolls back discards them.
    """
    if census.done(inp.desired):
        message = f"{inp.desired}/{inp.desired} updated"
        if census.exited:
            message += f"; removing {_plural(len(census.exited), 'exited replica')}"
        return Decision(Phase.HEALTHY, actions, message)
    progress = describe_progress(inp, census, actions)
    stalled = inp.now - max(inp.last_progress_at, inp.watching_since)
    if stalled > inp.progress_deadline_seconds:
        failure = (
            f"progress deadline exceeded: no new replica became available for {stalled:.0f}s "
            f"(progressDeadlineSeconds {inp.progress_deadline_seconds:g})"
        )
        return Decision(Phase.FAILED, actions, f"{failure}; {progress}", failure=failure)
    return Decision(Phase.PROGRESSING, actions, progress)


# --- RollingUpdate ---------------------------------------------------------------------


def _removal_reason(inp: RolloutInput, replica: ReplicaView) -> str:
    if replica.template != inp.target:
        return "old template"
    if replica.slot > inp.desired or replica.slot < 1:
        return "scale down"
    return f"second replica in slot {replica.slot}"


def rolling_step(inp: RolloutInput) -> Decision:
    """One pass of a RollingUpdate (Kubernetes Deployment semantics); pure and idempotent.

    Per pass, in this order (the executor runs the Stops before the Creates, except that
    a Create does not wait for the exit of an available replica stopped to make room:
    that one is terminating, out of the rotation, and does not count against
    ``maxSurge``, as in Kubernetes; so at most ``desired + surge`` replicas are in
    service and, for the length of a stop, ``desired + 2 * surge + unavailable`` run):

    1. exited replicas are removed; their slots are free, except that a slot in back-off
       after a failed start or a crash of its target replica counts against
       ``desired + surge`` as if that replica still existed;
    2. unavailable old (and excess target) replicas are removed: they serve nobody, so the
       availability floor does not protect them;
    3. when there is room under ``desired + surge`` and a free slot, the free slots are
       filled (lowest first) and nothing available is stopped: new replicas start before old
       ones stop, as :func:`plan_batches` previews;
    4. otherwise (at the ceiling, or nothing left to start) available old replicas, then
       available excess target replicas, are stopped, highest slot first, as long as
       ``desired - unavailable`` replicas stay available; then free slots are filled as far
       as the ceiling allows.
    """
    census = take_census(inp)
    surge, unavailable = resolve_limits(inp.desired, inp.max_surge, inp.max_unavailable)
    ceiling = inp.desired + surge
    floor = max(0, inp.desired - unavailable)

    stops = [Stop(r.id, "exited") for r in census.exited]
    # What must go, in the order it goes: old before excess targets (the old ones must go in
    # any case, the targets are the future), highest slot first within each.
    removable = sorted(census.old, key=lambda r: (-r.slot, r.id)) + sorted(
        census.excess, key=lambda r: (-r.slot, r.id)
    )
    serving = [r for r in removable if r.id in census.available]
    stops += [
        Stop(r.id, f"{_removal_reason(inp, r)}, not available")
        for r in removable
        if r.id not in census.available
    ]
    # A slot in back-off after its new replica failed to start or crashed holds its place
    # under the ceiling as that replica did (Kubernetes counts a crash-looping pod against
    # maxSurge): the rollout waits on it, and the progress deadline decides. Not counted,
    # each failure freed room for the next slot, and a version that cannot start was
    # tried in every slot within a second.
    existing = census.live - (len(removable) - len(serving)) + len(backing_off(inp, census))
    available = len(census.available)

    wanted = free_slots(inp, census)
    # Terminating from its withdrawal on, a stopped replica's room is the Creates' at once
    # (Kubernetes' surge semantics; ``Stop.terminating_frees_room``): at most
    # ``surge + unavailable`` of them, as nothing above the ceiling runs. Above it (a
    # scale-down during a rollout), or with no surge at all (a ReadWriteOnce volume's one
    # writer at a time, ``single_writer_limits``), the Creates wait for the exits.
    beside = surge > 0 and existing <= ceiling
    if not (wanted and existing < ceiling):
        for replica in serving[: max(0, available - floor)]:
            stops.append(Stop(replica.id, _removal_reason(inp, replica), beside))
            existing -= 1
    creates = [Create(slot, inp.target) for slot in wanted[: max(0, ceiling - existing)]]
    return conclude(inp, census, (*stops, *creates))
