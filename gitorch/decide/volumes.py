"""Volumes in a reconcile pass, decided: pure.

Rules, stated once:

* **Binding.** A ReadWriteOnce volume lives on one node: the node its record names (its
  data is there), else ``spec.node``, else the node its first user is placed on this pass.
  Its users are placed only there (:func:`volume_constraint`); when that node is full,
  cordoned, NotReady or gone, the scheduler's reasons say so. A volume on a backend that
  can share is made on every node that runs a user, and binds nothing.
* **Before its first user.** A volume is made on a node before a replica that mounts it
  starts there (:class:`CreateVolume` runs before the starts); one with ``spec.node`` is
  made at once.
* **One writer.** A replica that writes a ReadWriteOnce volume starts only once no other
  writer of it is alive (running, starting, or on a node that does not answer), except
  one this pass removes before it starts anything: RollingUpdate with such a volume is
  maxSurge 0, and the old replica has stopped before the new one starts.
* **Drift.** A volume gitorch made that is gone from its node was removed outside gitorch:
  it is reported (:class:`VolumeMissing`), and its users are never started on a new,
  empty one; ``gitorch volumes --reset NAME`` forgets it so the next pass makes it anew.
* **Leaving Git.** reclaimPolicy Retain releases the volume (kept with its data; a Volume
  of the same name binds it again), Delete removes it once none of its users is left.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

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
from gitorch.live.model import LiveState
from gitorch.manifests.model import DesiredState, Service, Volume
from gitorch.scheduler import Decision, Placer, Request, Running

#: Replica states that may be writing (an unknown one's node may still run it).
ALIVE = ("running", "created", "unknown")


def volume_label(service: Service) -> str:
    """The replica label naming its Volumes and how it mounts them: ``data:rw,cfg:ro``."""
    return ",".join(
        f"{m.volume}:{'ro' if m.read_only else 'rw'}"
        for m in sorted(service.volumes, key=lambda m: m.volume)
    )


def single_writer_volumes(service: Service, desired: DesiredState) -> tuple[str, ...]:
    """The ReadWriteOnce volumes ``service`` writes (it may run one replica at a time)."""
    if not service.volumes:
        return ()  # most services (a pass and a plan ask for each one)
    return tuple(
        sorted(
            m.volume
            for m in service.volumes
            if not m.read_only
            and m.volume in desired.volumes
            and desired.volumes[m.volume].single_node
        )
    )


def bound_nodes(desired: DesiredState, live: LiveState) -> dict[str, str]:
    """ReadWriteOnce volume -> the node it is bound to: its record's (the data is there),
    else its ``spec.node``. Unbound volumes are absent (bound where first used)."""
    bound: dict[str, str] = {}
    for name, volume in desired.volumes.items():
        if not volume.single_node:
            continue
        records = live.volume_records.get(name, ())
        if records:
            bound[name] = records[0].node
        elif volume.node is not None:
            bound[name] = volume.node
    return bound


@dataclass(frozen=True)
class VolumeConstraint:
    """Where a service's replicas may go because of its volumes."""

    nodes: frozenset[str] = frozenset()  # empty: anywhere
    reason: str = ""
    unbound: tuple[str, ...] = ()  # ReadWriteOnce volumes bound where its first replica goes
    docker_only: bool = False  # a Docker volume driver: docker nodes only


#: The constraint of a service that mounts no volume: none.
UNCONSTRAINED = VolumeConstraint()


