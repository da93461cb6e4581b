"""Desired state vs live state -> :class:`Plan`. Pure: no I/O, same input, same plan."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from gitorch.decide.cluster import PassDecision, runnable_drivers
from gitorch.decide.nodepools import pools_that_fit, starting_replicas
from gitorch.decide.nodes import node_views
from gitorch.decide.vertical import recommendation_lines
from gitorch.decide.volumes import (
    bound_nodes,
    place_service,
    single_writer_volumes,
    volume_constraint,
)
from gitorch.decide.waves import dependency_waves
from gitorch.diff.fields import FieldChange, diff_objects, object_leaves
from gitorch.diff.plan import (
    AutoscaledItem,
    DriftItem,
    ObjectChange,
    PlacementItem,
    Plan,
    Unschedulable,
)
from gitorch.live.model import LiveService, LiveState
from gitorch.manifests.build import priority_and_qos_of, requests_of, template_digest_of
from gitorch.manifests.model import DesiredState, Placement, Service
from gitorch.scheduler import LEAST_ALLOCATED, Placer, Request, Running
from gitorch.scheduler import Decision as SchedulerDecision
from gitorch.strategies.preview import (
    RolloutPreview,
    preview_create,
    preview_delete,
    preview_scale,
    preview_update,
)

_KIND_ORDER = {"Node": 0, "NodePool": 1, "Volume": 2, "Service": 3}


def _applied_canonical(
    live: LiveState, kind: str, name: str
) -> tuple[Mapping[str, Any] | None, str | None]:
    if kind == "Service":
        service = live.services.get(name)
        if service is not None and service.applied is not None:
            return service.applied.canonical, service.applied.revision
    entry = live.inventory.get((kind, name))
    if entry is not None:
        return entry.canonical, entry.revision
    return None, None


def _service_change(
    service: Service,
    live_service: LiveService | None,
    applied: Mapping[str, Any] | None,
    revision: str | None,
    single_writer: tuple[str, ...] = (),
) -> ObjectChange | None:
    running = len(live_service.running) if live_service else 0
    if applied is None:
        diff = object_leaves(service.canonical, "add")
        return ObjectChange(
            "Service", service.name, "create", diff, preview_create(service), True, None
        )
    diff_list: list[FieldChange] = diff_objects(applied, service.canonical)
    autoscaled = service.autoscale is not None and "autoscale" in applied.get("spec", {})
    if autoscaled:
        diff_list = [c for c in diff_list if c.path != "spec.replicas"]
    if not diff_list:
        return None
    replaces = template_digest_of(applied) != service.template_digest
    applied_replicas = applied.get("spec", {}).get("replicas", 0)
    rollout: RolloutPreview
    if replaces:
        rollout = preview_update(service, running, single_writer)
    elif not autoscaled and applied_replicas != service.replicas:
        rollout = preview_scale(applied_replicas, service.replicas)
    else:
        rollout = RolloutPreview("InPlace", ("configuration only: no replica is restarted",))
    return ObjectChange(
        "Service", service.name, "update", tuple(diff_list), rollout, replaces, revision
    )


def _drift(live: LiveState, desired: DesiredState) -> list[DriftItem]:
    items: list[DriftItem] = []
    for name, live_service in sorted(live.services.items()):
        applied = live_service.applied
        desired_service = desired.services.get(name)
        if applied is None:
            if live_service.replicas:
                items.append(
                    DriftItem(
                        name,
                        "correct",
                        f"{len(live_service.replicas)} replica(s) labelled for this cluster but not in the "
                        "inventory (left by an interrupted apply): they will be removed",
                        tuple(r.replica for r in live_service.replicas),
                    )
                )
            continue
        spec = applied.canonical.get("spec", {})
        policy = (
            desired_service.drift if desired_service is not None else spec.get("drift", "correct")
        )
        if applied.phase in ("Progressing", "Paused"):
            continue  # replicas of two versions are expected mid-rollout
        unknown = live.unknown_nodes
        running = [r for r in live_service.replicas if r.state == "running"]
        if "autoscale" not in spec:
            want = spec.get("replicas", 0)
            if len(running) < want and not unknown:
                items.append(
                    DriftItem(
                        name, policy, f"only {len(running)} of {want} applied replicas are running"
                    )
                )
            elif len(running) > want:
                extra = tuple(r.replica for r in running[want:])
                items.append(
                    DriftItem(
                        name, policy, f"{len(running)} replicas running, {want} applied", extra
                    )
                )
        restart = spec.get("restartPolicy", "Always")
        for replica in live_service.replicas:
            if replica.state == "exited" and not (restart != "Always" and replica.exit_code == 0):
                code = "" if replica.exit_code is None else f" (exit code {replica.exit_code})"
                items.append(
                    DriftItem(
                        name, policy, f"replica {replica.replica} exited{code}", (replica.replica,)
                    )
                )
        stale = tuple(
            r.replica for r in running if r.template_digest and r.template_digest != applied.digest
        )
        if stale:
            items.append(
                DriftItem(
                    name,
                    policy,
                    f"{len(stale)} replica(s) run a spec other than the one applied",
                    stale,
                )
            )
        image = spec.get("image")
        changed = tuple(r.replica for r in running if image and r.image and r.image != image)
        if changed:
            items.append(
                DriftItem(
                    name,
                    policy,
                    f"{len(changed)} replica(s) run an image other than {image}",
                    changed,
                )
            )
    return items


def compute_plan(
    desired: DesiredState,
    live: LiveState,
    *,
    scoring: str = LEAST_ALLOCATED,
    decision: PassDecision | None = None,
) -> Plan:
    """The plan that takes ``live`` to ``desired``: every field change, where replicas
    will land, drift; with ``decision`` (the next pass, :func:`gitorch.decide.decide_pass`)
    also the actions that pass executes."""
    base = revision_plan(desired, live)
    changes = list(base.changes)
    waves = dependency_waves(desired.services)
    placements, unschedulable = _placements(desired, live, changes, scoring, waves)
    changed_services = {c.name for c in changes if c.kind == "Service" and c.action != "delete"}
    order = tuple(tuple(name for name in wave if name in changed_services) for wave in waves)
    warnings = (
        tuple(
            f"node {name} is NotReady ({live.nodes[name].message or 'no answer'}): its replicas are unknown"
            for name in sorted(live.unknown_nodes)
        )
        + tuple(
            f"volume {m.volume} is missing on {m.node}: {m.reason}"
            for m in (decision.volumes.missing if decision is not None else ())
        )
        + tuple(_volume_warnings(desired, live))
        + tuple(_pool_warnings(desired, live, decision))
    )
    return replace(
        base,
        placements=placements,
        unschedulable=unschedulable,
        order=tuple(wave for wave in order if wave),
        warnings=warnings,
        actions=decision.actions() if decision is not None else (),
        autoscaled=tuple(_autoscaled(desired, live)),
        ingresses=tuple(decision.ingress.hosts.values()) if decision is not None else (),
    )


def revision_plan(desired: DesiredState, live: LiveState) -> Plan:
    """What a revision's record keeps of its plan: every field change and the drift,
    without placements (the pass that records it placed its replicas already; placing
    them again against 4,000 running replicas took a tenth of a second of every new
    revision)."""
    changes, unchanged = object_changes(desired, live)
    return Plan(
        revision=desired.revision,
        base_revision=live.last_applied_revision,
        path=desired.root_path,
        changes=tuple(changes),
        drift=tuple(_drift(live, desired)),
        placements=(),
        unschedulable=(),
        order=(),
        unchanged=tuple(sorted(unchanged)),
    )


def object_changes(desired: DesiredState, live: LiveState) -> tuple[list[ObjectChange], list[str]]:
    """Every object's field changes from ``live`` to ``desired`` (by kind, then name) and
    the objects that do not change."""
    changes: list[ObjectChange] = []
    unchanged: list[str] = []
    desired_objects = desired.objects()
    desired_keys = {(o.kind, o.name) for o in desired_objects}
    for obj in desired_objects:
        applied, revision = _applied_canonical(live, obj.kind, obj.name)
        if isinstance(obj, Service):
            change = _service_change(
                obj,
                live.services.get(obj.name),
                applied,
                revision,
                single_writer_volumes(obj, desired),
            )
        elif applied is None:
            change = ObjectChange(obj.kind, obj.name, "create", object_leaves(obj.canonical, "add"))
        else:
            diff = tuple(diff_objects(applied, obj.canonical))
            change = (
                ObjectChange(obj.kind, obj.name, "update", diff, applied_revision=revision)
                if diff
                else None
            )
        if change is None:
            unchanged.append(f"{obj.kind}/{obj.name}")
        else:
            changes.append(change)

    applied_keys = set(live.inventory) | {
        ("Service", n) for n, s in live.services.items() if s.applied
    }
    for kind, name in sorted(
        applied_keys - desired_keys, key=lambda k: (_KIND_ORDER.get(k[0], 9), k[1])
    ):
        canonical, revision = _applied_canonical(live, kind, name)
        running = (
            len(live.services[name].running) if kind == "Service" and name in live.services else 0
        )
        rollout = preview_delete(name, running) if kind == "Service" else None
        removed = object_leaves(canonical, "remove") if canonical is not None else ()
        changes.append(ObjectChange(kind, name, "delete", removed, rollout, False, revision))
    return sorted(changes, key=lambda c: (_KIND_ORDER.get(c.kind, 9), c.name)), unchanged


def _pool_warnings(
    desired: DesiredState, live: LiveState, decision: PassDecision | None
) -> list[str]:
    """Replicas no node takes that a NodePool's node would: the daemon makes one."""
    if decision is None or not decision.unplaced or not desired.node_pools:
        return []
    fits = pools_that_fit(desired, live, decision.unplaced, starting_replicas(desired, decision))
    return [
        f"{replica} fits no node now; a node of NodePool {pool} would take it (`gitorch "
        f"daemon` makes one once it waited {desired.node_pools[pool].scale_up_after:g}s; "
        "`gitorch apply` makes none)"
        for replica, pool in sorted(fits.items())
    ]


