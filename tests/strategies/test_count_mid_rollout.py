"""The replica count moves while a rollout runs (the autoscaler's count, or Git's).

The autoscaler goes on deciding during a rollout, so every strategy is a function of the
count *this pass* asks for: each pass keeps its invariants against that count (surge
ceiling and availability floor for a rolling update; weights its ready replicas carry
for the progressive ones), a stable set grows and shrinks with it while a canary, a
blue-green preview or an A/B test waits, and the rollout converges on the last count.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategy_sim import (
    Cluster,
    ProgressiveReconciler,
    Reconciler,
    assert_converged,
    check_cluster,
    check_pass,
    check_progressive_pass,
    needed_for,
    new_weight,
    rollout_input,
    run_to_healthy,
)

from gitorch.manifests.model import ABTest, BlueGreen, Canary, CanaryStep, MatchRule
from gitorch.strategies import Decision, Phase, RolloutInput, rolling_step
from gitorch.strategies.abtest import abtest_step
from gitorch.strategies.bluegreen import bluegreen_step
from gitorch.strategies.canary import canary_step

SIM = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
limit = st.one_of(st.integers(0, 3), st.sampled_from(["0%", "25%", "50%", "100%"]))
counts = st.integers(1, 7)


def rescale(reconciler: Reconciler, desired: int) -> None:
    """The autoscaler (or a commit) asks for ``desired`` from the next pass on."""
    reconciler.template = replace(reconciler.template, desired=desired)


def live_slots(cluster: Cluster, template: str) -> list[int]:
    return sorted(r.slot for r in cluster.live() if r.template == template)


def rollout_to_b(desired: int, cluster: Cluster | None = None) -> ProgressiveReconciler:
    """``desired`` replicas of A (the stable version) on ``cluster``; a rollout to B begun."""
    cluster = cluster or Cluster()
    for slot in range(1, desired + 1):
        cluster.add(slot, "A")
    reconciler = ProgressiveReconciler(cluster, rollout_input(desired, stable="A"))
    reconciler.begin("B")
    return reconciler


def settle(reconciler: ProgressiveReconciler, step: object, spec: object) -> RolloutInput:
    """Calm passes (every replica ready at once, no promote) until one neither acts nor
    moves on a step: returns that pass's input."""
    for _ in range(20):
        inp = reconciler.observe()
        decision: Decision = step(inp, spec)  # type: ignore[operator]
        check_progressive_pass(inp, decision)
        if not decision.actions and (decision.step or 0) == (inp.step or 0):
            return inp
        reconciler.cluster.execute(decision)
        check_cluster(reconciler.cluster)
        reconciler.record(decision)
        reconciler.cluster.tick()
    raise AssertionError("no quiet pass after 20")


# --- RollingUpdate --------------------------------------------------------------------------


@SIM
@given(
    data=st.data(),
    desired=counts,
    max_surge=limit,
    max_unavailable=limit,
    changes=st.lists(st.tuples(st.integers(0, 6), counts), max_size=4),
)
def test_a_rolling_update_keeps_its_limits_against_a_moving_count_and_converges(
    data: st.DataObject,
    desired: int,
    max_surge: int | str,
    max_unavailable: int | str,
    changes: list[tuple[int, int]],
) -> None:
    cluster = Cluster(readiness=lambda create: data.draw(st.integers(0, 3), "ready after"))
    for slot in range(1, desired + 1):
        cluster.add(slot, "A")
    reconciler = Reconciler(
        cluster,
        rollout_input(desired, max_surge=max_surge, max_unavailable=max_unavailable),
    )
    for after, count in changes:
        for _ in range(after):
            inp = reconciler.observe()
            decision = rolling_step(inp)
            check_pass(inp, decision)  # against the count this pass asks for
            cluster.execute(decision)
            check_cluster(cluster)
            cluster.tick()
        rescale(reconciler, count)
    assert_converged(cluster, run_to_healthy(reconciler, rolling_step))


# --- Canary ---------------------------------------------------------------------------------


@SIM
@given(st.integers(1, 100), counts, st.lists(counts, min_size=1, max_size=4))
def test_a_paused_canary_scales_its_stable_set_and_its_share_with_the_count(
    weight: int, desired: int, moves: list[int]
) -> None:
    """At a pause the canary runs ceil(count x weight) new replicas beside a stable set of
    ``count``, for every count the autoscaler asks for on the way, at the step's weight."""
    spec = Canary(steps=(CanaryStep(set_weight=weight), CanaryStep(is_pause=True)))
    reconciler = rollout_to_b(desired)
    cluster = reconciler.cluster
    for count in [desired, *moves]:
        rescale(reconciler, count)
        inp = settle(reconciler, canary_step, spec)
        decision = canary_step(inp, spec)
        assert decision.phase is Phase.PAUSED, decision.message
        assert live_slots(cluster, "A") == list(range(1, count + 1))
        assert live_slots(cluster, "B") == list(range(1, needed_for(count, weight) + 1))
        assert new_weight(inp, decision) == weight
    reconciler.promote = True
    inp = settle(reconciler, canary_step, spec)
    assert canary_step(inp, spec).phase is Phase.HEALTHY
    assert live_slots(cluster, "B") == list(range(1, moves[-1] + 1))
    assert live_slots(cluster, "A") == []


