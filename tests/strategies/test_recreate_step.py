"""recreate_step: every old replica stops before any new one starts."""

from __future__ import annotations

from dataclasses import replace

from strategy_sim import Cluster, Reconciler, check_cluster, rollout_input

from gitorch.strategies import Create, Phase, ReplicaView, Stop, recreate_step

NOW = 1000.0


def rep(name: str, state: str = "running", ready: bool = True) -> ReplicaView:
    return ReplicaView(name, int(name[1:]), name[0], state, ready, 0.0 if ready else None)


def split(
    replicas: tuple[ReplicaView, ...], **changes: object
) -> tuple[list[str], list[int], Phase]:
    inp = replace(rollout_input(3, replicas=replicas, now=NOW), **changes)  # type: ignore[arg-type]
    decision = recreate_step(inp)
    assert decision == recreate_step(replace(inp, replicas=tuple(reversed(replicas))))
    assert decision.message
    stops = [a.replica_id for a in decision.actions if isinstance(a, Stop)]
    creates = [a.slot for a in decision.actions if isinstance(a, Create)]
    return stops, creates, decision.phase


def test_old_replicas_all_stop_and_nothing_starts() -> None:
    assert split((rep("A1"), rep("A2"), rep("A3"))) == (["A1", "A2", "A3"], [], Phase.PROGRESSING)


def test_an_unknown_old_replica_holds_the_new_ones_back() -> None:
    # Its node may still run it: starting the new version could run both at once.
    assert split((rep("A2", "unknown"), rep("B1"))) == (["A2"], [], Phase.PROGRESSING)


def test_with_no_old_replica_all_free_slots_start_at_once() -> None:
    assert split(()) == ([], [1, 2, 3], Phase.PROGRESSING)
    assert split((rep("B2"),), blocked_slots=frozenset({3})) == ([], [1], Phase.PROGRESSING)


def test_exited_old_replicas_are_gone() -> None:
    assert split((rep("A1", "exited", False),)) == (["A1"], [1, 2, 3], Phase.PROGRESSING)


def test_extra_replicas_stop_without_an_availability_floor() -> None:
    replicas = (rep("B1"), rep("B2"), rep("B3"), rep("B4"), rep("B5"))
    assert split(replicas) == (["B4", "B5"], [], Phase.PROGRESSING)


def test_healthy_and_deadline() -> None:
    assert split((rep("B1"), rep("B2"), rep("B3"))) == ([], [], Phase.HEALTHY)
    late = {"last_progress_at": NOW - 700, "progress_deadline_seconds": 600}
    assert split((rep("B1"), rep("B2", ready=False)), **late)[2] is Phase.FAILED
    assert split((rep("B1"), rep("B2"), rep("B3")), **late)[2] is Phase.HEALTHY


def test_a_whole_recreate_never_runs_two_versions() -> None:
    cluster = Cluster(readiness=lambda create: 2)
    for slot in (1, 2, 3):
        cluster.add(slot, "A")
    reconciler = Reconciler(cluster, rollout_input(3))
    phases = []
    for _ in range(20):
        inp = reconciler.observe()
        decision = recreate_step(inp)
        phases.append(decision.phase)
        if decision.phase is Phase.HEALTHY:
            break
        cluster.execute(decision)
        check_cluster(cluster)
        templates = {r.template for r in cluster.live()}
        assert templates != {"A", "B"}, "old and new alive together"
        cluster.tick()
    assert phases[-1] is Phase.HEALTHY
    assert sorted((r.slot, r.template) for r in cluster.live()) == [(1, "B"), (2, "B"), (3, "B")]
    # stop the old, start the new, two passes until ready, then healthy
    assert len(phases) == 5