def _autoscaled(desired: DesiredState, live: LiveState) -> list[AutoscaledItem]:
    """Every service Git asks to autoscale, with the autoscaler's count and bounds."""
    items: list[AutoscaledItem] = []
    for name, service in sorted(desired.services.items()):
        auto = service.autoscale
        if auto is None:
            continue
        record = live.autoscalers.get(name)
        live_service = live.services.get(name)
        running = len(live_service.running) if live_service is not None else 0
        desired_count = (
            max(auto.min_replicas, min(auto.max_replicas, record.desired))
            if record is not None
            else None
        )
        readings = tuple(
            f"{m.get('metric')} {m.get('value')}/{m.get('target')} -> {m.get('proposal')}"
            if m.get("value") is not None
            else f"{m.get('metric')} not measured ({m.get('message') or 'no reading'})"
            for m in (record.metrics if record is not None else ())
        )
        items.append(
            AutoscaledItem(
                name,
                auto.min_replicas,
                auto.max_replicas,
                desired_count,
                running,
                service.replicas,
                record.reason if record is not None else "",
                readings,
                recommendation_lines(
                    auto.vertical.mode,
                    service.canonical["spec"]["resources"].get("requests", {}),
                    record.usage.get("recommendation") if record is not None else None,
                    record.usage.get("applied") if record is not None else None,
                )
                if auto.vertical is not None
                else (),
            )
        )
    return items


