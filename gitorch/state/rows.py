"""Conversions between database rows and the records of :mod:`gitorch.state.records`."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from typing import Any

from gitorch.state.audit_chain import ChainEntry
from gitorch.state.records import (
    AnalysisRunPhase,
    AnalysisRunRecord,
    AuditEvent,
    AutoscalerRecord,
    Measurement,
    MeasurementPhase,
    NodeCondition,
    NodePoolRecord,
    NodeRecord,
    PortAllocation,
    RevisionRecord,
    RevisionResult,
    RolloutPhase,
    RolloutRecord,
    TrafficSnapshot,
    VersionTraffic,
    VolumeRecord,
)


def dump_json(value: Mapping[str, Any] | None) -> str:
    """Canonical JSON (sorted keys, compact) so equal values are stored byte-identical."""
    return json.dumps(dict(value or {}), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def load_json(text: str | None) -> dict[str, Any]:
    """A JSON object column back as a dict (``NULL`` and ``''`` become ``{}``)."""
    if not text:
        return {}
    value = json.loads(text)
    return value if isinstance(value, dict) else {"value": value}


def revision(row: sqlite3.Row) -> RevisionRecord:
    """A ``revisions`` row with its ``service_results`` column (a JSON object)."""
    per_service = load_json(row["service_results"])
    return RevisionRecord(
        id=row["id"],
        sha=row["sha"],
        author=row["author"],
        committed_at=row["committed_at"],
        signer=row["signer"],
        applied_at=row["applied_at"],
        result=RevisionResult(row["result"]),
        reason=row["reason"],
        summary=load_json(row["summary"]),
        service_results={name: RevisionResult(res) for name, res in per_service.items()},
        trigger=row["trigger"],
    )


def rollout(row: sqlite3.Row) -> RolloutRecord:
    previous_spec = row["previous_spec"]
    return RolloutRecord(
        service=row["service"],
        revision=row["revision"],
        spec_digest=row["spec_digest"],
        strategy=row["strategy"],
        phase=RolloutPhase(row["phase"]),
        spec=load_json(row["spec"]),
        step=row["step"],
        weight=row["weight"],
        started_at=row["started_at"],
        updated_at=row["updated_at"],
        last_error=row["last_error"],
        previous_revision=row["previous_revision"],
        previous_digest=row["previous_digest"],
        previous_spec=None if previous_spec is None else load_json(previous_spec),
        failed_digest=row["failed_digest"],
        available=row["available"],
        progress_at=row["progress_at"],
        message=row["message"],
        reached_healthy=bool(row["reached_healthy"]),
        step_started_at=row["step_started_at"],
        promote_requested=bool(row["promote_requested"]),
        abort_requested=bool(row["abort_requested"]),
        converged_replicas=row["converged_replicas"],
        failed_revision=row["failed_revision"],
    )


def port(row: sqlite3.Row) -> PortAllocation:
    return PortAllocation(
        node=row["node"],
        host_port=row["host_port"],
        owner=row["owner"],
        allocated_at=row["allocated_at"],
    )


def node(row: sqlite3.Row) -> NodeRecord:
    return NodeRecord(
        name=row["name"],
        driver=row["driver"],
        endpoint=row["endpoint"],
        labels={str(k): str(v) for k, v in load_json(row["labels"]).items()},
        last_seen=row["last_seen"],
        condition=NodeCondition(row["condition"]),
        message=row["message"],
        draining=bool(row["draining"]),
    )


def measurement(row: sqlite3.Row) -> Measurement:
    return Measurement(
        id=row["id"],
        service=row["service"],
        revision=row["revision"],
        analysis=row["analysis"],
        taken_at=row["taken_at"],
        phase=MeasurementPhase(row["phase"]),
        value=load_json(row["value"]),
        message=row["message"],
        run_id=row["run_id"],
    )


def analysis_run(row: sqlite3.Row) -> AnalysisRunRecord:
    return AnalysisRunRecord(
        id=row["id"],
        service=row["service"],
        revision=row["revision"],
        analysis=row["analysis"],
        step_started_at=row["step_started_at"],
        started_at=row["started_at"],
        phase=AnalysisRunPhase(row["phase"]),
        message=row["message"],
        concluded_at=row["concluded_at"],
        # Absent in a store read before migration 8 (its test reads a version-4 store).
        window_figures=load_json(row["window_figures"])
        if "window_figures" in row.keys()  # noqa: SIM118 (`in` on a Row tests values)
        and row["window_figures"] is not None
        else None,
    )


def audit_event(row: sqlite3.Row) -> AuditEvent:
    columns = row.keys()  # (`in row` would test the values of a sqlite3.Row)
    return AuditEvent(
        id=row["id"],
        at=row["at"],
        kind=row["kind"],
        message=row["message"],
        service=row["service"],
        revision=row["revision"],
        data=load_json(row["data"]),
        # Absent from stores of schema versions before the chain (older migrations).
        actor=row["actor"] if "actor" in columns else "",
        hash=row["hash"] if "hash" in columns else None,
    )


def chain_entry(row: sqlite3.Row) -> ChainEntry:
    """An ``audit_log`` row as the hash chain reads it (gitorch.state.audit_chain)."""
    return ChainEntry(
        id=row["id"],
        at=row["at"],
        kind=row["kind"],
        message=row["message"],
        actor=row["actor"],
        service=row["service"],
        revision=row["revision"],
        data=load_json(row["data"]),
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )


def traffic(row: sqlite3.Row) -> TrafficSnapshot:
    """A ``traffic_snapshots`` row (its ``data`` column holds the per-version figures)."""
    data = load_json(row["data"])
    return TrafficSnapshot(
        service=row["service"],
        taken_at=row["taken_at"],
        since=float(data.get("since", row["taken_at"])),
        data_plane=str(data.get("dataPlane", "")),
        versions=tuple(VersionTraffic.from_json(v) for v in data.get("versions", [])),
    )


def autoscaler(row: sqlite3.Row) -> AutoscalerRecord:
    metrics = json.loads(row["metrics"] or "[]")
    return AutoscalerRecord(
        service=row["service"],
        desired=int(row["desired"]),
        decided_at=float(row["decided_at"]),
        changed_at=row["changed_at"],
        reason=row["reason"],
        metrics=tuple(m for m in metrics if isinstance(m, dict)),
        memory=load_json(row["memory"]),
        usage=load_json(row["usage"]),
    )


def node_pool(row: sqlite3.Row) -> NodePoolRecord:
    nodes = json.loads(row["nodes"] or "[]")
    return NodePoolRecord(
        pool=row["pool"],
        nodes=tuple(n for n in nodes if isinstance(n, dict)),
        pending_since=row["pending_since"],
        last=load_json(row["last"]),
        error=row["error"],
        updated_at=float(row["updated_at"]),
        provider=load_json(row["provider"]),
    )


def volume(row: sqlite3.Row) -> VolumeRecord:
    return VolumeRecord(
        name=row["name"],
        node=row["node"],
        spec=load_json(row["spec"]),
        bound_at=row["bound_at"],
        created_at=row["created_at"],
        released_at=row["released_at"],
        missing_at=row["missing_at"],
    )