def volume_constraint(
    service: Service, desired: DesiredState, bound: Mapping[str, str]
) -> VolumeConstraint:
    """The nodes ``service`` may run on given the volumes it mounts."""
    if not service.volumes:
        return UNCONSTRAINED  # most services (a pass and a plan ask for each one)
    nodes: set[str] | None = None
    reasons: list[str] = []
    unbound: list[str] = []
    docker_only = False
    for mount in service.volumes:
        volume = desired.volumes.get(mount.volume)
        if volume is None:
            continue
        docker_only = docker_only or volume.docker_only
        if not volume.single_node:
            continue
        node = bound.get(volume.name)
        if node is None:
            unbound.append(volume.name)
            continue
        nodes = {node} if nodes is None else nodes & {node}
        reasons.append(f"ReadWriteOnce volume {volume.name} is bound to node {node}")
    return VolumeConstraint(
        frozenset(nodes) if nodes is not None else frozenset(),
        "; ".join(reasons),
        tuple(sorted(set(unbound))),
        docker_only,
    )


def constrained(request: Request, constraint: VolumeConstraint) -> Request:
    """``request`` limited to the nodes its volumes allow."""
    if not (constraint.nodes or constraint.reason or constraint.docker_only) and not (
        request.nodes or request.nodes_reason
    ):
        return request  # no volume constrains it: the request as it is (most services)
    drivers = request.drivers
    if constraint.docker_only:
        drivers = frozenset({"docker"}) if not drivers else drivers & frozenset({"docker"})
        drivers = drivers or frozenset({"docker"})
    nodes = constraint.nodes
    if not constraint.nodes and constraint.reason:
        nodes = frozenset({""})  # two volumes bound to two nodes: nowhere
    return Request(
        request.service,
        request.replica,
        request.cpu_millis,
        request.memory_bytes,
        request.placement,
        request.qos,
        drivers=drivers,
        nodes=nodes,
        nodes_reason=constraint.reason,
    )


def place_service(
    placer: Placer,
    running: Sequence[Running],
    requests: Sequence[Request],
    constraint: VolumeConstraint,
    bound: dict[str, str],
    *,
    scoring: str,
    preemption: bool = True,
) -> list[Decision]:
    """Place one service's requests within its volumes' nodes, on ``placer`` (which holds
    ``running``, and keeps what is placed here). A ReadWriteOnce volume not bound yet is
    bound (in ``bound``) where the first replica lands, and the others follow it there."""
    if not requests:
        return []
    placed_requests = [constrained(r, constraint) for r in requests]
    if not constraint.unbound:
        return placer.place(placed_requests, strategy=scoring, preemption=preemption)
    first = placer.place(placed_requests[:1], strategy=scoring, preemption=preemption)
    where = first[0].node
    if where is None:
        rest = placer.place(placed_requests[1:], strategy=scoring, preemption=preemption)
        return [*first, *rest]
    for volume in constraint.unbound:
        bound[volume] = where
    pinned = VolumeConstraint(
        frozenset({where}) if not constraint.nodes else constraint.nodes & {where},
        "; ".join(
            filter(
                None,
                [
                    constraint.reason,
                    *(
                        f"ReadWriteOnce volume {v} is bound to node {where}"
                        for v in constraint.unbound
                    ),
                ],
            )
        ),
        (),
        constraint.docker_only,
    )
    victims = {(v[0], v[1]) for v in first[0].victims}
    if victims:  # the rest sees every replica of a victim's name gone
        after = [r for r in running if (r.service, r.replica) not in victims]
        after.append(
            Running(
                requests[0].service,
                requests[0].replica,
                where,
                requests[0].cpu_millis,
                requests[0].memory_bytes,
                requests[0].priority,
                requests[0].qos,
            )
        )
        placer.restart(after)
    rest = placer.place(
        [constrained(r, pinned) for r in requests[1:]], strategy=scoring, preemption=preemption
    )
    return [*first, *rest]


def missing_node_reason(constraint: VolumeConstraint, known: Iterable[str]) -> str | None:
    """Why nothing fits when a volume's node is not in the cluster at all (the scheduler
    only reasons about the nodes it knows)."""
    gone = sorted(set(constraint.nodes) - set(known) - {""})
    if not gone:
        return None
    return f"{', '.join(gone)}: not in the cluster ({constraint.reason})"


