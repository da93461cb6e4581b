"""The pure decision of a pass (gitorch/decide): isolation, dependencies, back-off, drift.

Pure-logic tests over hand-built live states; the integration tests in tests/reconciler
check the same rules against real daemons and replicas.
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

import pytest
from decide_helpers import healthy_record as healthy
from decide_helpers import load_docs

import gitorch.decide.cluster as cluster_module
from gitorch.decide import PassInput, StartReplica, StopReplica, Wait, decide_pass
from gitorch.decide.backoff import remaining
from gitorch.decide.cluster import changed_services
from gitorch.live.model import AppliedSpec, LiveNode, LiveReplica, LiveService, LiveState
from gitorch.manifests.model import DesiredState
from gitorch.state.records import BackoffRecord, RolloutPhase, RolloutRecord, ServiceBackoff

NOW = 10_000.0
REVISION = "a" * 40


def service_yaml(name: str, *, replicas: int = 2, version: str = "1", extra: str = "") -> str:
    return f"""apiVersion: gitorch.dev/v1
kind: Service
metadata:
  name: {name}
spec:
  command: ["app", "{version}"]
  replicas: {replicas}
  readinessProbe:
    httpGet: {{path: /healthz, port: 8080}}
{extra}"""


def desired(*docs: str) -> DesiredState:
    return load_docs(*docs, revision=REVISION)


def healthy_record(state: DesiredState, name: str) -> RolloutRecord:
    return healthy(state, name, REVISION)


def replica(of: DesiredState, name: str, slot: int, **changes: object) -> LiveReplica:
    base = LiveReplica(
        id=f"{name}-{slot}-id",
        name=f"c-{name}-{slot}",
        service=name,
        replica=f"{name}-{slot}",
        node="n1",
        revision=REVISION,
        template_digest=of.services[name].template_digest,
        state="running",
        started_at=1.0,
        ready=True,
        ready_since=1.0,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def live_of(state: DesiredState, replicas: list[LiveReplica]) -> LiveState:
    services = {}
    for name, svc in state.services.items():
        applied = AppliedSpec(REVISION, svc.template_digest, svc.canonical, "Healthy")
        services[name] = LiveService(name, applied, tuple(r for r in replicas if r.service == name))
    node = LiveNode("n1", "process", True, "127.0.0.1", 8000, 16 * 2**30)
    return LiveState("c", NOW, MappingProxyType({"n1": node}), MappingProxyType(services))


def pass_input(state: DesiredState, live: LiveState, **extra: object) -> PassInput:
    records = {n: healthy_record(state, n) for n in state.services}
    base = PassInput(
        desired=state,
        live=live,
        now=NOW,
        records=MappingProxyType(records),
        applied_services=frozenset(state.services),
    )
    return replace(base, **extra)  # type: ignore[arg-type]


def starts(decision: object, name: str) -> list[StartReplica]:
    return list(decision.starts.get(name, ()))  # type: ignore[attr-defined]


def test_an_error_deciding_one_service_leaves_the_others_deciding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = desired(service_yaml("web"), service_yaml("api"))
    live = live_of(state, [replica(state, "web", 1), replica(state, "api", 1)])
    real = cluster_module.decide_service

    def broken(inp: object) -> object:
        if inp.service.name == "web":  # type: ignore[attr-defined]
            raise ValueError("boom")
        return real(inp)  # type: ignore[arg-type]

    monkeypatch.setattr(cluster_module, "decide_service", broken)
    decision = decide_pass(pass_input(state, live))
    assert [s.replica for s in starts(decision, "api")] == ["api-2"]  # repaired
    assert not starts(decision, "web")
    assert any(
        isinstance(a, Wait) and a.service == "web" and "boom" in a.reason
        for a in decision.actions()
    )


def test_a_dependency_holds_a_rollout_but_not_a_repair() -> None:
    v1 = desired(service_yaml("api"), service_yaml("web", extra="  dependsOn: [api]\n"))
    # Git asks for api v2, which failed and was rolled back, and for web v2.
    v2 = desired(
        service_yaml("api", version="2"),
        service_yaml("web", version="2", extra="  dependsOn: [api]\n"),
    )
    records = {n: healthy_record(v1, n) for n in v1.services}
    records["api"] = replace(
        records["api"],
        phase=RolloutPhase.ROLLED_BACK,
        failed_digest=v2.services["api"].template_digest,
    )
    # web-2 died; web's new version must wait for api, its repair must not.
    live = live_of(v1, [replica(v1, "api", 1), replica(v1, "api", 2), replica(v1, "web", 1)])
    decision = decide_pass(pass_input(v2, live, records=MappingProxyType(records)))
    started = starts(decision, "web")
    assert [s.replica for s in started] == ["web-2"]
    assert started[0].template == v1.services["web"].template_digest  # the running version
    held = decision.services["web"]
    assert held.held_by == ("api",)
    assert any("waits for api" in w.reason for w in held.waits)


def test_a_dead_replica_is_counted_once() -> None:
    state = desired(service_yaml("web"))
    dead = replica(state, "web", 2, state="exited", exit_code=3, ready=False, ready_since=None)
    live = live_of(state, [replica(state, "web", 1), dead])
    first = decide_pass(pass_input(state, live)).services["web"]
    (counted,) = first.backoff
    assert (counted.restarts, counted.replica_id, counted.reason) == (1, dead.id, "exit code 3")
    # The next pass sees the same dead replica (its removal failed): not counted again.
    again = decide_pass(
        pass_input(state, live, backoff=MappingProxyType({"web": ServiceBackoff((counted,))}))
    ).services["web"]
    assert again.backoff == ()
    assert any(
        isinstance(s, StopReplica) and s.replica_id == dead.id and not s.drain for s in again.stops
    )


def test_the_back_off_counts_from_the_exit_when_the_runtime_knows_it() -> None:
    """Kubelet's back-off counts from the container's end: a pass that notices a death
    late (a busy pass, a slow store) does not add its delay to the wait."""
    state = desired(service_yaml("web"))
    dead = replica(
        state,
        "web",
        2,
        state="exited",
        exit_code=137,
        ready=False,
        ready_since=None,
        finished_at=NOW - 0.6,
    )
    live = live_of(state, [replica(state, "web", 1), dead])
    (counted,) = decide_pass(pass_input(state, live)).services["web"].backoff
    assert counted.last_restart_at == NOW - 0.6
    assert remaining(counted, NOW) == pytest.approx(0.4)
    # Unknown (an engine that did not say): from the pass that saw it.
    unknown = replace(dead, finished_at=None)
    (counted,) = decide_pass(pass_input(state, live_of(state, [unknown]))).services["web"].backoff
    assert counted.last_restart_at == NOW and remaining(counted, NOW) == 1.0
    # A clock ahead of the pass's (another host) never makes the wait longer.
    ahead = replace(dead, finished_at=NOW + 5)
    (counted,) = decide_pass(pass_input(state, live_of(state, [ahead]))).services["web"].backoff
    assert counted.last_restart_at == NOW


def test_a_start_preempted_in_the_same_pass_is_not_started() -> None:
    """A lower-priority service placed earlier in the pass (its dependsOn wave comes
    first) may be among the victims a later, higher-priority placement needs. Its replica
    has not started: the pass must not start it, else the node is overcommitted."""
    state = desired(
        service_yaml(
            "db",
            extra="  resources:\n    requests: {cpu: 2500m}\n  placement: {priority: 0}\n",
        ),
        service_yaml(
            "api",
            extra="  resources:\n    requests: {cpu: 5000m}\n  placement: {priority: 100}\n"
            "  dependsOn: [db]\n",
        ),
    )
    # One node of 10 cores: db-2 (2.5) and api-1 (5) run; db-1 and api-2 are gone.
    live = live_of(state, [replica(state, "db", 2), replica(state, "api", 1)])
    live = replace(
        live, nodes=MappingProxyType({"n1": replace(live.nodes["n1"], cpu_millis=10_000)})
    )
    decision = decide_pass(pass_input(state, live))
    cpu = {"db": 2500, "api": 5000}
    stopped = {(p.service, p.replica) for p in decision.preemptions}
    running = {("db", "db-2"), ("api", "api-1")} - stopped
    started = {(s.service, s.replica) for name in ("db", "api") for s in starts(decision, name)}
    # api-2 needs 5 cores: db-1, placed first this pass (db's wave comes first), and db-2.
    assert ("api", "api-2") in started and ("db", "db-2") in stopped
    assert ("db", "db-1") not in started, (started, decision.preemptions)
    assert sum(cpu[svc] for svc, _ in running | started) <= 10_000


def test_a_new_versions_deaths_are_not_the_old_versions_restarts() -> None:
    state = desired(service_yaml("web"))
    old = BackoffRecord("web", 1, 4, NOW - 1, 1, template="0" * 64, replica_id="x", reason="x")
    dead = replica(state, "web", 1, state="exited", exit_code=1, ready=False, ready_since=None)
    decision = decide_pass(
        pass_input(
            state,
            live_of(state, [dead, replica(state, "web", 2)]),
            backoff=MappingProxyType({"web": ServiceBackoff((old,))}),
        )
    ).services["web"]
    (counted,) = decision.backoff
    assert counted.restarts == 1  # a fresh count for this template


@pytest.mark.parametrize("policy", ["correct", "warn", "ignore"])
def test_a_missing_replica_is_drift_to_the_policy(policy: str) -> None:
    state = desired(service_yaml("web", replicas=3, extra=f"  drift: {policy}\n"))
    live = live_of(state, [replica(state, "web", 1), replica(state, "web", 2)])
    decision = decide_pass(pass_input(state, live))
    web = decision.services["web"]
    if policy == "correct":
        assert [s.replica for s in starts(decision, "web")] == ["web-3"]
        return
    assert not starts(decision, "web")
    assert web.record.phase is RolloutPhase.HEALTHY  # settled: the next pass holds it too
    if policy == "warn":
        assert web.drift and "web-3 is missing" in web.record.message
        assert any(e.kind == "drift.detected" for e in web.events)
    else:
        assert not web.drift and not any(e.kind == "drift.detected" for e in web.events)


def test_a_scale_up_in_git_is_not_drift() -> None:
    before = desired(service_yaml("web", replicas=2, extra="  drift: warn\n"))
    after = desired(service_yaml("web", replicas=3, extra="  drift: warn\n"))
    live = live_of(before, [replica(before, "web", 1), replica(before, "web", 2)])
    records = {"web": healthy_record(before, "web")}
    decision = decide_pass(pass_input(after, live, records=MappingProxyType(records)))
    assert [s.replica for s in starts(decision, "web")] == ["web-3"]


@pytest.mark.parametrize("replicas", [1, 4])
def test_a_rolled_back_service_is_scaled_to_what_git_asks(replicas: int) -> None:
    """Git keeps the template that failed (rolled back from) and changes the replica
    count: the spec that runs is scaled to Git's count, as Argo Rollouts scales the stable
    set of an aborted rollout. Found by the chaos soak (seed 2026): web stayed at 3 after
    a scale to 2, and the next canary ran 3 stable replicas beside 2 new ones."""
    v1 = desired(service_yaml("web", replicas=3))
    failed = desired(service_yaml("web", replicas=3, version="2"))
    scaled = desired(service_yaml("web", replicas=replicas, version="2"))
    records = {
        "web": replace(
            healthy_record(v1, "web"),
            phase=RolloutPhase.ROLLED_BACK,
            failed_digest=failed.services["web"].template_digest,
        )
    }
    live = live_of(v1, [replica(v1, "web", n) for n in (1, 2, 3)])
    decision = decide_pass(pass_input(scaled, live, records=MappingProxyType(records)))
    web = decision.services["web"]
    running = v1.services["web"].template_digest
    if replicas < 3:
        stopped = [s.replica for s in web.stops if isinstance(s, StopReplica)]
        assert sorted(stopped) == [f"web-{n}" for n in range(replicas + 1, 4)]
        assert not starts(decision, "web")
    else:
        assert [(s.replica, s.template) for s in starts(decision, "web")] == [
            ("web-4", running)  # more of the version that runs, not of the failed one
        ]
    assert web.record.failed_digest == failed.services["web"].template_digest  # still
    assert web.record.spec["spec"]["replicas"] == replicas


def test_a_focused_pass_decides_its_services_alone_and_keeps_the_other_routes() -> None:
    exposed = (
        "  ports: [{name: http, containerPort: 8080}]\n"
        "  expose: {port: 9100, targetPort: http, protocol: http}\n"
    )
    v1 = desired(
        service_yaml("api", extra=exposed),
        service_yaml("web", extra=exposed.replace("9100", "9101")),
    )
    v2 = desired(
        service_yaml("api", extra=exposed, version="2"),
        service_yaml("web", extra=exposed.replace("9100", "9101")),
    )
    assert changed_services(v1, v2) == {"api"}
    assert changed_services(None, v2) == frozenset()
    # web lost a replica (work for the whole pass), and a service left Git (a prune).
    gone = replace(replica(v1, "api", 1), id="old-1-id", service="old", replica="old-1")
    live = live_of(v1, [replica(v1, "api", 1), replica(v1, "api", 2), replica(v1, "web", 1)])
    live = replace(
        live, services=MappingProxyType({**live.services, "old": LiveService("old", None, (gone,))})
    )
    whole = decide_pass(pass_input(v2, live))
    in_force = whole.table
    assert starts(whole, "web") and whole.prune.stops  # what the whole pass would do

    focused = decide_pass(pass_input(v2, live, only=frozenset({"api"}), in_force=in_force))
    assert set(focused.services) == {"api"} and focused.order == ("api",)
    assert starts(focused, "api") and not starts(focused, "web")
    assert not focused.prune.stops and not focused.prune.forget
    # The table: api's routes as decided now, web's exactly as in force.
    assert set(focused.table.routes) == set(in_force.routes)
    assert focused.table.routes["web"] == in_force.routes["web"]
    assert focused.table.routes["api"] == whole.table.routes["api"]


def test_a_record_updated_is_the_record_replace_makes() -> None:
    """The pass updates records without dataclasses.replace (its per-call walk of the
    fields cost ~15 ms of a 2,000-service pass): the same record, the same errors."""
    from gitorch.decide.service import _record_with

    record = healthy(desired(service_yaml("web")), "web", REVISION)
    changes = {"message": "waiting", "progress_at": 5.0, "phase": RolloutPhase.PROGRESSING}
    made = _record_with(record, changes)
    assert made == replace(record, **changes) and made is not record
    assert record.message != "waiting"  # the original is untouched
    assert not hasattr(RolloutRecord, "__post_init__")  # what the copy relies on
    with pytest.raises(TypeError):
        _record_with(record, {"no_such_field": 1})


def _rolling(version: str) -> str:
    return service_yaml(
        "web",
        replicas=3,
        version=version,
        extra="  strategy:\n    type: RollingUpdate\n"
        "    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}\n",
    )


def test_a_slot_in_back_off_after_a_failed_start_holds_the_surge() -> None:
    """v2 cannot start (its web-1 failed at once and backs off): with maxSurge 1 the pass
    starts no other slot of it; once the back-off is over, web-1 is tried again, alone.
    Before, the failed slot freed its room and web-2, then web-3, were tried at once."""
    v1, v2 = desired(_rolling("1")), desired(_rolling("2"))
    records = MappingProxyType({"web": healthy_record(v1, "web")})
    live = live_of(v1, [replica(v1, "web", slot) for slot in (1, 2, 3)])
    failed = BackoffRecord(
        "web",
        1,
        1,
        NOW - 0.5,
        None,
        template=v2.services["web"].template_digest,
        reason="start failed: no such file: /nonexistent",
    )
    backoff = MappingProxyType({"web": ServiceBackoff((failed,))})
    waiting = decide_pass(pass_input(v2, live, records=records, backoff=backoff))
    assert starts(waiting, "web") == []
    assert waiting.stops() == ()  # no old replica goes for it either
    assert "in back-off: web-1" in waiting.services["web"].record.message
    # The plan says what they are: web-1 never ran, so it did not restart.
    assert [w.reason for w in waiting.services["web"].waits] == [
        "web-1 in back-off after 1 failed start (last: start failed: no such file: /nonexistent)"
    ]
    later = replace(failed, last_restart_at=NOW - 1.5)  # its 1 s are over
    retried = decide_pass(
        pass_input(
            v2, live, records=records, backoff=MappingProxyType({"web": ServiceBackoff((later,))})
        )
    )
    assert [s.replica for s in starts(retried, "web")] == ["web-1"]


def test_a_rollout_past_its_deadline_names_its_last_failure() -> None:
    """The rollback's reason (status, history, the audit log) says why no new replica
    became available, not only that none did: the last failure in the back-off."""
    v1, v2 = desired(_rolling("1")), desired(_rolling("2"))
    web1, web2 = v1.services["web"], v2.services["web"]
    rolling = RolloutRecord(
        service="web",
        revision=REVISION,
        spec_digest=web2.template_digest,
        strategy=web2.strategy.type,
        phase=RolloutPhase.PROGRESSING,
        spec=web2.canonical,
        started_at=NOW - 700,
        progress_at=NOW - 700,
        previous_revision=REVISION,
        previous_digest=web1.template_digest,
        previous_spec=web1.canonical,
    )
    live = live_of(v1, [replica(v1, "web", slot) for slot in (1, 2, 3)])
    failed = BackoffRecord(
        "web",
        1,
        7,
        NOW - 20,
        None,
        template=web2.template_digest,
        reason="start failed: image shop/web:9 is not on node n1 and cannot be pulled",
    )
    decided = decide_pass(
        pass_input(
            v2,
            live,
            records=MappingProxyType({"web": rolling}),
            backoff=MappingProxyType({"web": ServiceBackoff((failed,))}),
        )
    )
    record = decided.services["web"].record
    assert record.phase is RolloutPhase.ROLLED_BACK, record
    assert record.last_error is not None and record.last_error.startswith(
        "progress deadline exceeded: no new replica became available for 700s"
    ), record.last_error
    assert record.last_error.endswith(
        "; last failure: web-1: start failed: image shop/web:9 is not on node n1 and cannot "
        "be pulled"
    ), record.last_error
