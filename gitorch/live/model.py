"""The immutable snapshot of live state that diff, planning and status read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from gitorch.runtime.base import Instance, VolumeInfo
from gitorch.state.records import (
    AnalysisRunRecord,
    AutoscalerRecord,
    RolloutRecord,
    ServiceBackoff,
    VolumeRecord,
)


@dataclass(frozen=True)
class LiveReplica:
    """One replica as observed. ``ready`` is None when readiness was not assessed."""

    id: str
    name: str
    service: str
    replica: str
    node: str
    revision: str | None
    template_digest: str | None
    state: str  # created | running | exited | unknown
    image: str | None = None
    address: str | None = None
    started_at: float | None = None
    exit_code: int | None = None
    exit_reason: str | None = None  # Instance.exit_reason: "OOMKilled", "exit N", "signal N"
    finished_at: float | None = None  # Instance.finished_at: unix time it exited
    restarts: int = 0
    ready: bool | None = None
    probe_message: str = ""
    # What the health monitor says (the reconciler fills these in; ``plan`` probes once):
    ready_since: float | None = None  # unix time it last became ready
    needs_restart: bool = False  # liveness or startup probe failed: replace it
    health_message: str = ""  # the last probe's verdict, "liveness: HTTP 500"
    ports: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({})
    )  # name -> host:port
    volumes: tuple[str, ...] = ()  # the Volumes it mounts (from its label)
    writes: tuple[str, ...] = ()  # ... of which read-write
    instance: Instance | None = field(default=None, compare=False, repr=False)  # for probes

    def address_of(self, port: str | int | None) -> str | None:
        """host:port of a named port (or the first one when ``port`` is None or a number)."""
        if isinstance(port, str) and port in self.ports:
            return self.ports[port]
        return self.address


@dataclass(frozen=True)
class AppliedObject:
    """An inventory entry: an object as gitorch last applied it (any kind)."""

    kind: str
    name: str
    revision: str
    digest: str  # digest of the whole canonical object
    canonical: Mapping[str, Any]  # canonical object (apiVersion, kind, metadata, spec)


@dataclass(frozen=True)
class AppliedSpec:
    """What was last applied to a service, with its rollout progress."""

    revision: str
    digest: str  # template digest of the applied version (what its replicas run)
    canonical: Mapping[str, Any]  # canonical object (apiVersion, kind, metadata, spec)
    phase: str
    step: int | None = None
    weight: int = 100
    last_error: str | None = None
    previous_revision: str | None = None
    message: str = ""  # where the rollout stands, in words


@dataclass(frozen=True)
class LiveService:
    name: str
    applied: AppliedSpec | None
    replicas: tuple[LiveReplica, ...] = ()

    @property
    def running(self) -> tuple[LiveReplica, ...]:
        return tuple(r for r in self.replicas if r.state == "running")


@dataclass(frozen=True)
class LiveIngress:
    """A host's ingress container as observed (see :mod:`gitorch.apply.ingress`)."""

    image: str
    running: bool
    status: str  # the engine's word: running, restarting, exited...


@dataclass(frozen=True)
class LiveNode:
    name: str
    driver: str
    ready: bool
    address: str
    cpu_millis: int
    memory_bytes: int
    message: str = ""
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    unschedulable: bool = False
    taints: tuple[tuple[str, str, str], ...] = ()  # (key, value, effect)
    limits: str = ""  # how the runtime enforces limits (NodeInfo.limits)
    #: When the node's host serves exposed services itself: ``replicas``, ``always``, or
    #: ``never`` (also every node that shares the daemon's host: its ingress serves them).
    ingress_mode: str = "never"
    ingress: LiveIngress | None = None  # the ingress container there, if any
    version: str = ""  # the engine's version
    transport: str = ""  # how the engine is reached (NodeInfo.transport)
    rtt_ms: float | None = None  # one round trip to the engine, this observation


@dataclass(frozen=True)
class LiveState:
    """Every node and every service gitorch knows of, at one instant."""

    cluster: str
    observed_at: float
    nodes: Mapping[str, LiveNode]
    services: Mapping[str, LiveService]
    last_applied_revision: str | None = None
    inventory: Mapping[tuple[str, str], AppliedObject] = field(
        default_factory=lambda: MappingProxyType({})
    )
    # What the store says a pass decides from, besides the replicas (read in the same
    # observation, so ``plan`` and the reconciler decide from the same facts):
    rollouts: Mapping[str, RolloutRecord] = field(default_factory=lambda: MappingProxyType({}))
    backoff: Mapping[str, ServiceBackoff] = field(default_factory=lambda: MappingProxyType({}))
    # Runs of each service's current progressive step (its rollout's step entry).
    analysis_runs: Mapping[str, tuple[AnalysisRunRecord, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    draining_nodes: frozenset[str] = frozenset()  # `gitorch drain NODE`
    node_last_seen: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    # Volumes: the store's records (by Volume name), and what each answering node holds
    # (node -> Volume name -> volume; a node that did not answer is absent).
    volume_records: Mapping[str, tuple[VolumeRecord, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    volumes_on: Mapping[str, Mapping[str, VolumeInfo]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    # The horizontal autoscaler's records (by service): the count an autoscaled service runs.
    autoscalers: Mapping[str, AutoscalerRecord] = field(
        default_factory=lambda: MappingProxyType({})
    )
    #: The last known replicas of lost nodes (silent past their grace): no longer in any
    #: service (their slots are filled elsewhere), but listed unreachable in every routing
    #: table while their node stays silent, so requests in flight on them are given up.
    lost_replicas: tuple[LiveReplica, ...] = ()

    @property
    def unknown_nodes(self) -> frozenset[str]:
        """Nodes that did not answer: their replicas are unknown, not gone."""
        return frozenset(name for name, node in self.nodes.items() if not node.ready)

    def replicas(self) -> list[LiveReplica]:
        return [r for s in self.services.values() for r in s.replicas]

    def volume_users(self, volume: str, node: str | None = None) -> list[LiveReplica]:
        """Replicas (running or not: they hold the mount) that mount ``volume``, on
        ``node`` or anywhere."""
        return [
            r for r in self.replicas() if volume in r.volumes and (node is None or r.node == node)
        ]

    @classmethod
    def empty(cls, cluster: str = "gitorch") -> LiveState:
        return cls(cluster=cluster, observed_at=0.0, nodes={}, services={})