def pinned_evictions(
    live: LiveState, evicting: Mapping[str, str], bound: Mapping[str, str]
) -> tuple[Mapping[str, str], dict[str, tuple[Wait, ...]]]:
    """Evictions (a draining node, an untolerated NoExecute taint) minus the replicas that
    cannot move: a ReadWriteOnce volume they mount is bound to their node, with its data.
    Such a replica stays, and its service says why."""
    kept = dict(evicting)
    waits: dict[str, list[Wait]] = {}
    for replica in live.replicas():
        why = evicting.get(replica.id)
        volume = next((v for v in replica.volumes if bound.get(v) == replica.node), None)
        if why is None or volume is None:
            continue
        del kept[replica.id]
        waits.setdefault(replica.service, []).append(
            Wait(
                replica.service,
                f"{replica.replica} stays on {replica.node} ({why}): ReadWriteOnce volume "
                f"{volume} is bound there, with its data",
            )
        )
    return MappingProxyType(kept), {k: tuple(v) for k, v in waits.items()}


# ---------------------------------------------------------------------------- the pass


@dataclass(frozen=True)
class VolumeDecision:
    """The volume side of a pass: bookkeeping (binds, releases, what went missing or came
    back), world changes (creates before the starts, deletes), and why volumes wait."""

    binds: tuple[BindVolume, ...] = ()
    creates: tuple[CreateVolume, ...] = ()
    deletes: tuple[DeleteVolume, ...] = ()
    releases: tuple[ReleaseVolume, ...] = ()
    missing: tuple[VolumeMissing, ...] = ()
    found: tuple[tuple[str, str], ...] = ()  # (volume, node) marked missing, present again
    waits: tuple[Wait, ...] = ()
    # Starts held back this pass, with why: service -> waits.
    held: Mapping[str, tuple[Wait, ...]] = field(default_factory=lambda: MappingProxyType({}))
    # Reasons among ``held`` that last until someone acts (a missing volume).
    blocking: frozenset[str] = frozenset()
    # Said, and waited for by no one: a volume to delete on a node that left the cluster.
    stuck: tuple[Wait, ...] = ()

    @property
    def pending(self) -> bool:
        """Something is still to be done (a volume waits for its users to stop)."""
        return bool(self.waits or self.deletes)


@dataclass
class _Draft:
    binds: dict[tuple[str, str], BindVolume] = field(default_factory=dict)
    creates: dict[tuple[str, str], CreateVolume] = field(default_factory=dict)
    missing: dict[tuple[str, str], VolumeMissing] = field(default_factory=dict)


def _records(live: LiveState, name: str) -> dict[str, bool]:
    """node -> whether the volume was made there, per its records."""
    return {r.node: r.created for r in live.volume_records.get(name, ())}