def _volume_warnings(desired: DesiredState, live: LiveState) -> list[str]:
    """A bound volume whose spec.node now names another node: it stays with its data."""
    found: list[str] = []
    for name, volume in sorted(desired.volumes.items()):
        records = live.volume_records.get(name, ())
        if volume.single_node and volume.node and records and records[0].node != volume.node:
            found.append(
                f"volume {name} stays on {records[0].node}, where its data is: spec.node "
                f"{volume.node} applies to a volume made anew (`gitorch volumes --reset` of a "
                "missing one), gitorch does not move data"
            )
    return found


def _placements(
    desired: DesiredState,
    live: LiveState,
    changes: list[ObjectChange],
    scoring: str,
    waves: list[list[str]],
) -> tuple[tuple[PlacementItem, ...], tuple[Unschedulable, ...]]:
    """Where new replicas would go, against the cluster as it will be after the rollout
    (``waves``: the services' dependsOn waves)."""
    nodes = node_views(live)
    by_name = {c.name: c for c in changes if c.kind == "Service"}
    replaced = {name for name, c in by_name.items() if c.action == "delete" or c.replaces_replicas}
    running: list[Running] = []
    for name, live_service in live.services.items():
        if name in replaced:
            continue
        canonical = live_service.applied.canonical if live_service.applied else None
        cpu, mem = requests_of(canonical)
        priority, qos = priority_and_qos_of(canonical)
        running.extend(
            Running(name, r.replica, r.node, cpu, mem, priority, qos) for r in live_service.running
        )

    requests: list[tuple[Service, list[Request]]] = []
    services = desired.services
    # apply rolls services wave by wave (dependsOn), so replicas are placed in that order;
    # within a wave, higher priority first.
    wave_of = {name: i for i, wave in enumerate(waves) for name in wave}
    ranked = sorted(
        (name for name in by_name if name in services),
        key=lambda n: (wave_of[n], -services[n].placement.priority, n),
    )
    for name in ranked:
        change, service = by_name[name], services[name]
        cpu = service.resources.requests.cpu_millis or 0
        mem = service.resources.requests.memory_bytes or 0
        placement: Placement = service.placement
        if change.action == "create" or change.replaces_replicas:
            slots = range(1, service.replicas + 1)
        elif service.autoscale is None:
            have = len(live.services[name].running) if name in live.services else 0
            slots = range(have + 1, service.replicas + 1)
        else:
            slots = range(0)
        qos = service.resources.qos_class
        drivers = runnable_drivers(service)
        requests.append(
            (
                service,
                [Request(name, f"{name}-{i}", cpu, mem, placement, qos, drivers) for i in slots],
            )
        )

    # Service by service, as a pass places them: each placement counts against the next,
    # a preempted replica leaves, and a volume bound by a first placement pins the rest.
    bound = bound_nodes(desired, live)
    decisions: list[SchedulerDecision] = []
    placer = Placer(nodes, running)  # one cluster state for all: placements count on
    for service, batch in requests:
        constraint = volume_constraint(service, desired, bound)
        outcome = place_service(placer, running, batch, constraint, bound, scoring=scoring)
        decisions.extend(outcome)
        evicted = any(where.victims for where in outcome)
        for request, where in zip(batch, outcome, strict=True):
            if where.node is None:
                continue
            if where.victims:  # a victim leaves with every replica of its name
                gone = {(s, r) for s, r, _ in where.victims}
                running = [r for r in running if (r.service, r.replica) not in gone]
            running.append(
                Running(
                    request.service,
                    request.replica,
                    where.node,
                    request.cpu_millis,
                    request.memory_bytes,
                    request.priority,
                    request.qos,
                )
            )
        if evicted:
            placer.restart(running)
    # A replica placed earlier here and then chosen as a victim is not started (the pass
    # withdraws its start: decide/cluster.py), so it is listed as not placed, and why.
    preempted_by = {v: d.replica for d in decisions for v in d.victims}
    placed = tuple(
        PlacementItem(
            d.service, d.replica, d.node, tuple(f"{s}/{r} on {n}" for s, r, n in d.victims)
        )
        for d in decisions
        if d.node is not None and (d.service, d.replica, d.node) not in preempted_by
    )
    failed = tuple(
        Unschedulable(d.service, d.replica, d.reasons, d.reason_counts)
        if d.node is None
        else Unschedulable(
            d.service,
            d.replica,
            (f"preempted for {preempted_by[(d.service, d.replica, d.node)]} before it started",),
        )
        for d in decisions
        if d.node is None or (d.service, d.replica, d.node) in preempted_by
    )
    return placed, failed
