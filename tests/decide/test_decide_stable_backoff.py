"""A progressive rollout's stable replicas crash-loop on their own back-off records.

During a canary (blue-green preview, A/B test) a slot holds a stable and a new replica;
each is recreated after it dies, and each backs off on a record of its own template, so
a stable replica that keeps dying waits longer each time (it was started again at
every pass) and never resets or blocks the slot's new replica. Pure-logic tests over
hand-built live states; tests/progressive/test_canary_e2e.py kills a real one.
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from decide_helpers import load_docs
from test_decide_pass import NOW, REVISION, live_of, pass_input, replica, starts

from gitorch.decide import PassDecision, decide_pass
from gitorch.live.model import LiveReplica
from gitorch.manifests.model import DesiredState
from gitorch.state.records import BackoffRecord, RolloutPhase, RolloutRecord, ServiceBackoff


def _canary(version: str) -> DesiredState:
    return load_docs(
        f"""apiVersion: gitorch.dev/v1
kind: Service
metadata:
  name: web
spec:
  command: ["app", "{version}"]
  replicas: 3
  ports: [{{name: http, containerPort: 8080}}]
  expose: {{port: 8000, targetPort: http, protocol: http}}
  readinessProbe:
    httpGet: {{path: /healthz, port: http}}
  strategy:
    type: Canary
    canary:
      steps:
        - setWeight: 50
        - pause: {{}}
