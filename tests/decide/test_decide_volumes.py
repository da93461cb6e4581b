"""Volumes in the pure decision of a pass (gitorch/decide/volumes.py): one writer of a
ReadWriteOnce volume at a time, binding, making, releasing, deleting, and a volume removed
by hand. Hand-built live states; tests/reconciler/test_volume_lifecycle.py checks the same against
real daemons, replicas and Docker volumes."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from decide_helpers import healthy_record, load_docs

from gitorch.decide import NodeVerdicts, PassInput, decide_pass
from gitorch.decide.actions import (
    BindVolume,
    CreateVolume,
    DeleteVolume,
    ReleaseVolume,
    StartReplica,
    StopReplica,
    VolumeMissing,
    Wait,
)
from gitorch.decide.cluster import PassDecision
from gitorch.live.model import AppliedSpec, LiveNode, LiveReplica, LiveService, LiveState
from gitorch.manifests.model import DesiredState
from gitorch.runtime.base import VolumeInfo
from gitorch.state.records import BackoffRecord, ServiceBackoff, VolumeRecord

NOW = 10_000.0
REVISION = "b" * 40


def service(name: str, *, version: str = "1", replicas: int = 1, mounts: str = "") -> str:
    return f"""apiVersion: gitorch.dev/v1
kind: Service
metadata:
  name: {name}
spec:
  image: shop/{name}:{version}
  replicas: {replicas}
  volumes: [{mounts}]