@SIM
@given(
    st.lists(st.integers(1, 100), min_size=1, max_size=3),
    counts,
    st.data(),
)
def test_a_canary_keeps_its_invariants_while_the_count_moves(
    weights: list[int], desired: int, data: st.DataObject
) -> None:
    """Count changes at random passes, slow readiness, crashes and promotes: every pass
    sends the canary only the weight its ready replicas carry at that pass's count, and
    once all is calm the rollout ends on the last count."""
    steps: list[CanaryStep] = []
    for weight in sorted(weights):
        steps += [CanaryStep(set_weight=weight), CanaryStep(is_pause=True, pause_seconds=10)]
    spec = Canary(steps=tuple(steps))
    cluster = Cluster(readiness=lambda c: data.draw(st.integers(0, 2), "ready in"))
    reconciler = rollout_to_b(desired, cluster)
    for _ in range(40):
        if data.draw(st.integers(0, 4), "rescale?") == 0:
            rescale(reconciler, data.draw(counts, "count"))
        if data.draw(st.integers(0, 8), "promote?") == 0:
            reconciler.promote = True
        running = sorted(r.id for r in cluster.live() if r.state == "running")
        if running and data.draw(st.integers(0, 10), "crash?") == 0:
            cluster.crash(data.draw(st.sampled_from(running), "victim"))
        inp = reconciler.observe()
        decision = canary_step(inp, spec)
        check_progressive_pass(inp, decision)
        assert decision.phase is not Phase.FAILED, decision.message  # no deadline here
        if decision.phase is Phase.HEALTHY:
            break
        cluster.execute(decision)
        check_cluster(cluster)
        reconciler.record(decision)
        cluster.tick()
    cluster.readiness = lambda c: 0
    for _ in range(60):
        inp = reconciler.observe()
        decision = canary_step(inp, spec)
        check_progressive_pass(inp, decision)
        if decision.phase is Phase.HEALTHY and not decision.actions:
            break
        cluster.execute(decision)
        reconciler.record(decision)
        reconciler.promote = decision.phase is Phase.PAUSED
        cluster.tick()
    else:
        raise AssertionError(f"not healthy: {decision.message}")
    assert_converged(cluster, inp)


# --- BlueGreen and ABTest -------------------------------------------------------------------


@SIM
@given(counts, st.lists(counts, min_size=1, max_size=4), st.integers(0, 20))
def test_a_waiting_blue_green_sizes_both_colours_by_the_count(
    desired: int, moves: list[int], delay: int
) -> None:
    spec = BlueGreen(preview_port=8001, scale_down_delay_seconds=delay)
    reconciler = rollout_to_b(desired)
    cluster = reconciler.cluster
    for count in [desired, *moves]:
        rescale(reconciler, count)
        inp = settle(reconciler, bluegreen_step, spec)
        decision = bluegreen_step(inp, spec)
        assert decision.phase is Phase.PAUSED and decision.preview == "B", decision.message
        assert new_weight(inp, decision) == 0
        assert live_slots(cluster, "A") == list(range(1, count + 1))
        assert live_slots(cluster, "B") == list(range(1, count + 1))
    reconciler.promote = True
    for _ in range(20):
        inp = reconciler.observe()
        decision = bluegreen_step(inp, spec)
        check_progressive_pass(inp, decision, capacity=False)
        if decision.phase is Phase.HEALTHY and not decision.actions:
            break
        cluster.execute(decision)
        reconciler.record(decision)
        cluster.tick()
    assert live_slots(cluster, "B") == list(range(1, moves[-1] + 1))
    assert live_slots(cluster, "A") == []


@SIM
@given(counts, st.lists(counts, min_size=1, max_size=4))
def test_a_running_ab_test_sizes_both_versions_by_the_count(desired: int, moves: list[int]) -> None:
    rules = (MatchRule(header="X-Variant", exact="b"),)
    spec = ABTest(match=rules, duration_seconds=3600, promote=True)
    reconciler = rollout_to_b(desired)
    cluster = reconciler.cluster
    for count in [desired, *moves]:
        rescale(reconciler, count)
        inp = settle(reconciler, abtest_step, spec)
        decision = abtest_step(inp, spec)
        assert decision.match == rules, decision.message  # the test runs throughout
        assert live_slots(cluster, "A") == list(range(1, count + 1))
        assert live_slots(cluster, "B") == list(range(1, count + 1))
    reconciler.promote = True
    inp = settle(reconciler, abtest_step, spec)
    assert abtest_step(inp, spec).phase is Phase.HEALTHY
    assert live_slots(cluster, "B") == list(range(1, moves[-1] + 1))
    assert live_slots(cluster, "A") == []