def decide_volumes(
    desired: DesiredState,
    live: LiveState,
    bound: Mapping[str, str],
    starts: Mapping[str, tuple[StartReplica, ...]],
    stops: Sequence[StopReplica],
) -> tuple[VolumeDecision, dict[str, tuple[StartReplica, ...]]]:
    """The volume actions of a pass and the starts that may go ahead.

    ``bound``: ReadWriteOnce volume -> node, as placement left it (records, spec.node and
    this pass's first placements); ``starts``: the placed starts per service; ``stops``:
    every replica this pass stops or removes.
    """
    draft = _Draft()
    ready = {name for name, node in live.nodes.items() if node.ready}
    removed_first = {s.replica_id for s in stops if not s.drain}
    held: dict[str, list[Wait]] = {}
    blocking: set[str] = set()
    kept: dict[str, tuple[StartReplica, ...]] = {}

    for name, volume in sorted(desired.volumes.items()):
        records = live.volume_records.get(name, ())
        for record in records:
            if record.released_at is not None:
                draft.binds[(name, record.node)] = BindVolume(
                    name, record.node, "back in Git: the data it kept is its data again"
                )
        node = bound.get(name)
        if volume.single_node and node is not None and not records:
            why = (
                "spec.node"
                if volume.node == node
                else f"where its first user, {_first_user(starts, name, node, desired)}, is placed"
            )
            draft.binds[(name, node)] = BindVolume(name, node, why)
        if volume.single_node and volume.node is not None and node in ready:
            _need(
                draft, live, volume, node, "spec.node names this node: made before any user starts"
            )
        for record in records:  # made once: still there?
            _check_present(draft, live, volume, record.node, ready)

    found = tuple(
        (r.name, r.node)
        for records in live.volume_records.values()
        for r in records
        if r.missing_at is not None
        and r.node in ready
        and r.name in live.volumes_on.get(r.node, {})
    )

    for service_name, service_starts in starts.items():
        service = desired.services.get(service_name)
        if service is None or not service_starts:
            kept[service_name] = service_starts
            continue
        allowed: list[StartReplica] = []
        for start in service_starts:
            blocked = _start_blocked(
                draft, desired, live, service, start, ready, removed_first, kept, allowed
            )
            if blocked is None:
                allowed.append(start)
                continue
            why, lasting = blocked
            held.setdefault(service_name, []).append(Wait(service_name, why))
            if lasting:
                blocking.add(why)
        kept[service_name] = tuple(allowed)

    deletes, releases, waits, stuck = _left_git(desired, live, ready)
    return (
        VolumeDecision(
            binds=tuple(draft.binds[k] for k in sorted(draft.binds)),
            creates=tuple(draft.creates[k] for k in sorted(draft.creates)),
            deletes=deletes,
            releases=releases,
            missing=tuple(draft.missing[k] for k in sorted(draft.missing)),
            found=found,
            waits=waits,
            stuck=stuck,
            held=MappingProxyType({k: tuple(v) for k, v in held.items()}),
            blocking=frozenset(blocking),
        ),
        kept,
    )


def _first_user(
    starts: Mapping[str, tuple[StartReplica, ...]], volume: str, node: str, desired: DesiredState
) -> str:
    for name, service_starts in starts.items():
        service = desired.services.get(name)
        if service is None or not any(m.volume == volume for m in service.volumes):
            continue
        for start in service_starts:
            if start.node == node:
                return start.replica
    return "its first replica"


def _need(draft: _Draft, live: LiveState, volume: Volume, node: str, reason: str) -> str | None:
    """``volume`` must be on ``node``: a CreateVolume when it was never made there; the
    reason it cannot be when it was made and is gone (missing: never made again)."""
    present = volume.name in live.volumes_on.get(node, {})
    if present:
        return None
    if _records(live, volume.name).get(node):
        _missing(draft, volume.name, node)
        return (
            f"volume {volume.name} was removed from {node} outside gitorch: its data is gone, "
            f"and it is not made again empty (`gitorch volumes --reset {volume.name}` does)"
        )
    key = (volume.name, node)
    if key not in draft.creates:
        draft.creates[key] = CreateVolume(volume.name, node, reason)
    return None


def _missing(draft: _Draft, volume: str, node: str) -> None:
    draft.missing.setdefault(
        (volume, node),
        VolumeMissing(
            volume,
            node,
            "removed outside gitorch: its data is gone; its users are not started on an "
            f"empty one (`gitorch volumes --reset {volume}` starts it anew, empty)",
        ),
    )


def _check_present(
    draft: _Draft, live: LiveState, volume: Volume, node: str, ready: set[str]
) -> None:
    """A volume recorded as made on a node that answers must be there."""
    if node not in ready or volume.name in live.volumes_on.get(node, {}):
        return
    if _records(live, volume.name).get(node):
        _missing(draft, volume.name, node)


