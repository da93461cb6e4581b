"""Where a new rollout starts from: the last *good* spec, also when the commit lands while
the good one is being repaired.

Found by the chaos soak (seed 2101): web (Canary) Healthy on v5, one replica killed, and
v6 committed while the replacement was pending. The repair had moved the record to
Progressing, and a new rollout took its stable version from a record that is not
Healthy as the record's own *previous* one (v4): the canary's stable set became v4, the
running v5 replicas were "neither stable nor target" (no weight, stopped), and web
answered 503 until the next pass that could start replicas. Pure-logic tests; the soak is
bench/soak.py.
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from decide_helpers import healthy_record
from test_decide_pass import NOW, REVISION, live_of, pass_input, replica, starts
from test_decide_stable_backoff import _canary

from gitorch.decide import StopReplica, decide_pass
from gitorch.live.model import LiveState
from gitorch.state.records import RolloutPhase, RolloutRecord

V4, V5, V6 = _canary("4"), _canary("5"), _canary("6")
GOOD, OLD, NEW = (v.services["web"].template_digest for v in (V5, V4, V6))


def test_a_commit_during_a_repair_rolls_out_from_the_version_being_repaired() -> None:
    # web converged on v5 (rolled out from v4), then web-2 died.
    healthy = replace(
        healthy_record(V5, "web", REVISION),
        previous_revision=REVISION,
        previous_digest=OLD,
        previous_spec=V4.services["web"].canonical,
    )
    dead = replica(V5, "web", 2, state="exited", exit_code=137, ready=False, ready_since=None)
    live = live_of(V5, [replica(V5, "web", 1), replica(V5, "web", 3), dead])
    repairing = decide_pass(pass_input(V5, live, records=MappingProxyType({"web": healthy})))
    record = repairing.services["web"].record
    assert record.reached_healthy and record.spec_digest == GOOD
    # v6 is committed while web-2's replacement waits: the canary's stable set is v5.
    live = live_of(V5, [replica(V5, "web", 1), replica(V5, "web", 3)])
    decision = decide_pass(pass_input(V6, live, records=MappingProxyType({"web": record})))
    web = decision.services["web"]
    assert web.record.previous_digest == GOOD, "the stable version is the one running"
    assert web.record.phase is RolloutPhase.PROGRESSING
    assert not [s for s in web.stops if isinstance(s, StopReplica)], web.stops
    assert web.traffic is not None and web.traffic.weights.get(GOOD) == 100
    # The missing stable replica (v5) and the canary's two (50% of 3: v6) start.
    started = sorted((s.replica, s.template) for s in starts(decision, "web"))
    assert started == sorted([("web-1", NEW), ("web-2", NEW), ("web-2", GOOD)])


def _v5_rolling_out_from_v4(started_at: float) -> RolloutRecord:
    return replace(
        healthy_record(V5, "web", REVISION),
        phase=RolloutPhase.PROGRESSING,
        reached_healthy=False,
        previous_revision=REVISION,
        previous_digest=OLD,
        previous_spec=V4.services["web"].canonical,
        started_at=started_at,
        progress_at=NOW - 5,
    )


def test_a_commit_mid_rollout_still_rolls_out_from_the_last_good_version() -> None:
    """v5 rolling out from v4 and not yet Healthy: v6 replaces it, and the stable set
    stays v4 (v5 never proved good)."""
    rolling = _v5_rolling_out_from_v4(started_at=NOW - 5)
    live = live_of(V4, [replica(V4, "web", slot) for slot in (1, 2, 3)])
    decision = decide_pass(pass_input(V6, live, records=MappingProxyType({"web": rolling})))
    assert decision.services["web"].record.previous_digest == OLD


def _promoted(live_old_slots: tuple[int, ...]) -> tuple[RolloutRecord, LiveState, set[str]]:
    """v5 canaried from v4, promoted (weight 100, past its last step), not yet Healthy:
    the record as stored before the pass that stops the old replicas runs (a daemon
    killed then, or a commit that lands while they drain)."""
    record = replace(_v5_rolling_out_from_v4(started_at=NOW - 60), step=2, weight=100)
    old = [replica(V4, "web", slot, id=f"web-{slot}-v4") for slot in live_old_slots]
    live = live_of(V5, [replica(V5, "web", slot) for slot in (1, 2, 3)] + old)
    return record, live, {r.id for r in old}


def test_a_commit_after_a_promotion_rolls_out_from_the_promoted_version() -> None:
    """Found by the chaos soak (seed 2401): web promoted to v5 (all traffic, the v4
    replicas stopped), the daemon killed before the record said Healthy, v6 committed.
    The new canary took v4 as its stable version: it stopped the three v5 replicas that
    served everything and started v4 ones: 3 s of "no backend available for web"."""
    record, live, _ = _promoted(live_old_slots=())
    decision = decide_pass(pass_input(V6, live, records=MappingProxyType({"web": record})))
    web = decision.services["web"]
    assert web.record.previous_digest == GOOD, "the stable version is the one serving"
    assert not web.stops, web.stops
    assert web.traffic is not None and web.traffic.weights.get(GOOD) == 100
    started = sorted((s.replica, s.template) for s in starts(decision, "web"))
    assert started == [("web-1", NEW), ("web-2", NEW)]


def test_a_commit_while_the_promoted_versions_old_replicas_drain_stops_only_those() -> None:
    record, live, old = _promoted(live_old_slots=(1, 2))
    decision = decide_pass(pass_input(V6, live, records=MappingProxyType({"web": record})))
    web = decision.services["web"]
    assert web.record.previous_digest == GOOD
    stopped = {s.replica_id for s in web.stops if isinstance(s, StopReplica)}
    assert stopped == old
    assert web.traffic is not None and web.traffic.weights.get(GOOD) == 100


def test_a_commit_during_a_canary_below_all_traffic_keeps_the_last_good_version() -> None:
    record, live, _ = _promoted(live_old_slots=(1, 2, 3))
    record = replace(record, step=1, weight=50)
    decision = decide_pass(pass_input(V6, live, records=MappingProxyType({"web": record})))
    web = decision.services["web"]
    assert web.record.previous_digest == OLD, "v5 never had all the traffic"
    stopped = {s.replica_id for s in web.stops if isinstance(s, StopReplica)}
    assert stopped == {f"web-{slot}-id" for slot in (1, 2, 3)}, "the v5 canary stops"
