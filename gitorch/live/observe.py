"""Observe every node at once and return an immutable :class:`LiveState`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from gitorch.errors import RuntimeDriverError
from gitorch.live.inventory import NodeTarget
from gitorch.live.model import (
    AppliedObject,
    AppliedSpec,
    LiveIngress,
    LiveNode,
    LiveReplica,
    LiveService,
    LiveState,
)
from gitorch.manifests.build import template_digest_of
from gitorch.manifests.model import INGRESS_NEVER
from gitorch.runtime.base import (
    LABEL_REPLICA,
    LABEL_REVISION,
    LABEL_SERVICE,
    LABEL_SPEC_DIGEST,
    LABEL_VOLUMES,
    IngressHost,
    Instance,
    NodeInfo,
    Probe,
    Runtime,
    VolumeInfo,
)
from gitorch.state import BackoffRecord, RolloutRecord, VolumeRecord
from gitorch.state.records import ServiceBackoff

if TYPE_CHECKING:
    from gitorch.state import StateStore

log = logging.getLogger("gitorch.observe")


@dataclass(frozen=True)
class _NodeObservation:
    target: NodeTarget
    info: NodeInfo | None
    instances: list[Instance] | None  # None: unknown (the node did not answer)
    error: str = ""
    volumes: list[VolumeInfo] | None = None  # None: unknown
    ingress: LiveIngress | None = None


def _observe_node(target: NodeTarget, runtime: Runtime, cluster: str | None) -> _NodeObservation:
    info = runtime.node_info()
    if not info.ready:
        return _NodeObservation(target, info, None, info.message)
    if cluster is None:
        return _NodeObservation(target, info, [], volumes=[])  # nothing ever ran from here
    ingress: LiveIngress | None = None
    try:
        instances = runtime.list_instances(cluster)
        volumes = runtime.list_volumes(cluster)
        if target.own_ingress and isinstance(runtime, IngressHost):
            found = runtime.ingress(cluster)
            if found is not None:
                ingress = LiveIngress(found.image, found.running, found.status)
    except RuntimeDriverError as exc:
        return _NodeObservation(target, info, None, exc.message)
    return _NodeObservation(target, info, instances, volumes=volumes, ingress=ingress)


def mounted_volumes(label: str) -> list[tuple[str, str]]:
    """``data:rw,cfg:ro`` (a replica's volumes label) -> ``[("data", "rw"), ("cfg", "ro")]``."""
    found = []
    for item in filter(None, label.split(",")):
        name, _, mode = item.partition(":")
        found.append((name, mode or "rw"))
    return found


#: id(instance) -> (instance, node, its LiveReplica), of the last observation: a runtime
#: hands out the same Instance while the replica did not change (the process driver), and
#: building 4,000 LiveReplicas was a third of an observation. Kept as _template_digests.
_replicas: dict[int, tuple[Instance, str, LiveReplica]] = {}


def _kept_replica(
    instance: Instance, node: str, used: dict[int, tuple[Instance, str, LiveReplica]]
) -> LiveReplica:
    known = _replicas.get(id(instance))
    if known is None or known[0] is not instance or known[1] != node:
        known = (instance, node, _replica(instance, node))
    used[id(instance)] = known
    return known[2]


def _replica(instance: Instance, node: str) -> LiveReplica:
    labels = instance.labels
    mounts = mounted_volumes(labels.get(LABEL_VOLUMES, ""))
    return LiveReplica(
        id=instance.id,
        name=instance.name,
        service=labels.get(LABEL_SERVICE, ""),
        replica=labels.get(LABEL_REPLICA, instance.name),
        node=node,
        revision=labels.get(LABEL_REVISION),
        template_digest=labels.get(LABEL_SPEC_DIGEST),
        state=instance.state.value,
        image=instance.image,
        address=instance.address(),
        started_at=instance.started_at,
        exit_code=instance.exit_code,
        exit_reason=instance.exit_reason,
        finished_at=instance.finished_at,
        restarts=instance.restarts,
        ports=MappingProxyType({b.name: f"{b.host_ip}:{b.host_port}" for b in instance.ports}),
        volumes=tuple(name for name, _ in mounts),
        writes=tuple(name for name, mode in mounts if mode != "ro"),
        instance=instance,
    )


#: id(canonical) -> (canonical, its template digest), of the last observation: the
#: store hands out the same decoded object while its row is unchanged, and hashing the
#: canonical JSON of 2,000 Services was a quarter of a no-op pass. The entry holds the
#: object, so its id cannot be reused while cached; each observation keeps only the
#: entries it used.
_template_digests: dict[int, tuple[Mapping[str, Any], str]] = {}


def _template_digest(
    canonical: Mapping[str, Any], used: dict[int, tuple[Mapping[str, Any], str]] | None
) -> str:
    known = _template_digests.get(id(canonical))
    if known is None or known[0] is not canonical:
        known = (canonical, template_digest_of(canonical))
    if used is not None:
        used[id(canonical)] = known
    return known[1]


def applied_spec(
    record: RolloutRecord | None,
    entry: AppliedObject | None,
    used: dict[int, tuple[Mapping[str, Any], str]] | None = None,
) -> AppliedSpec | None:
    """A service's applied spec: the inventory's canonical object, the rollout's progress.
    ``used``: collects the template digests computed or reused (see ``_template_digests``)."""
    if entry is None and record is None:
        return None
    if entry is not None:
        revision, canonical = entry.revision, entry.canonical
        digest = _template_digest(canonical, used)
    else:
        assert record is not None
        revision, canonical, digest = record.revision, record.spec, record.spec_digest
    if record is None:
        return AppliedSpec(revision=revision, digest=digest, canonical=canonical, phase="Healthy")
    return AppliedSpec(
        revision=revision,
        digest=digest,
        canonical=canonical,
        phase=str(record.phase),
        step=record.step,
        weight=record.weight,
        last_error=record.last_error,
        previous_revision=record.previous_revision,
        message=record.message,
    )


_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


def _in_parallel(
    fn: Callable[[_Item], _Result], items: Sequence[_Item], workers: int
) -> list[_Result]:
    """``fn`` of each item, in order, on up to ``workers`` threads. One item or none runs
    in this thread: no pool to start, nor ``concurrent.futures`` to import (~4 ms of a
    ``gitorch plan`` of one node)."""
    if len(items) <= 1:
        return [fn(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(fn, items))


def observe(
    targets: Sequence[NodeTarget],
    runtimes: Mapping[str, Runtime],
    cluster: str | None,
    store: StateStore | None = None,
) -> LiveState:
    """One consistent picture of the cluster, nodes observed in parallel.

    A node that does not answer is NotReady and its replicas are *unknown*: services
    keep the replicas the store cannot vouch for out of the picture rather than
    reporting them gone, and ``LiveState.unknown_nodes`` names such nodes.
    """
    started = time.time()
    began = time.perf_counter()
    observations = _in_parallel(lambda t: _observe_node(t, runtimes[t.name], cluster), targets, 16)
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "%d node(s), %d instance(s) listed in %.0f ms",
            len(observations),
            sum(len(o.instances or ()) for o in observations),
            (time.perf_counter() - began) * 1000,
        )
    # `gitorch drain` is kept in the store: a draining node takes nothing new either. A
    # target drained by its making (a Node that left Git) is drained the same way.
    node_records = store.list_nodes() if store is not None else []
    draining = {r.name for r in node_records if r.draining} | {t.name for t in targets if t.drain}
    nodes: dict[str, LiveNode] = {}
    replicas_by_service: dict[str, list[LiveReplica]] = {}
    volumes_on: dict[str, Mapping[str, VolumeInfo]] = {}
    kept: dict[int, tuple[Instance, str, LiveReplica]] = {}
    for obs in observations:
        target, info = obs.target, obs.info
        nodes[target.name] = LiveNode(
            name=target.name,
            driver=target.driver,
            ready=obs.instances is not None,
            address=target.address,
            cpu_millis=target.cpu_millis
            if target.cpu_millis is not None
            else int((info.cpu_cores if info else 0) * 1000),
            memory_bytes=target.memory_bytes
            if target.memory_bytes is not None
            else (info.memory_bytes if info else 0),
            message=obs.error,
            labels=target.labels,
            unschedulable=target.unschedulable or target.drain or target.name in draining,
            taints=target.taints,
            limits=info.limits if info else "",
            ingress_mode=target.ingress if target.own_ingress else INGRESS_NEVER,
            ingress=obs.ingress,
            version=info.version if info else "",
            transport=info.transport if info else "",
            rtt_ms=info.rtt_ms if info else None,
        )
        for instance in obs.instances or []:
            replica = _kept_replica(instance, target.name, kept)
            replicas_by_service.setdefault(replica.service, []).append(replica)
        if obs.instances is not None and obs.volumes is not None:
            volumes_on[target.name] = MappingProxyType({v.name: v for v in obs.volumes})

    records = {r.service: r for r in store.list_rollouts()} if store is not None else {}
    inventory = {
        (a.kind, a.name): AppliedObject(a.kind, a.name, a.revision, a.digest, a.spec)
        for a in (store.list_applied() if store is not None else [])
    }
    applied_services = {name for kind, name in inventory if kind == "Service"}
    names = sorted(set(records) | applied_services | set(replicas_by_service))
    used: dict[int, tuple[Mapping[str, Any], str]] = {}
    services = {
        name: LiveService(
            name=name,
            applied=applied_spec(records.get(name), inventory.get(("Service", name)), used),
            replicas=tuple(
                sorted(replicas_by_service.get(name, []), key=lambda r: (r.replica, r.id))
            ),
        )
        for name in names
    }
    global _template_digests, _replicas
    _template_digests, _replicas = used, kept
    last = store.last_applied_revision() if store is not None else None
    backoff: dict[str, list[BackoffRecord]] = {}
    for state in store.list_backoff() if store is not None else []:
        backoff.setdefault(state.service, []).append(state)
    runs = {
        name: tuple(
            store.list_analysis_runs(
                name, revision=record.revision, step_started_at=record.step_started_at
            )
        )
        for name, record in records.items()
        if store is not None and record.step_started_at is not None
    }
    volume_records: dict[str, list[VolumeRecord]] = {}
    for volume in store.list_volumes() if store is not None else []:
        volume_records.setdefault(volume.name, []).append(volume)
    return LiveState(
        cluster=cluster or "",
        observed_at=started,
        nodes=MappingProxyType(nodes),
        services=MappingProxyType(services),
        last_applied_revision=last.sha if last is not None else None,
        inventory=MappingProxyType(inventory),
        rollouts=MappingProxyType(records),
        backoff=MappingProxyType({k: ServiceBackoff(tuple(v)) for k, v in backoff.items()}),
        analysis_runs=MappingProxyType(runs),
        draining_nodes=frozenset(draining),
        node_last_seen=MappingProxyType(
            {r.name: r.last_seen for r in node_records if r.last_seen is not None}
        ),
        volume_records=MappingProxyType({k: tuple(v) for k, v in volume_records.items()}),
        autoscalers=MappingProxyType(
            {a.service: a for a in (store.list_autoscalers() if store is not None else [])}
        ),
        volumes_on=MappingProxyType(volumes_on),
    )


def readiness_probe(canonical: Mapping[str, Any]) -> Probe | None:
    """The runtime probe for an applied spec's readinessProbe (None: no probe)."""
    spec = canonical.get("spec", {})
    raw = spec.get("readinessProbe")
    if not raw:
        return None
    ports = {p["name"]: p["containerPort"] for p in spec.get("ports", [])}

    def port_of(ref: Any) -> int | None:
        return ref if isinstance(ref, int) else ports.get(ref)

    timeout = float(raw.get("timeoutSeconds", 1))
    if "httpGet" in raw:
        return Probe(
            http_path=raw["httpGet"]["path"],
            port=port_of(raw["httpGet"]["port"]),
            timeout_seconds=timeout,
        )
    if "tcpSocket" in raw:
        return Probe(tcp=True, port=port_of(raw["tcpSocket"]["port"]), timeout_seconds=timeout)
    return Probe(exec_command=tuple(raw["exec"]["command"]), timeout_seconds=timeout)


def assess_readiness(live: LiveState, runtimes: Mapping[str, Runtime]) -> LiveState:
    """Probe every running replica once with its applied readiness probe (in parallel).

    A replica with no probe is ready while running. Used by ``gitorch status`` when no
    daemon keeps readiness; the daemon tracks it continuously instead.
    """
    jobs: list[tuple[str, int, LiveReplica, Probe | None]] = []
    for name, service in live.services.items():
        probe = readiness_probe(service.applied.canonical) if service.applied else None
        for index, replica in enumerate(service.replicas):
            jobs.append((name, index, replica, probe))

    def check(job: tuple[str, int, LiveReplica, Probe | None]) -> LiveReplica:
        _, _, replica, probe = job
        if replica.state != "running":
            return replace(replica, ready=False if replica.state != "unknown" else None)
        if probe is None:
            return replace(
                replica,
                ready=True,
                ready_since=replica.started_at,
                probe_message="running (no readiness probe)",
            )
        runtime = runtimes.get(replica.node)
        if runtime is None:
            return replica
        try:
            instance = runtime.inspect(replica.id)
            result = runtime.probe(instance, probe)
        except RuntimeDriverError as exc:
            return replace(replica, ready=None, probe_message=exc.message)
        # When it became ready is the daemon's knowledge; one probe only says it is now.
        since = replica.started_at if result.ok else None
        return replace(replica, ready=result.ok, ready_since=since, probe_message=result.message)

    checked = _in_parallel(check, jobs, 8)
    services: dict[str, list[LiveReplica]] = {}
    for (name, _, _, _), replica in zip(jobs, checked, strict=True):
        services.setdefault(name, []).append(replica)
    return replace(
        live,
        services=MappingProxyType(
            {
                name: replace(service, replicas=tuple(services.get(name, [])))
                for name, service in live.services.items()
            }
        ),
    )