def _start_blocked(
    draft: _Draft,
    desired: DesiredState,
    live: LiveState,
    service: Service,
    start: StartReplica,
    ready: set[str],
    removed_first: set[str],
    kept: Mapping[str, tuple[StartReplica, ...]],
    allowed: Sequence[StartReplica],
) -> tuple[str, bool] | None:
    """Why ``start`` may not go ahead this pass, and whether that lasts until someone
    acts (a missing volume); None: it may. Makes the volumes it needs."""
    for mount in service.volumes:
        volume = desired.volumes.get(mount.volume)
        if volume is None:
            continue
        if start.node not in ready:
            return f"{start.replica} waits for node {start.node} to list its volumes", False
        why = _need(draft, live, volume, start.node, f"before {start.replica} starts")
        if why is not None:
            return f"{start.replica} cannot start: {why}", True
        if mount.read_only or not volume.single_node:
            continue
        writer = _other_writer(live, volume.name, removed_first)
        if writer is None:
            writer = _starting_writer(desired, volume.name, start, kept, allowed)
        if writer is not None:
            return (
                f"{start.replica} ({start.template[:12]}) starts once {writer} has stopped: "
                f"ReadWriteOnce volume {volume.name} has one writer at a time"
            ), False
    return None


def _other_writer(live: LiveState, volume: str, removed_first: set[str]) -> str | None:
    """An alive replica writing ``volume`` that is not removed before this pass's starts."""
    for replica in live.replicas():
        if volume in replica.writes and replica.state in ALIVE and replica.id not in removed_first:
            return f"{replica.replica} ({(replica.template_digest or '')[:12]})"
    return None


def _starting_writer(
    desired: DesiredState,
    volume: str,
    start: StartReplica,
    kept: Mapping[str, tuple[StartReplica, ...]],
    allowed: Sequence[StartReplica],
) -> str | None:
    """A replica this pass already starts that writes ``volume``."""
    for other in (*(s for starts in kept.values() for s in starts), *allowed):
        service = desired.services.get(other.service)
        if other == start or service is None:
            continue
        if any(m.volume == volume and not m.read_only for m in service.volumes):
            return f"{other.replica} ({other.template[:12]})"
    return None


def _left_git(
    desired: DesiredState, live: LiveState, ready: set[str]
) -> tuple[tuple[DeleteVolume, ...], tuple[ReleaseVolume, ...], tuple[Wait, ...], tuple[Wait, ...]]:
    """Volumes whose records remain but that left Git: released, or deleted once unused;
    the waits for that, and the volumes nothing can delete (their node left the cluster)."""
    deletes: list[DeleteVolume] = []
    releases: list[ReleaseVolume] = []
    waits: list[Wait] = []
    stuck: list[Wait] = []
    for name, records in sorted(live.volume_records.items()):
        if name in desired.volumes:
            continue
        for record in records:
            policy = (record.spec.get("spec") or {}).get("reclaimPolicy", "Retain")
            if policy != "Delete":
                if record.released_at is None:
                    releases.append(
                        ReleaseVolume(
                            name,
                            record.node,
                            "left Git; reclaimPolicy Retain keeps it and its data for a "
                            "Volume of the same name",
                        )
                    )
                continue
            users = sorted({r.replica for r in live.volume_users(name, record.node)})
            if users:
                waits.append(
                    Wait(
                        f"Volume/{name}",
                        f"left Git (reclaimPolicy Delete): deleted on {record.node} once "
                        f"{', '.join(users)} {'has' if len(users) == 1 else 'have'} stopped",
                    )
                )
            elif record.node not in live.nodes:
                # Nothing can delete it, and nothing waits for it: it stays listed.
                stuck.append(
                    Wait(
                        f"Volume/{name}",
                        f"left Git (reclaimPolicy Delete), on node {record.node}, which is not "
                        "in the cluster: not deleted (its data stays there)",
                    )
                )
            elif record.node not in ready:
                waits.append(
                    Wait(
                        f"Volume/{name}",
                        f"left Git (reclaimPolicy Delete): deleted once node {record.node} answers",
                    )
                )
            else:
                deletes.append(
                    DeleteVolume(name, record.node, "left Git, reclaimPolicy Delete, no user left")
                )
    return tuple(deletes), tuple(releases), tuple(waits), tuple(stuck)
