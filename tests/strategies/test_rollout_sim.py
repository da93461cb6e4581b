"""Rolling and Recreate rollouts run to their end on a simulated cluster, over random cases.

Each pass the simulated reconciler observes the cluster, calls the step function, checks
the decision (``check_pass``: surge ceiling, availability floor, no Create into an occupied
or blocked slot, Stops before Creates), executes it and lets time pass. Replicas become
ready after a random number of passes or never, crash, and lose their node for a while.
"""

from __future__ import annotations

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from strategy_sim import (
    PASS_SECONDS,
    Cluster,
    Reconciler,
    assert_converged,
    available,
    check_cluster,
    check_pass,
    floor_of,
    rollout_input,
    run_to_healthy,
)

from gitorch.strategies import Create, Phase, recreate_step, rolling_step

limit = st.one_of(st.integers(0, 3), st.sampled_from(["0%", "25%", "50%", "100%"]))
SIM = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def chaos(data: st.DataObject, cluster: Cluster, desired: int) -> frozenset[int]:
    """One pass of trouble: maybe a crash, maybe a node lost; slots in back-off."""
    live = sorted(r.id for r in cluster.live() if r.state in ("created", "running"))
    if live:
        if data.draw(st.booleans(), "crash?"):
            cluster.crash(data.draw(st.sampled_from(live), "crash"))
            event("a replica crashed")
        if data.draw(st.integers(0, 3), "lose node?") == 0:
            victim = data.draw(st.sampled_from(live), "lost")
            cluster.lose_node(victim, data.draw(st.integers(1, 3), "silent passes"))
            event("a node went silent")
    if desired == 0:
        return frozenset()
    return frozenset(data.draw(st.sets(st.integers(1, desired), max_size=2), "blocked"))


@SIM
@given(
    data=st.data(),
    desired=st.integers(0, 6),
    old=st.integers(0, 7),
    max_surge=limit,
    max_unavailable=limit,
    min_ready=st.sampled_from([0.0, PASS_SECONDS, 2.5 * PASS_SECONDS]),
    troubled_passes=st.integers(0, 20),
)
def test_rolling_update_keeps_its_limits_and_converges(
    data: st.DataObject,
    desired: int,
    old: int,
    max_surge: int | str,
    max_unavailable: int | str,
    min_ready: float,
    troubled_passes: int,
) -> None:
    cluster = Cluster(readiness=lambda create: data.draw(st.integers(0, 4), "ready after"))
    for slot in range(1, old + 1):
        cluster.add(slot, "A")
    reconciler = Reconciler(
        cluster,
        rollout_input(
            desired,
            max_surge=max_surge,
            max_unavailable=max_unavailable,
            min_ready_seconds=min_ready,
            progress_deadline_seconds=1e9,
        ),
    )
    for _ in range(troubled_passes):
        blocked = chaos(data, cluster, desired)
        inp = reconciler.observe(blocked)
        decision = rolling_step(inp)
        check_pass(inp, decision)
        if any(isinstance(a, Create) and a.slot + 1 in blocked for a in decision.actions):
            event("created next to a blocked slot")
        cluster.execute(decision)
        check_cluster(cluster)
        cluster.tick()
    # Trouble over: every new replica becomes ready in time, silent nodes answer again.
    assert_converged(cluster, run_to_healthy(reconciler, rolling_step))


@SIM
@given(
    data=st.data(),
    desired=st.integers(1, 6),
    max_surge=limit,
    max_unavailable=limit,
)
def test_a_rollout_that_never_gets_ready_fails_and_can_roll_back(
    data: st.DataObject, desired: int, max_surge: int | str, max_unavailable: int | str
) -> None:
    deadline = 12 * PASS_SECONDS
    cluster = Cluster(
        readiness=lambda c: None if c.template == "B" else data.draw(st.integers(0, 3))
    )
    for slot in range(1, desired + 1):
        cluster.add(slot, "A")
    reconciler = Reconciler(
        cluster,
        rollout_input(
            desired,
            max_surge=max_surge,
            max_unavailable=max_unavailable,
            progress_deadline_seconds=deadline,
        ),
    )
    reconciler.begin("B")
    for _ in range(40):
        inp = reconciler.observe()
        decision = rolling_step(inp)
        check_pass(inp, decision)
        # The old replicas are the rollback's capacity: never below the floor.
        assert available(cluster, inp, "A") >= floor_of(inp)
        if decision.phase is Phase.FAILED:
            break
        assert inp.now - inp.started_at <= deadline
        cluster.execute(decision)
        check_cluster(cluster)
        cluster.tick()
    assert decision.phase is Phase.FAILED, decision.message
    assert inp.now - inp.started_at > deadline
    assert decision.failure and "progress deadline exceeded" in decision.failure
    # A rollback is a rollout back to the old template: it wins, the broken ones go.
    reconciler.begin("A")
    assert_converged(cluster, run_to_healthy(reconciler, rolling_step))


@SIM
@given(
    data=st.data(),
    desired=st.integers(1, 6),
    max_surge=limit,
    max_unavailable=limit,
    flip_after=st.integers(0, 8),
)
def test_changing_the_target_mid_rollout_converges_to_the_last_one(
    data: st.DataObject,
    desired: int,
    max_surge: int | str,
    max_unavailable: int | str,
    flip_after: int,
) -> None:
    cluster = Cluster(readiness=lambda create: data.draw(st.integers(0, 3), "ready after"))
    for slot in range(1, desired + 1):
        cluster.add(slot, "A")
    reconciler = Reconciler(
        cluster, rollout_input(desired, max_surge=max_surge, max_unavailable=max_unavailable)
    )
    for _ in range(flip_after):
        inp = reconciler.observe()
        decision = rolling_step(inp)
        check_pass(inp, decision)
        cluster.execute(decision)
        cluster.tick()
    reconciler.begin(data.draw(st.sampled_from(["A", "C"]), "new target"))
    assert_converged(cluster, run_to_healthy(reconciler, rolling_step))


@SIM
@given(data=st.data(), desired=st.integers(0, 5), old=st.integers(0, 6))
def test_recreate_never_runs_two_versions(data: st.DataObject, desired: int, old: int) -> None:
    cluster = Cluster(readiness=lambda create: data.draw(st.integers(0, 3), "ready after"))
    for slot in range(1, old + 1):
        cluster.add(slot, "A")
    reconciler = Reconciler(cluster, rollout_input(desired, progress_deadline_seconds=1e9))
    for _ in range(data.draw(st.integers(0, 12), "troubled passes")):
        blocked = chaos(data, cluster, desired)
        decision = recreate_step(reconciler.observe(blocked))
        cluster.execute(decision)
        check_cluster(cluster)
        # Unknown replicas count: their node may still run them.
        assert {r.template for r in cluster.live()} != {"A", "B"}
        cluster.tick()
    assert_converged(cluster, run_to_healthy(reconciler, recreate_step))
