"""Build the inputs of a golden plan case from its folder, without Docker or a state store.

A case folder holds:

* ``manifests/``: the desired state (YAML, loaded with :class:`ManifestLoader`);
* ``applied/`` (optional): what gitorch applied last, also YAML; its canonical objects
  become the live inventory and each Service's applied spec, so no canonical JSON is
  written by hand and it always matches what the loader produces;
* ``live.json``: what cannot be written as manifests, all keys optional::

    {
      "nodes": [{"name": "node-a", "cpu": "2", "memory": "4Gi", "labels": {"zone": "a"},
                 "taints": [["dedicated", "db", "NoSchedule"]], "ready": true,
                 "unschedulable": false, "message": ""}],
      "services": {
        "web": {"phase": "Healthy",
                "replicas": [{"replica": "web-1", "node": "node-a", "state": "running",
                              "image": "...", "exitCode": null, "stale": false}]}
      },
      "appliedRevision": "<sha>",  # default: BASE_REVISION when applied/ exists
      "volumes": {                 # the store's volume records, and what nodes hold
        "records": [{"name": "data", "node": "node-a", "created": true,
                     "released": false, "missing": false}],
        "on": {"node-a": ["data"]}
      }
    }

  A replica's ``"volumes": ["data:rw", "cfg:ro"]`` is its volumes label. A record's spec is
  the Volume as ``applied/`` (else ``manifests/``) has it.

  A replica's image defaults to the applied spec's image and its template digest to the
  applied one (``"stale": true`` gives it another). A service listed in ``services`` but
  absent from ``applied/`` is one gitorch labelled but has no inventory entry for.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gitorch.live.model import (
    AppliedObject,
    AppliedSpec,
    LiveNode,
    LiveReplica,
    LiveService,
    LiveState,
)
from gitorch.manifests import DesiredState, ManifestLoader
from gitorch.manifests.build import template_digest_of
from gitorch.manifests.quantities import parse_cpu, parse_memory
from gitorch.runtime.base import VolumeInfo
from gitorch.state.records import RolloutPhase, RolloutRecord, VolumeRecord

#: The revision every case plans (fixed, so goldens do not depend on a Git repo).
REVISION = "5d41402abc4b2a76b9719d911017c592ab3f9c11"
#: The moment every case's next pass is decided at (replicas started at 0).
NOW = 1000.0
#: The revision the case's ``applied/`` folder stands for.
BASE_REVISION = "7c211433f02071597741e6ff5a8ea34789abbf43"
CLUSTER = "gitorch-golden"


@dataclass(frozen=True)
class ManifestFile:
    """A file as ManifestLoader reads it (a Snapshot's file without Git)."""

    path: str
    data: bytes
    blob_id: str = field(default="")

    def __post_init__(self) -> None:
        if not self.blob_id:
            object.__setattr__(self, "blob_id", hashlib.sha1(self.data).hexdigest())


def load_folder(folder: Path, revision: str) -> DesiredState:
    """Every ``*.yaml``/``*.yml`` under ``folder`` through the real loader; fails loudly."""
    files = [
        ManifestFile(path.relative_to(folder).as_posix(), path.read_bytes())
        for path in sorted(folder.rglob("*"))
        if path.suffix in (".yaml", ".yml") and path.is_file()
    ]
    result = ManifestLoader().load(files, revision=revision)
    if result.state is None:
        problems = "\n".join(str(d) for d in result.diagnostics)
        raise AssertionError(f"{folder} does not load:\n{problems}")
    return result.state


def _node(raw: dict[str, Any]) -> LiveNode:
    return LiveNode(
        name=raw["name"],
        driver=raw.get("driver", "docker"),
        ready=raw.get("ready", True),
        address=raw.get("address", "127.0.0.1"),
        cpu_millis=parse_cpu(raw.get("cpu", "2")),
        memory_bytes=parse_memory(raw.get("memory", "4Gi")),
        message=raw.get("message", ""),
        labels=MappingProxyType({**raw.get("labels", {}), "node": raw["name"]}),
        unschedulable=raw.get("unschedulable", False),
        taints=tuple((t[0], t[1], t[2]) for t in raw.get("taints", [])),
    )


def _replica(service: str, raw: dict[str, Any], applied: AppliedSpec | None) -> LiveReplica:
    spec = applied.canonical.get("spec", {}) if applied else {}
    digest = applied.digest if applied else None
    if raw.get("stale"):
        digest = "0" * 64
    name = raw["replica"]
    return LiveReplica(
        id=f"id-{name}",
        name=f"{CLUSTER}-{name}",
        service=service,
        replica=name,
        node=raw.get("node", "node-a"),
        revision=raw.get("revision", applied.revision if applied else None),
        template_digest=digest,
        state=raw.get("state", "running"),
        image=raw.get("image", spec.get("image")),
        exit_code=raw.get("exitCode"),
        # A running replica is ready (for long) unless the case says otherwise.
        ready=raw.get("ready", raw.get("state", "running") == "running"),
        ready_since=0.0 if raw.get("ready", raw.get("state", "running") == "running") else None,
        started_at=0.0,
        volumes=tuple(v.partition(":")[0] for v in raw.get("volumes", [])),
        writes=tuple(v.partition(":")[0] for v in raw.get("volumes", []) if v.endswith(":rw")),
    )


def _volumes(
    raw: dict[str, Any], specs: dict[str, Any]
) -> tuple[dict[str, tuple[VolumeRecord, ...]], dict[str, Any]]:
    """The volume records and the volumes each node holds, as a case describes them."""
    records: dict[str, list[VolumeRecord]] = {}
    for item in raw.get("records", []):
        records.setdefault(item["name"], []).append(
            VolumeRecord(
                name=item["name"],
                node=item["node"],
                spec=specs.get(item["name"], {}),
                bound_at=1.0,
                created_at=2.0 if item.get("created", True) else None,
                released_at=3.0 if item.get("released") else None,
                missing_at=4.0 if item.get("missing") else None,
            )
        )
    on = {
        node: MappingProxyType(
            {name: VolumeInfo(name, node, f"{CLUSTER}_{node}_{name}") for name in names}
        )
        for node, names in raw.get("on", {}).items()
    }
    return {k: tuple(v) for k, v in records.items()}, on


def build_live(case: Path) -> LiveState:
    """The LiveState a case describes (see the module docstring)."""
    raw: dict[str, Any] = json.loads((case / "live.json").read_text(encoding="utf-8"))
    applied_dir = case / "applied"
    revision = raw.get("appliedRevision", BASE_REVISION)
    inventory: dict[tuple[str, str], AppliedObject] = {}
    applied_specs: dict[str, AppliedSpec] = {}
    rollouts: dict[str, RolloutRecord] = {}
    if applied_dir.is_dir():
        state = load_folder(applied_dir, revision)
        for obj in state.objects():
            inventory[(obj.kind, obj.name)] = AppliedObject(
                obj.kind, obj.name, revision, obj.digest, obj.canonical
            )
        for name, service in state.services.items():
            phase = raw.get("services", {}).get(name, {}).get("phase", "Healthy")
            applied_specs[name] = AppliedSpec(
                revision=revision,
                digest=template_digest_of(service.canonical),
                canonical=service.canonical,
                phase=phase,
            )
            # The rollout record a store would hold for an applied service (the next
            # pass decides from it).
            rollouts[name] = RolloutRecord(
                service=name,
                revision=revision,
                spec_digest=service.template_digest,
                strategy=service.strategy.type,
                phase=RolloutPhase(phase),
                spec=service.canonical,
                started_at=1.0,
                progress_at=1.0,
                available=service.replicas if phase == "Healthy" else 0,
                reached_healthy=phase == "Healthy",
                converged_replicas=service.replicas if phase == "Healthy" else None,
            )
    services: dict[str, LiveService] = {}
    for name in sorted(set(applied_specs) | set(raw.get("services", {}))):
        applied = applied_specs.get(name)
        replicas = raw.get("services", {}).get(name, {}).get("replicas", [])
        services[name] = LiveService(
            name, applied, tuple(_replica(name, r, applied) for r in replicas)
        )
    nodes = {n["name"]: _node(n) for n in raw.get("nodes", [])}
    specs = {name: obj.canonical for (kind, name), obj in inventory.items() if kind == "Volume"}
    if (case / "manifests").is_dir():
        desired = load_folder(case / "manifests", revision)
        specs = {**{n: v.canonical for n, v in desired.volumes.items()}, **specs}
    records, on = _volumes(raw.get("volumes", {}), specs)
    return LiveState(
        cluster=CLUSTER,
        observed_at=0.0,
        nodes=MappingProxyType(nodes),
        services=MappingProxyType(services),
        last_applied_revision=revision if applied_dir.is_dir() else None,
        inventory=MappingProxyType(inventory),
        rollouts=MappingProxyType(rollouts),
        volume_records=MappingProxyType(records),
        volumes_on=MappingProxyType(on),
    )