""",
        revision=REVISION,
    )


V1, V2 = _canary("1"), _canary("2")
STABLE, TARGET = V1.services["web"].template_digest, V2.services["web"].template_digest

#: web paused at 50% on its way from V1 to V2 (the step's two canary replicas ready).
PAUSED = RolloutRecord(
    service="web",
    revision=REVISION,
    spec_digest=TARGET,
    strategy="Canary",
    phase=RolloutPhase.PAUSED,
    spec=V2.services["web"].canonical,
    started_at=NOW - 100,
    progress_at=NOW - 50,
    step=1,
    step_started_at=NOW - 50,
    previous_revision=REVISION,
    previous_digest=STABLE,
    previous_spec=V1.services["web"].canonical,
)


def _stable(slot: int, **changes: object) -> LiveReplica:
    return replica(V1, "web", slot, **{"id": f"stable-{slot}", **changes})


def _new(slot: int, **changes: object) -> LiveReplica:
    return replace(replica(V2, "web", slot, id=f"canary-{slot}", **changes), name=f"c-web-{slot}-2")


def _dead_stable(slot: int, replica_id: str = "stable-dead") -> LiveReplica:
    return _stable(
        slot,
        id=replica_id,
        state="exited",
        exit_code=137,
        ready=False,
        ready_since=None,
        finished_at=NOW - 0.2,
    )


def _decide(replicas: list[LiveReplica], *records: BackoffRecord) -> PassDecision:
    live = live_of(V1, replicas)
    return decide_pass(
        pass_input(
            V2,
            live,
            records=MappingProxyType({"web": PAUSED}),
            backoff=MappingProxyType({"web": ServiceBackoff(records)}) if records else {},
        )
    )


def _stable_starts(decision: PassDecision) -> list[str]:
    return [s.replica for s in starts(decision, "web") if s.template == STABLE]


RUNNING = [_stable(1), _stable(2), _new(1), _new(2)]


def test_a_stable_replica_that_died_is_counted_on_its_own_template() -> None:
    decision = _decide([*RUNNING, _dead_stable(3)])
    web = decision.services["web"]
    (counted,) = web.backoff
    assert (counted.slot, counted.template, counted.restarts) == (3, STABLE, 1)
    assert (counted.replica_id, counted.reason) == ("stable-dead", "exit code 137")
    # Its first wait (1 s from the exit) is not over: it is not started yet, and the
    # plan says why, naming the stable version.
    assert _stable_starts(decision) == []
    assert any("web-3 (stable version) in crash-loop back-off" in w.reason for w in web.waits)
    assert web.requeue_after is not None and web.requeue_after <= 0.8 + 1e-9
    (event,) = [e for e in web.events if e.kind == "replica.restarted"]
    assert "stable" in event.message and event.data is not None
    assert event.data["template"] == STABLE


def test_a_stable_replica_waits_longer_after_each_death_then_comes_back_on_its_version() -> None:
    third = BackoffRecord(
        "web", 3, 3, NOW - 3, 137, template=STABLE, replica_id="earlier", reason="exit code 137"
    )
    # Its third death was 3 s ago: a 4 s wait, not over. A fourth death adds to it.
    waiting = _decide([*RUNNING], third)
    assert _stable_starts(waiting) == []
    died_again = _decide([*RUNNING, _dead_stable(3)], third)
    (counted,) = died_again.services["web"].backoff
    assert counted.restarts == 4
    # The wait over, web-3 starts again on the stable version (not the new one).
    over = replace(third, last_restart_at=NOW - 4.5)
    started = _decide([*RUNNING], over)
    assert _stable_starts(started) == ["web-3"]
    assert [s.replica for s in starts(started, "web") if s.template == TARGET] == []
    assert started.services["web"].record.phase is RolloutPhase.PAUSED


def test_the_stable_and_the_new_replica_of_a_slot_back_off_apart() -> None:
    """A canary replica crash-looping in slot 1 does not hold slot 1's stable replica
    (the slot's one record did both before), nor the other way round."""
    canary_loop = BackoffRecord(
        "web", 1, 5, NOW - 1, 1, template=TARGET, replica_id="x", reason="exit code 1"
    )
    stable_loop = BackoffRecord(
        "web", 2, 5, NOW - 1, 1, template=STABLE, replica_id="y", reason="exit code 1"
    )
    # Slot 1 lost its stable replica, slot 2 its canary one.
    decision = _decide([_stable(2), _stable(3), _new(1)], canary_loop, stable_loop)
    assert _stable_starts(decision) == ["web-1"]  # the canary's back-off is not its
    # Slot 2's canary replica is not held by the stable one's back-off either.
    assert [s.replica for s in starts(decision, "web") if s.template == TARGET] == ["web-2"]
    assert decision.services["web"].backoff == ()  # nothing died this pass


def test_a_stable_replica_up_long_enough_is_forgiven_and_other_versions_forgotten() -> None:
    stable_loop = BackoffRecord(
        "web", 3, 2, NOW - 90, 1, template=STABLE, replica_id="y", reason="exit code 1"
    )
    gone = BackoffRecord(
        "web", 2, 4, NOW - 5, 1, template="0" * 64, replica_id="z", reason="exit code 1"
    )
    up = _stable(3, started_at=NOW - 80)  # recreated after the death, up 80 s
    decision = _decide([*RUNNING, up], stable_loop, gone)
    assert decision.services["web"].forgiven == ((2, "0" * 64), (3, STABLE))
    assert _stable_starts(decision) == []


def test_after_promotion_the_stable_records_are_history() -> None:
    """Promoted, the service runs only the new version: the old stable set's records
    count for nothing and are forgotten (they stood until the slot's next death)."""
    healthy = replace(
        PAUSED, phase=RolloutPhase.HEALTHY, reached_healthy=True, step=None, step_started_at=None
    )
    stable_loop = BackoffRecord(
        "web", 3, 2, NOW - 1, 1, template=STABLE, replica_id="y", reason="exit code 1"
    )
    live = live_of(V2, [_new(1), _new(2), _new(3)])
    decision = decide_pass(
        pass_input(
            V2,
            live,
            records=MappingProxyType({"web": healthy}),
            backoff=MappingProxyType({"web": ServiceBackoff((stable_loop,))}),
        )
    )
    assert decision.services["web"].forgiven == ((3, STABLE),)
    assert starts(decision, "web") == []
