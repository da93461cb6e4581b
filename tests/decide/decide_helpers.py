"""Helpers of the pure decision tests: manifests loaded from strings, and the rollout
record a store holds for a service that reached Healthy."""

from __future__ import annotations

import hashlib

from gitorch.manifests import ManifestLoader
from gitorch.manifests.model import DesiredState
from gitorch.state.records import RolloutPhase, RolloutRecord


class _File:
    def __init__(self, path: str, text: str) -> None:
        self.path, self.data = path, text.encode()
        self.blob_id = hashlib.sha1(self.data).hexdigest()


def load_docs(*docs: str, revision: str) -> DesiredState:
    """The desired state of ``docs`` (one file each); fails loudly when invalid."""
    files = [_File(f"f{i}.yaml", d) for i, d in enumerate(docs)]
    result = ManifestLoader().load(files, revision=revision)
    assert result.state is not None, [str(d) for d in result.diagnostics]
    return result.state


def healthy_record(state: DesiredState, name: str, revision: str) -> RolloutRecord:
    """The record of ``name`` having converged on its template at ``revision``."""
    svc = state.services[name]
    return RolloutRecord(
        service=name,
        revision=revision,
        spec_digest=svc.template_digest,
        strategy=svc.strategy.type,
        phase=RolloutPhase.HEALTHY,
        spec=svc.canonical,
        started_at=1.0,
        progress_at=1.0,
        available=svc.replicas,
        reached_healthy=True,
        converged_replicas=svc.replicas,
    )