"""


def volume(name: str, **spec: str) -> str:
    body = "".join(f"  {k}: {v}\n" for k, v in spec.items()) or "  {}\n"
    return f"apiVersion: gitorch.dev/v1\nkind: Volume\nmetadata:\n  name: {name}\nspec:\n{body}"


WRITES = "{name: data, volume: data, mountPath: /data}"
READS = "{name: data, volume: data, mountPath: /data, readOnly: true}"


def desired(*docs: str) -> DesiredState:
    return load_docs(*docs, revision=REVISION)


def replica(
    name: str, slot: int, template: str, *, node: str = "a", writes: bool = True, **changes: object
) -> LiveReplica:
    base = LiveReplica(
        id=f"{name}-{slot}-{template[:4]}",
        name=f"c-{name}-{slot}",
        service=name,
        replica=f"{name}-{slot}",
        node=node,
        revision=REVISION,
        template_digest=template,
        state="running",
        started_at=1.0,
        ready=True,
        ready_since=1.0,
        volumes=("data",),
        writes=("data",) if writes else (),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def record(
    name: str, node: str, *, spec: dict[str, object] | None = None, **at: float
) -> VolumeRecord:
    return VolumeRecord(
        name,
        node,
        spec or {},
        bound_at=1.0,
        created_at=at.get("created", 2.0),
        released_at=at.get("released"),
        missing_at=at.get("missing"),
    )


def live(
    state: DesiredState,
    replicas: list[LiveReplica],
    *,
    records: list[VolumeRecord] = (),  # type: ignore[assignment]
    on: dict[str, list[str]] | None = None,
    ready: tuple[str, ...] = ("a", "b"),
    applied: DesiredState | None = None,
) -> LiveState:
    services = {}
    for name, svc in (applied or state).services.items():
        spec = AppliedSpec(REVISION, svc.template_digest, svc.canonical, "Healthy")
        services[name] = LiveService(name, spec, tuple(r for r in replicas if r.service == name))
    for r in replicas:
        services.setdefault(r.service, LiveService(r.service, None, (r,)))
    nodes = {n: LiveNode(n, "docker", n in ready, "127.0.0.1", 4000, 8 * 2**30) for n in ("a", "b")}
    on = on if on is not None else {n: [] for n in ready}
    grouped: dict[str, list[VolumeRecord]] = {}
    for r in records:
        grouped.setdefault(r.name, []).append(r)
    return LiveState(
        "c",
        NOW,
        MappingProxyType(nodes),
        MappingProxyType(services),
        volume_records=MappingProxyType({k: tuple(v) for k, v in grouped.items()}),
        volumes_on=MappingProxyType(
            {
                n: MappingProxyType({v: VolumeInfo(v, n, f"h-{v}") for v in vs})
                for n, vs in on.items()
            }
        ),
    )


def base_input(
    state: DesiredState,
    observed: LiveState,
    applied: DesiredState | None = None,
    backoff: dict[str, ServiceBackoff] | None = None,
) -> PassInput:
    records = {n: healthy_record(state, n, REVISION) for n in (applied or state).services}
    return PassInput(
        desired=state,
        live=observed,
        now=NOW,
        records=MappingProxyType(records),
        applied_services=frozenset(records),
        backoff=MappingProxyType(backoff or {}),
    )


def decide(
    state: DesiredState,
    observed: LiveState,
    applied: DesiredState | None = None,
    backoff: dict[str, ServiceBackoff] | None = None,
) -> PassDecision:
    return decide_pass(base_input(state, observed, applied, backoff))


def of(decision: PassDecision, kind: type) -> list:  # type: ignore[type-arg]
    return [a for a in decision.actions() if isinstance(a, kind)]


def test_a_rolling_update_of_a_writer_stops_the_old_replica_before_the_new_one_starts() -> None:
    old = desired(service("db", mounts=WRITES), volume("data"))
    new = desired(service("db", version="2", mounts=WRITES), volume("data"))
    running = replica("db", 1, old.services["db"].template_digest)
    world = live(new, [running], records=[record("data", "a")], on={"a": ["data"], "b": []})
    first = decide(new, world, applied=old)
    assert [(s.replica, s.drain) for s in of(first, StopReplica)] == [("db-1", True)]
    assert of(first, StartReplica) == []  # not while the old writer still runs
    (wait,) = [w for w in of(first, Wait) if "one writer" in w.reason]
    assert wait.reason.startswith(
        f"db-1 ({new.services['db'].template_digest[:12]}) starts once db-1"
    )
    # Once it has stopped, the new one starts, on the volume's node.
    second = decide(
        new, live(new, [], records=[record("data", "a")], on={"a": ["data"], "b": []}), old
    )
    assert [(s.replica, s.node) for s in of(second, StartReplica)] == [("db-1", "a")]
    assert of(second, CreateVolume) == []  # it is there already


def test_a_writer_removed_before_the_starts_does_not_hold_its_replacement() -> None:
    state = desired(service("db", mounts=WRITES), volume("data"))
    digest = state.services["db"].template_digest
    dying = replica("db", 1, digest, needs_restart=True, ready=False)  # liveness failed
    world = live(state, [dying], records=[record("data", "a")], on={"a": ["data"], "b": []})
    # Its death was counted a while ago (its removal failed then): no back-off left.
    counted = BackoffRecord("db", 1, 1, NOW - 100, template=digest, replica_id=dying.id)
    decision = decide(state, world, backoff={"db": ServiceBackoff((counted,))})
    # Removed first (not drained: it serves nothing), so the new writer starts this pass.
    assert [(s.replica, s.drain) for s in of(decision, StopReplica)] == [("db-1", False)]
    assert [s.replica for s in of(decision, StartReplica)] == ["db-1"]
    assert not any("one writer" in w.reason for w in of(decision, Wait))


def test_another_writer_anywhere_holds_a_writer_even_on_a_silent_node() -> None:
    old_app = desired(service("old", mounts=WRITES), volume("data"))
    state = desired(service("new", mounts=WRITES), volume("data"))
    ghost = replica("old", 1, old_app.services["old"].template_digest, state="unknown")
    world = live(state, [ghost], records=[record("data", "a")], on={"a": ["data"], "b": []})
    decision = decide(state, world)
    assert of(decision, StartReplica) == []
    assert any("starts once old-1" in w.reason for w in of(decision, Wait))
    # A reader is no writer: a readOnly mount starts beside it.
    readers = desired(service("new", mounts=READS), volume("data"))
    assert [
        s.replica
        for s in of(
            decide(
                readers,
                live(readers, [ghost], records=[record("data", "a")], on={"a": ["data"], "b": []}),
            ),
            StartReplica,
        )
    ] == ["new-1"]


def test_spec_node_binds_and_makes_the_volume_before_any_user() -> None:
    state = desired(volume("data", node="b"), service("web"))
    decision = decide(state, live(state, []))
    assert of(decision, BindVolume) == [BindVolume("data", "b", "spec.node")]
    assert [(c.volume, c.node) for c in of(decision, CreateVolume)] == [("data", "b")]
    # Made and recorded: nothing more to do.
    done = decide(
        state, live(state, [], records=[record("data", "b")], on={"a": [], "b": ["data"]})
    )
    assert of(done, BindVolume) == of(done, CreateVolume) == []


def test_a_shared_volume_is_made_on_every_node_that_runs_a_user_and_binds_nothing() -> None:
    nfs = volume("data", accessMode="ReadWriteMany", driverOpts="{type: nfs, device: ':/x'}")
    state = desired(nfs, service("web", replicas=2, mounts=WRITES))
    decision = decide(state, live(state, []))
    assert of(decision, BindVolume) == []
    starts = of(decision, StartReplica)
    assert sorted(s.node for s in starts) == ["a", "b"]  # spread, as any service
    assert sorted(c.node for c in of(decision, CreateVolume)) == ["a", "b"]


def test_leaving_git_releases_a_retained_volume_once_and_deletes_the_other_when_unused() -> None:
    state = desired(service("web"))
    retain = {"spec": {"reclaimPolicy": "Retain"}}
    delete = {"spec": {"reclaimPolicy": "Delete"}}
    user = replica("old", 1, "f" * 64, volumes=("scratch",), writes=("scratch",))
    records = [record("keep", "a", spec=retain), record("scratch", "a", spec=delete)]
    on = {"a": ["keep", "scratch"], "b": []}
    decision = decide(state, live(state, [user], records=records, on=on))
    assert [(r.volume, r.node) for r in of(decision, ReleaseVolume)] == [("keep", "a")]
    assert of(decision, DeleteVolume) == []
    assert any(w.service == "Volume/scratch" and "old-1" in w.reason for w in of(decision, Wait))
    assert not decision.settled
    released = [record("keep", "a", spec=retain, released=5.0), record("scratch", "a", spec=delete)]
    after = decide(state, live(state, [], records=released, on=on))
    assert of(after, ReleaseVolume) == []  # once
    assert [(d.volume, d.node) for d in of(after, DeleteVolume)] == [("scratch", "a")]
    # Back in Git: the released volume is bound again where its data is.
    back = desired(
        service("web", mounts="{name: data, volume: keep, mountPath: /d}"), volume("keep")
    )
    again = decide(back, live(back, [], records=released[:1], on=on))
    assert of(again, BindVolume) == [
        BindVolume("keep", "a", "back in Git: the data it kept is its data again")
    ]
    assert [(s.replica, s.node) for s in of(again, StartReplica)] == [("web-1", "a")]


def test_a_volume_removed_by_hand_is_reported_and_never_remade_under_its_users() -> None:
    state = desired(service("db", mounts=WRITES), volume("data"))
    gone = live(state, [], records=[record("data", "a")], on={"a": [], "b": []})
    decision = decide(state, gone)
    assert [(m.volume, m.node) for m in of(decision, VolumeMissing)] == [("data", "a")]
    assert of(decision, CreateVolume) == of(decision, StartReplica) == []
    assert decision.services["db"].record.last_error.startswith("db-1 cannot start: volume data")
    # Its node silent: nothing is known, nothing is reported.
    silent = live(state, [], records=[record("data", "a")], on={"b": []}, ready=("b",))
    assert of(decide(state, silent), VolumeMissing) == []
    # Back (restored by someone): found, and its user starts.
    back = live(state, [], records=[record("data", "a", missing=5.0)], on={"a": ["data"], "b": []})
    found = decide(state, back)
    assert found.volumes.found == (("data", "a"),)
    assert [s.node for s in of(found, StartReplica)] == ["a"]


def test_a_drained_node_keeps_the_replica_its_volume_binds_there() -> None:
    state = desired(service("db", mounts=WRITES), volume("data"), service("web"))
    db = replica("db", 1, state.services["db"].template_digest)
    web = replica("web", 1, state.services["web"].template_digest, volumes=(), writes=())
    world = live(state, [db, web], records=[record("data", "a")], on={"a": ["data"], "b": []})
    base = decide(state, world)
    draining = replace(
        base_input(state, world),
        verdicts=NodeVerdicts(
            cordoned=frozenset({"a"}),
            evicting=MappingProxyType({db.id: "node a is draining", web.id: "node a is draining"}),
        ),
    )
    decision = decide_pass(draining)
    # web moves (a new replica elsewhere first); db cannot: its data is on node a.
    assert [(s.service, s.node) for s in of(decision, StartReplica)] == [("web", "b")]
    assert not any(s.service == "db" for s in of(decision, StopReplica))
    assert any(
        w.reason == "db-1 stays on a (node a is draining): ReadWriteOnce volume data is bound "
        "there, with its data"
        for w in of(decision, Wait)
    )
    assert of(base, StopReplica) == []
