"""rolling_step, one rule per case: given an observation, exactly which Stops and Creates.

Limits read as (maxSurge, maxUnavailable); replicas are named by template and slot ("A1"
is the old template's replica in slot 1, "B2" the target's in slot 2). Every decision is
also run through ``check_pass``, the invariants the simulation tests hold at every pass.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import pytest
from strategy_sim import check_pass, rollout_input

from gitorch.strategies import Create, Decision, Phase, ReplicaView, Stop, rolling_step
from gitorch.strategies.recreate import recreate_step

NOW = 1000.0


def rep(
    name: str, state: str = "running", *, ready: bool = True, since: float = 0.0, id: str = ""
) -> ReplicaView:
    """``rep("A3")``: the template-A replica in slot 3, running and ready for long."""
    return ReplicaView(
        id=id or name,
        slot=int(name[1:]),
        template=name[0],
        state=state,
        ready=ready,
        ready_since=since if ready else None,
    )


def pending(name: str, state: str = "created") -> ReplicaView:
    return rep(name, state, ready=False)


@dataclass(frozen=True)
class Case:
    name: str
    desired: int
    limits: tuple[int | str, int | str]
    replicas: tuple[ReplicaView, ...]
    stops: tuple[str, ...]  # replica ids, in the order decided
    creates: tuple[int, ...]  # slots
    phase: Phase = Phase.PROGRESSING
    blocked: frozenset[int] = frozenset()
    completed: frozenset[int] = frozenset()
    min_ready: float = 0.0
    message: str = ""  # a fragment the status line must contain


def A(n: int) -> tuple[ReplicaView, ...]:
    return tuple(rep(f"A{s}") for s in range(1, n + 1))


def B(*slots: int) -> tuple[ReplicaView, ...]:
    return tuple(rep(f"B{s}") for s in slots)


CASES = [
    # --- surge ceiling
    Case(
        "surge 1 starts one", 3, (1, 0), A(3), (), (1,), message="0/3 updated and available, 3 old"
    ),
    Case("surge 2 starts two", 3, (2, 0), A(3), (), (1, 2)),
    Case("surge 25% of 10 rounds up to 3", 10, ("25%", 0), A(10), (), (1, 2, 3)),
    Case(
        "at the ceiling, nothing ready: wait",
        3,
        (1, 0),
        (*A(3), pending("B1")),
        (),
        (),
        message="waiting for web-1 ready",
    ),
    Case(
        "at the ceiling, new one ready: stop one old, start the next",
        3,
        (1, 0),
        (*A(3), *B(1)),
        ("A3",),
        (2,),
    ),
    # --- availability floor
    Case("maxSurge 0: stop first what maxUnavailable allows", 3, (0, 1), A(3), ("A3",), (1,)),
    Case("unavailable 25% of 3 rounds down to 0: no stop first", 3, (1, "25%"), A(3), (), (1,)),
    Case(
        "below the floor already: no available replica stops",
        3,
        (0, 1),
        (rep("A1"), rep("A2"), pending("B3"), *()),
        (),
        (),
        message="waiting for web-3",
    ),
    Case(
        "with room, start before stopping anything available",
        5,
        (2, 1),
        A(5),
        (),
        (1, 2),
    ),
    Case(
        "at the ceiling, stop down to the floor then refill",
        5,
        (2, 1),
        (*A(5), *B(1, 2)),
        ("A5", "A4", "A3"),
        (3, 4, 5),
    ),
    # --- old replicas that serve nobody go first, and freely
    Case(
        "old not ready: stopped even at the floor",
        3,
        (1, 0),
        (rep("A1"), pending("A2", "running"), rep("A3")),
        ("A2",),
        (1, 2),
    ),
    Case(
        "old unknown: not available, stopped",
        2,
        (1, 0),
        (rep("A1"), rep("A2", "unknown")),
        ("A2",),
        (1, 2),
    ),
    Case(
        "old removal: highest slot first among the available",
        3,
        (1, 0),
        (rep("A1"), rep("A3"), *B(1, 2)),
        ("A3",),
        (3,),
    ),
    # --- slots
    Case("an old replica in the slot does not block the target", 1, (1, 0), A(1), (), (1,)),
    Case("lowest free slots first", 4, (2, 0), B(1, 3), (), (2, 4)),
    Case(
        "blocked slot: never created there",
        3,
        (1, 0),
        B(1, 2),
        (),
        (),
        blocked=frozenset({3}),
        message="in back-off: web-3",
    ),
    Case(
        "blocked slot skipped, the next one filled",
        3,
        (2, 0),
        B(1),
        (),
        (3,),
        blocked=frozenset({2}),
    ),
    # A new replica that failed to start (or crashed) leaves its slot in back-off; the
    # slot keeps its place under maxSurge, so the rollout waits on it instead of trying
    # the next slots (with maxSurge 1 all three were tried within a second).
    Case(
        "a slot in back-off after a failed start holds the surge",
        3,
        (1, 0),
        A(3),
        (),
        (),
        blocked=frozenset({1}),
        message="3 old, in back-off: web-1",
    ),
    Case(
        "surge 2, one slot in back-off: one more starts",
        3,
        (2, 0),
        A(3),
        (),
        (2,),
        blocked=frozenset({1}),
    ),
    Case(
        "surge 2, two slots in back-off: none more",
        4,
        (2, 0),
        A(4),
        (),
        (),
        blocked=frozenset({1, 2}),
    ),
    Case(
        "maxUnavailable lets an old one go for the next slot, as in Kubernetes",
        3,
        (1, 1),
        A(3),
        ("A3",),
        (2,),
        blocked=frozenset({1}),
    ),
    Case(
        "a slot in back-off beside a ready new one: no old one goes to make room",
        3,
        (1, 0),
        (*A(2), *B(1)),
        (),
        (),
        blocked=frozenset({2}),
        phase=Phase.PROGRESSING,
    ),
    Case(
        "a completed slot holds nothing",
        3,
        (1, 0),
        A(2),
        (),
        (1, 2),
        blocked=frozenset({3}),
        completed=frozenset({3}),
    ),
    Case(
        "unknown target holds its slot, not available",
        2,
        (1, 0),
        (rep("B1", "unknown"), *B(2)),
        (),
        (),
        message="node not answering for web-1",
    ),
    Case(
        "a stale ready flag on an unknown replica does not count toward the floor",
        2,
        (1, 0),
        (*A(2), rep("B1", "unknown")),
        (),
        (),
    ),
    Case(
        "second target replica in a slot: the worse one goes",
        2,
        (1, 0),
        (rep("B1", id="x"), pending("B1"), *B(2)),
        ("B1",),
        (),
        Phase.PROGRESSING,
    ),
    # --- exited replicas are dead
    Case(
        "exited target: removed and recreated in the same pass",
        2,
        (1, 0),
        (rep("B1", "exited", ready=False), *B(2)),
        ("B1",),
        (1,),
    ),
    Case(
        "exited old: removed, the service is healthy",
        2,
        (1, 0),
        (rep("A1", "exited", ready=False), *B(1, 2)),
        ("A1",),
        (),
        Phase.HEALTHY,
        message="removing 1 exited replica",
    ),
    Case(
        "exited replicas free the ceiling",
        2,
        (1, 0),
        (rep("A1"), rep("A2", "exited", ready=False), rep("B1", "exited", ready=False)),
        ("B1", "A2"),
        (1, 2),
    ),
    # --- scaling is the same machine with no old replicas
    Case("scale up", 5, ("25%", 0), B(1, 2, 3), (), (4, 5)),
    Case("scale down: highest slot first", 2, (1, 0), B(1, 2, 3, 4), ("B4", "B3"), ()),
    Case(
        "scale down keeps the floor while a kept replica is not ready",
        2,
        (1, 0),
        (pending("B1", "running"), *B(2, 3, 4)),
        ("B4",),
        (),
    ),
    Case(
        "scale down: a not-ready extra goes at once",
        2,
        (1, 0),
        (*B(1, 2), pending("B3")),
        ("B3",),
        (),
    ),
    Case("scale to zero", 0, (1, 0), B(1, 2), ("B2", "B1"), (), message="0/0 updated"),
    Case("zero is healthy", 0, (1, 0), (), (), (), Phase.HEALTHY),
    # --- readiness and done
    Case(
        "minReadySeconds: ready is not yet available",
        1,
        (1, 0),
        (rep("A1"), rep("B1", since=NOW - 4)),
        (),
        (),
        min_ready=10,
        message="0/1 updated and available, 1 old, web-1 available in 6s",
    ),
    Case(
        "minReadySeconds passed",
        1,
        (1, 0),
        (rep("A1"), rep("B1", since=NOW - 10)),
        ("A1",),
        (),
        min_ready=10,
    ),
    Case("done", 3, (1, 0), B(1, 2, 3), (), (), Phase.HEALTHY, message="3/3 updated"),
    Case(
        "several old templates are all old",
        2,
        (1, 0),
        (rep("A1"), rep("C2"), *B(1, 2)),
        ("C2", "A1"),
        (),
    ),
    Case(
        "rollback: the broken new replicas are old now and go, the old template is the target",
        3,
        (1, 0),
        (pending("B1", "running"), pending("B2", "running"), rep("C1"), rep("C2"), rep("C3")),
        ("B2", "B1"),
        (),
        message="3/3 updated and available, 2 old",
    ),
]


def decide(case: Case, **changes: object) -> Decision:
    target = "C" if case.name.startswith("rollback") else "B"
    inp = rollout_input(
        case.desired,
        target,
        replicas=case.replicas,
        now=NOW,
        max_surge=case.limits[0],
        max_unavailable=case.limits[1],
        blocked_slots=case.blocked,
        completed_slots=case.completed,
        min_ready_seconds=case.min_ready,
    )
    inp = replace(inp, **changes)  # type: ignore[arg-type]
    decision = rolling_step(inp)
    check_pass(inp, decision)
    return decision


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_rule(case: Case) -> None:
    decision = decide(case)
    stops = tuple(a.replica_id for a in decision.actions if isinstance(a, Stop))
    creates = tuple(a.slot for a in decision.actions if isinstance(a, Create))
    assert (stops, creates, decision.phase) == (case.stops, case.creates, case.phase), decision
    assert case.message in decision.message
    target = "C" if case.name.startswith("rollback") else "B"
    assert all(a.template == target for a in decision.actions if isinstance(a, Create))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_idempotent_and_order_free(case: Case) -> None:
    """The same observation gives the same decision, whatever order the replicas come in."""
    first = decide(case)
    assert decide(case) == first
    shuffled = list(case.replicas)
    random.Random(7).shuffle(shuffled)
    assert decide(case, replicas=tuple(shuffled)) == first
    shuffled.reverse()
    assert decide(case, replicas=tuple(shuffled)) == first


def test_deadline_fails_a_stalled_rollout() -> None:
    case = CASES[3]  # at the ceiling, waiting for web-1
    on_time = decide(case, last_progress_at=NOW - 600, progress_deadline_seconds=600)
    assert on_time.phase is Phase.PROGRESSING and on_time.failure is None
    late = decide(case, last_progress_at=NOW - 601, progress_deadline_seconds=600)
    assert late.phase is Phase.FAILED
    assert late.failure is not None and "progress deadline exceeded" in late.failure
    assert "601s" in late.failure and "web-1" in late.message
    # Failed carries the same (safe) actions; the reconciler decides whether to roll back.
    assert late.actions == on_time.actions


def test_deadline_counts_only_the_time_the_daemon_watched() -> None:
    """A daemon back after 47 minutes finds a rollout whose new replicas no probe has seen
    yet: a window from its start, not an instant rollback for time nobody watched."""
    case = CASES[3]
    stale = dict(last_progress_at=NOW - 2845, progress_deadline_seconds=600)
    assert decide(case, **stale).phase is Phase.FAILED  # as before, without the start
    back = decide(case, **stale, watching_since=NOW - 3)
    assert back.phase is Phase.PROGRESSING and back.failure is None
    still_stuck = decide(case, **stale, watching_since=NOW - 601)
    assert still_stuck.phase is Phase.FAILED and "601s" in (still_stuck.failure or "")


def test_deadline_does_not_fail_a_finished_rollout() -> None:
    done = next(c for c in CASES if c.name == "done")
    decision = decide(done, last_progress_at=NOW - 10_000, progress_deadline_seconds=600)
    assert decision.phase is Phase.HEALTHY and decision.failure is None


def test_stop_reasons_say_why() -> None:
    case = next(c for c in CASES if c.name == "exited replicas free the ceiling")
    reasons = {a.replica_id: a.reason for a in decide(case).actions if isinstance(a, Stop)}
    assert reasons == {"B1": "exited", "A2": "exited"}
    scale = next(c for c in CASES if c.name == "scale down: highest slot first")
    assert {a.reason for a in decide(scale).actions if isinstance(a, Stop)} == {"scale down"}
    old = next(c for c in CASES if c.name == "old not ready: stopped even at the floor")
    assert [a.reason for a in decide(old).actions if isinstance(a, Stop)] == [
        "old template, not available"
    ]


def test_stops_that_make_room_are_terminating() -> None:
    """At the ceiling, an available old replica stopped to make room does not hold it
    (Kubernetes does not count terminating pods against maxSurge): the executor starts
    the pass's Creates beside its drain and stop. Exited, unavailable and Recreate's stops
    keep the default: their Creates wait for the exit."""
    at_ceiling = next(c for c in CASES if c.name.startswith("at the ceiling, stop down"))
    decision = decide(at_ceiling)
    stops = [a for a in decision.actions if isinstance(a, Stop)]
    assert stops and all(s.terminating_frees_room for s in stops), stops
    assert any(isinstance(a, Create) for a in decision.actions)
    for name in ("exited replicas free the ceiling", "old not ready: stopped even at the floor"):
        case = next(c for c in CASES if c.name == name)
        stops = [a for a in decide(case).actions if isinstance(a, Stop)]
        assert stops and not any(s.terminating_frees_room for s in stops), (name, stops)
    recreate = recreate_step(rollout_input(2, replicas=A(2)))
    assert recreate.actions and not any(
        a.terminating_frees_room for a in recreate.actions if isinstance(a, Stop)
    )


def test_status_line_reads_in_execution_order() -> None:
    refill = next(c for c in CASES if c.name.startswith("at the ceiling, stop down"))
    assert decide(refill).message == (
        "2/5 updated and available, 5 old; stopping 3 old, starting web-3, web-4, web-5"
    )
    cleanup = next(c for c in CASES if c.name == "exited replicas free the ceiling")
    assert decide(cleanup).message == (
        "0/2 updated and available, 1 old; removing 2 exited, starting web-1, web-2"
    )
    holding = next(c for c in CASES if c.name.startswith("a stale ready flag"))
    assert decide(holding).message == (
        "0/2 updated and available, 2 old, node not answering for web-1"
    )
