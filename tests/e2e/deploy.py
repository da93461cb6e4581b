"""``deploy()``: what ``gitorch apply`` will do, done by hand, for the plan end-to-end tests.

There is no ``gitorch apply`` yet (it comes with the reconciler). These tests need "the
services exist and match Git", so this helper **stands in for apply**: for each Service of a
:class:`DesiredState` it starts ``replicas`` replicas through the real :class:`Runtime`,
labelled the way apply labels them, then records what it applied in the real state store
(inventory, rollout record, and a succeeded revision). ``gitorch plan`` run afterwards must
then find nothing to do.

Limits are not passed to the runtime: the process driver turns a memory limit into
``RLIMIT_AS``, far too small for a Python interpreter at the sizes the example manifests
ask for, and no plan reads them from the runtime anyway. Secret env vars (``secretFile``)
are not resolved; the tests use none.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gitorch.errors import InstanceNotFound, RuntimeDriverError
from gitorch.live import cluster_name
from gitorch.live.observe import readiness_probe
from gitorch.manifests import DesiredState, Service
from gitorch.runtime.base import (
    LABEL_REPLICA,
    LABEL_REVISION,
    LABEL_SERVICE,
    LABEL_SPEC_DIGEST,
    Instance,
    PortRequest,
    ReplicaSpec,
    Runtime,
)
from gitorch.state import RevisionResult, RolloutPhase, RolloutRecord, StateStore

#: How long deploy() waits for a replica to pass its readiness probe.
READY_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class Deployed:
    """What one ``deploy()`` started: the cluster and every replica, per service."""

    cluster: str
    instances: dict[str, list[Instance]]


def replica_spec(service: Service, index: int, cluster: str, revision: str) -> ReplicaSpec:
    """The ReplicaSpec apply builds for replica ``index`` (from 1) of ``service``."""
    return ReplicaSpec(
        name=f"{cluster}-{service.name}-{index}",
        image=service.image,
        command=service.command,
        args=service.args,
        env={e.name: e.value for e in service.env if e.value is not None},
        working_dir=service.working_dir,
        ports=tuple(PortRequest(p.name, p.container_port, p.protocol) for p in service.ports),
        labels={
            LABEL_SERVICE: service.name,
            LABEL_REPLICA: f"{service.name}-{index}",
            LABEL_REVISION: revision,
            LABEL_SPEC_DIGEST: service.template_digest,
        },
        stop_grace_seconds=2.0,
    )


def wait_ready(runtime: Runtime, service: Service, instance: Instance) -> None:
    """Poll the replica's readiness probe until it passes (apply waits the same way)."""
    probe = readiness_probe(service.canonical)
    if probe is None:
        return
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    message = ""
    while time.monotonic() < deadline:
        current = runtime.inspect(instance.id)
        if current.state.value != "running":
            raise AssertionError(
                f"replica {instance.name} is {current.state.value} before it became ready:\n"
                + runtime.logs(instance.id, tail=20)
            )
        result = runtime.probe(current, probe)
        if result.ok:
            return
        message = result.message
        time.sleep(0.05)
    raise AssertionError(
        f"replica {instance.name} not ready after {READY_TIMEOUT_SECONDS}s: {message}"
    )


def deploy(state_dir: Path, desired: DesiredState, runtime: Runtime, node_name: str) -> Deployed:
    """Make ``desired`` live on one node, as ``gitorch apply`` will; stands in for apply.

    ``runtime`` drives the node called ``node_name`` (for the process driver it must keep
    its bookkeeping in ``gitorch.commands.cluster.runtime_dir(state_dir, node_name)``, where
    the CLI looks). Replicas are started in dependsOn order and each waits until ready.
    """
    assert runtime.node_name == node_name, (runtime.node_name, node_name)
    cluster = cluster_name(state_dir)
    instances: dict[str, list[Instance]] = {}
    for name in _ordered(desired):
        service = desired.services[name]
        started = [
            runtime.create(replica_spec(service, i, cluster, desired.revision), cluster)
            for i in range(1, service.replicas + 1)
        ]
        for instance in started:
            wait_ready(runtime, service, instance)
        instances[name] = started
    with StateStore(state_dir) as store:
        record = store.record_revision(
            desired.revision, author="e2e <e2e@example.com>", services=sorted(desired.services)
        )
        for service in desired.services.values():
            store.record_applied(
                "Service", service.name, desired.revision, service.digest, service.canonical
            )
            store.upsert_rollout(
                RolloutRecord(
                    service=service.name,
                    revision=desired.revision,
                    spec_digest=service.template_digest,
                    strategy=str(service.canonical["spec"]["strategy"]["type"]),
                    phase=RolloutPhase.HEALTHY,
                    spec=dict(service.canonical),
                )
            )
        store.finish_revision(record.id, RevisionResult.SUCCEEDED)
    return Deployed(cluster, instances)


def _ordered(desired: DesiredState) -> Sequence[str]:
    from gitorch.diff import dependency_waves

    return [name for wave in dependency_waves(desired.services) for name in wave]


def remove_all(runtime: Runtime, cluster: str) -> None:
    """Remove every replica of ``cluster`` on ``runtime`` (fixture cleanup)."""
    try:
        instances = runtime.list_instances(cluster)
    except RuntimeDriverError:
        return
    for instance in instances:
        try:
            runtime.remove(instance.id)
        except InstanceNotFound:
            continue
