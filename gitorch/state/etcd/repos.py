"""The repositories of the etcd backend: which keys hold what, under ``/gitorch/NAMESPACE/``.

::

    meta/schema                              the data model version (backend.SCHEMA_VERSION)
    meta/cluster                             the cluster identity (the replicas' label)
    seq/NAME                                 the last id handed out of a sequence
    revisions/ID                             a revision, its per-service results inside
    rollouts/SERVICE                         a service's rollout record
    requests/SERVICE/promote|abort           a promote/abort request not acted on yet
    inventory/KIND/NAME                      an applied object's canonical form
    ports/NODE/PORT, port-owners/NODE/OWNER  a host port and its owner (both ways)
    nodes/NAME                               a registered node
    backoff/SERVICE/SLOT/TEMPLATE            crash-loop back-off of one slot's template
    analysis-runs/ID, analysis-run-ids/HASH  an analysis run, and its identity's id
    measurements/SERVICE/ID                  one analysis measurement
    traffic                                  the latest traffic of every route (one key)
    volumes/NAME/NODE                        where a Volume is bound, made, released, lost
    autoscalers/SERVICE                      an autoscaled service's count and windows
    node-pools/POOL                          a NodePool's nodes and decisions' memory
    audit/ID                                 one entry of the append-only audit log
    audit-head                               the newest entry's id and hash (the chain)
    election/leader, members/NAME            leadership (gitorch.state.etcd.election)

IDs are zero-padded so key order is id order. Records are the JSON of the record
dataclasses (snake_case, as the SQLite columns are named), so a field added to a record
(a new SQLite column) is a new JSON field, read with its default where it is absent.
Promote/abort requests live in keys of their own so that the operator's request and the
daemon's save of the rollout record never write the same key.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from gitorch.errors import StateError
from gitorch.state.audit_chain import ChainEntry, link, next_prev_hash
from gitorch.state.errors import PortUnavailable, RecordNotFound
from gitorch.state.records import (
    NOT_APPLIED,
    AnalysisRunPhase,
    AnalysisRunRecord,
    AppliedObject,
    AuditEvent,
    AutoscalerRecord,
    BackoffRecord,
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
from gitorch.state.repositories import ROLLOUT_REQUESTS, check_request

if TYPE_CHECKING:
    from gitorch.state.etcd.keyvalue import KeyValue


def _id(number: int) -> str:
    return f"{number:012d}"


def _plain(record: Any) -> dict[str, Any]:
    """A record dataclass as JSON-ready data (enums as their values)."""
    return json.loads(json.dumps(asdict(record), default=str))


# -- revisions ---------------------------------------------------------------------------


def _revision(data: Mapping[str, Any]) -> RevisionRecord:
    return RevisionRecord(
        id=int(data["id"]),
        sha=data["sha"],
        author=data.get("author", ""),
        committed_at=data.get("committed_at"),
        signer=data.get("signer"),
        applied_at=float(data["applied_at"]),
        result=RevisionResult(data["result"]),
        reason=data.get("reason", ""),
        summary=dict(data.get("summary") or {}),
        service_results={
            name: RevisionResult(res) for name, res in (data.get("service_results") or {}).items()
        },
        trigger=data.get("trigger", ""),
    )


class Revisions:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    def record(
        self,
        sha: str,
        *,
        author: str,
        committed_at: str | None,
        signer: str | None,
        services: Sequence[str],
        result: RevisionResult,
        reason: str,
        summary: Mapping[str, Any] | None,
        at: float | None,
        trigger: str,
    ) -> RevisionRecord:
        applied_at = self.kv.now(at)

        def write() -> RevisionRecord:
            record = RevisionRecord(
                id=self.kv.next_id("revisions"),
                sha=sha,
                author=author,
                committed_at=committed_at,
                signer=signer,
                applied_at=applied_at,
                result=RevisionResult(result),
                reason=reason,
                summary=dict(summary or {}),
                service_results={name: RevisionResult(result) for name in services},
                trigger=trigger,
            )
            self.kv.put(f"revisions/{_id(record.id)}", _plain(record))
            return record

        return self.kv.atomic(write)

    def finish(
        self,
        revision_id: int,
        result: RevisionResult,
        *,
        reason: str,
        summary: Mapping[str, Any] | None,
        service_results: Mapping[str, RevisionResult] | None,
    ) -> RevisionRecord:
        def write() -> RevisionRecord:
            found = self.kv.get(f"revisions/{_id(revision_id)}")
            if found is None:
                raise RecordNotFound(f"no applied revision with id {revision_id}")
            old = _revision(found)
            results = {name: RevisionResult(result) for name in old.service_results}
            results.update({n: RevisionResult(r) for n, r in (service_results or {}).items()})
            record = replace(
                old,
                result=RevisionResult(result),
                reason=reason,
                summary=dict(summary) if summary is not None else old.summary,
                service_results=results,
            )
            self.kv.put(f"revisions/{_id(revision_id)}", _plain(record))
            return record

        return self.kv.atomic(write)

    def get(self, revision_id: int) -> RevisionRecord | None:
        found = self.kv.get(f"revisions/{_id(revision_id)}")
        return None if found is None else _revision(found)

    def list(
        self, *, service: str | None, limit: int | None, before_id: int | None
    ) -> list[RevisionRecord]:
        found: list[RevisionRecord] = []
        page = None if limit is None else max(limit, 20)
        for data in self.kv.scan("revisions/", descending=True, page=page):
            if limit is not None and len(found) >= limit:
                break
            record = _revision(data)
            if before_id is not None and record.id >= before_id:
                continue
            if service is not None and service not in record.service_results:
                continue
            found.append(record)
        return found

    def _first(self, wanted: Any) -> RevisionRecord | None:
        for data in self.kv.scan("revisions/", descending=True):
            record = _revision(data)
            if wanted(record):
                return record
        return None

    def last_applied(self) -> RevisionRecord | None:
        done = (RevisionResult.SUCCEEDED, RevisionResult.NO_CHANGES)
        return self._first(lambda r: r.result in done)

    def last_attempted(self) -> RevisionRecord | None:
        return self._first(lambda r: True)

    def last_admitted(self) -> RevisionRecord | None:
        return self._first(lambda r: r.result not in NOT_APPLIED)

    def last_successful(self, service: str) -> RevisionRecord | None:
        return self._first(lambda r: r.service_results.get(service) is RevisionResult.SUCCEEDED)

    def last_successful_per_service(self) -> dict[str, RevisionRecord]:
        best: dict[str, RevisionRecord] = {}
        for data in self.kv.scan("revisions/", descending=True, page=None):
            record = _revision(data)
            for name, outcome in record.service_results.items():
                if outcome is RevisionResult.SUCCEEDED and name not in best:
                    best[name] = record
        return dict(sorted(best.items()))

    def restore(self, records: Iterable[RevisionRecord]) -> None:
        """Write ``records`` with their ids (``gitorch state migrate``)."""
        for record in records:
            self.kv.put(f"revisions/{_id(record.id)}", _plain(record))


# -- rollouts ----------------------------------------------------------------------------


def _rollout(data: Mapping[str, Any], requests: Iterable[str]) -> RolloutRecord:
    fields = dict(data)
    fields["phase"] = RolloutPhase(fields["phase"])
    fields.pop("promote_requested", None)
    fields.pop("abort_requested", None)
    asked = set(requests)
    return RolloutRecord(
        **fields,
        promote_requested="promote" in asked,
        abort_requested="abort" in asked,
    )


def _stored_rollout(record: RolloutRecord) -> dict[str, Any]:
    data = _plain(record)
    data.pop("promote_requested")
    data.pop("abort_requested")
    return data


class Rollouts:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    def upsert(self, record: RolloutRecord, *, reset_requests: bool) -> RolloutRecord:
        if not 0 <= record.weight <= 100:  # what SQLite's CHECK constraint holds
            raise StateError(f"{record.service}: rollout weight {record.weight} is not 0..100")
        now = self.kv.clock()
        stored = replace(record, started_at=record.started_at or now, updated_at=now)
        service = stored.service

        def write() -> RolloutRecord:
            is_new = self.kv.get(f"rollouts/{service}") is None
            self.kv.put(f"rollouts/{service}", _stored_rollout(stored))
            flags = {"promote": stored.promote_requested, "abort": stored.abort_requested}
            for what in ROLLOUT_REQUESTS:
                key = f"requests/{service}/{what}"
                if reset_requests:
                    self.kv.delete(key)
                    flags[what] = False
                elif is_new:
                    if flags[what]:
                        self.kv.put(key, 1)
                    else:
                        self.kv.delete(key)
                else:
                    # Reported, not decided on: a request made meanwhile must not fail
                    # the save (it stays pending for the next pass).
                    flags[what] = self.kv.peek(key) is not None
            return replace(
                stored, promote_requested=flags["promote"], abort_requested=flags["abort"]
            )

        return self.kv.atomic(write)

    def request(self, service: str, what: str) -> bool:
        check_request(what)

        def write() -> bool:
            if self.kv.get(f"rollouts/{service}") is None:
                return False
            self.kv.put(f"requests/{service}/{what}", 1)
            return True

        return self.kv.atomic(write)

    def consume_request(self, service: str, what: str) -> bool:
        check_request(what)

        def write() -> bool:
            key = f"requests/{service}/{what}"
            if self.kv.get(key) is None:
                return False
            self.kv.delete(key)
            return True

        return self.kv.atomic(write)

    def get(self, service: str) -> RolloutRecord | None:
        record, requests = self.kv.read_many(
            (f"rollouts/{service}", False), (f"requests/{service}/", True)
        )
        if not record:
            return None
        return _rollout(record[0][1], (key.rsplit("/", 1)[1] for key, _ in requests))

    def list(self) -> list[RolloutRecord]:
        records, requests = self.kv.read_many(("rollouts/", True), ("requests/", True))
        asked: dict[str, list[str]] = {}
        for key, _ in requests:
            _, service, what = key.split("/")
            asked.setdefault(service, []).append(what)
        found = [_rollout(data, asked.get(data["service"], ())) for _, data in records]
        return sorted(found, key=lambda r: r.service)

    def delete(self, service: str) -> bool:
        def write() -> bool:
            existed = self.kv.get(f"rollouts/{service}") is not None
            self.kv.delete(f"rollouts/{service}")
            for what in ROLLOUT_REQUESTS:
                self.kv.delete(f"requests/{service}/{what}")
            return existed

        return self.kv.atomic(write)

    def restore(self, records: Iterable[RolloutRecord]) -> None:
        for record in records:
            self.kv.put(f"rollouts/{record.service}", _stored_rollout(record))
            if record.promote_requested:
                self.kv.put(f"requests/{record.service}/promote", 1)
            if record.abort_requested:
                self.kv.put(f"requests/{record.service}/abort", 1)


# -- inventory ---------------------------------------------------------------------------


class Inventory:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    def record(
        self, kind: str, name: str, revision: str, digest: str, spec: Mapping[str, Any]
    ) -> None:
        entry = AppliedObject(kind, name, revision, digest, dict(spec), self.kv.clock())
        self.kv.atomic(lambda: self.kv.put(f"inventory/{kind}/{name}", _plain(entry)))

    def forget(self, kind: str, name: str) -> bool:
        def write() -> bool:
            existed = self.kv.get(f"inventory/{kind}/{name}") is not None
            self.kv.delete(f"inventory/{kind}/{name}")
            return existed

        return self.kv.atomic(write)

    def list(self) -> list[AppliedObject]:
        found = [AppliedObject(**data) for _, data in self.kv.range("inventory/")]
        return sorted(found, key=lambda a: (a.kind, a.name))

    def restore(self, records: Iterable[AppliedObject]) -> None:
        for entry in records:
            self.kv.put(f"inventory/{entry.kind}/{entry.name}", _plain(entry))


# -- ports -------------------------------------------------------------------------------


class Ports:
    """A port and its owner are two keys written together: ``ports/NODE/PORT`` (no double
    allocation) and ``port-owners/NODE/OWNER`` (one port per owner and node). The
    transaction's condition on what it read makes two racing allocations conflict; the
    loser tries again."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    def allocate(
        self,
        node: str,
        owner: str,
        *,
        port: int | None,
        port_range: tuple[int, int],
        at: float | None,
    ) -> PortAllocation:
        low, high = port_range
        allocated_at = self.kv.now(at)

        def write() -> PortAllocation:
            held = self.kv.get(f"port-owners/{node}/{owner}")
            if held is not None:
                held_port = int(held["host_port"])
                if port is None or held_port == port:
                    return PortAllocation(node, held_port, owner, float(held["allocated_at"]))
                raise PortUnavailable(
                    f"{owner} already holds port {held_port} on node {node};"
                    f" release it before asking for {port}"
                )
            chosen = port
            if chosen is None:
                used = {int(key.rsplit("/", 1)[1]) for key, _ in self.kv.range(f"ports/{node}/")}
                chosen = next((p for p in range(low, high + 1) if p not in used), None)
                if chosen is None:
                    raise PortUnavailable(
                        f"every port from {low} to {high} on node {node} is allocated"
                    )
            else:
                taken = self.kv.get(f"ports/{node}/{chosen:05d}")
                if taken is not None:
                    raise PortUnavailable(
                        f"port {chosen} on node {node} is already allocated to {taken['owner']}"
                    )
            value = {"host_port": chosen, "owner": owner, "allocated_at": allocated_at}
            self.kv.put(f"ports/{node}/{chosen:05d}", value)
            self.kv.put(f"port-owners/{node}/{owner}", value)
            return PortAllocation(node, chosen, owner, allocated_at)

        return self.kv.atomic(write)

    def release(self, node: str, host_port: int) -> bool:
        def write() -> bool:
            held = self.kv.get(f"ports/{node}/{host_port:05d}")
            if held is None:
                return False
            self.kv.delete(f"ports/{node}/{host_port:05d}")
            self.kv.delete(f"port-owners/{node}/{held['owner']}")
            return True

        return self.kv.atomic(write)

    def release_owner(self, owner: str) -> int:
        def write() -> int:
            count = 0
            for key, value in self.kv.range("port-owners/"):
                node, held_by = key.split("/", 2)[1:]
                if held_by == owner:
                    self.kv.delete(key)
                    self.kv.delete(f"ports/{node}/{int(value['host_port']):05d}")
                    count += 1
            return count

        return self.kv.atomic(write)

    def list(self, node: str | None) -> list[PortAllocation]:
        found = [
            PortAllocation(
                key.split("/")[1], int(v["host_port"]), v["owner"], float(v["allocated_at"])
            )
            for key, v in self.kv.range("ports/" if node is None else f"ports/{node}/")
        ]
        return sorted(found, key=lambda p: (p.node, p.host_port))

    def restore(self, records: Iterable[PortAllocation]) -> None:
        for p in records:
            value = {"host_port": p.host_port, "owner": p.owner, "allocated_at": p.allocated_at}
            self.kv.put(f"ports/{p.node}/{p.host_port:05d}", value)
            self.kv.put(f"port-owners/{p.node}/{p.owner}", value)


# -- nodes -------------------------------------------------------------------------------


def _node(data: Mapping[str, Any]) -> NodeRecord:
    return NodeRecord(
        name=data["name"],
        driver=data["driver"],
        endpoint=data.get("endpoint", ""),
        labels={str(k): str(v) for k, v in (data.get("labels") or {}).items()},
        last_seen=data.get("last_seen"),
        condition=NodeCondition(data.get("condition", "Unknown")),
        message=data.get("message", ""),
        draining=bool(data.get("draining", False)),
    )


class Nodes:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    def _change(self, name: str, **changes: Any) -> NodeRecord:
        def write() -> NodeRecord:
            found = self.kv.get(f"nodes/{name}")
            if found is None:
                raise RecordNotFound(f"no node named {name!r} is registered")
            record = replace(_node(found), **changes)
            self.kv.put(f"nodes/{name}", _plain(record))
            return record

        return self.kv.atomic(write)

    def register(
        self, name: str, driver: str, *, endpoint: str, labels: Mapping[str, str] | None
    ) -> NodeRecord:
        def write() -> NodeRecord:
            found = self.kv.get(f"nodes/{name}")
            base = _node(found) if found is not None else NodeRecord(name=name, driver=driver)
            record = replace(base, driver=driver, endpoint=endpoint, labels=dict(labels or {}))
            self.kv.put(f"nodes/{name}", _plain(record))
            return record

        return self.kv.atomic(write)

    def update_condition(
        self, name: str, condition: NodeCondition, *, message: str, seen: bool, at: float | None
    ) -> NodeRecord:
        changes: dict[str, Any] = {"condition": NodeCondition(condition), "message": message}
        if seen:
            changes["last_seen"] = self.kv.now(at)
        return self._change(name, **changes)

    def set_draining(self, name: str, draining: bool) -> NodeRecord:
        return self._change(name, draining=draining)

    def get(self, name: str) -> NodeRecord | None:
        found = self.kv.get(f"nodes/{name}")
        return None if found is None else _node(found)

    def list(self) -> list[NodeRecord]:
        return sorted((_node(data) for _, data in self.kv.range("nodes/")), key=lambda n: n.name)

    def remove(self, name: str) -> bool:
        def write() -> bool:
            existed = self.kv.get(f"nodes/{name}") is not None
            self.kv.delete(f"nodes/{name}")
            return existed

        return self.kv.atomic(write)

    def restore(self, records: Iterable[NodeRecord]) -> None:
        for record in records:
            self.kv.put(f"nodes/{record.name}", _plain(record))


# -- back-off ----------------------------------------------------------------------------


class Backoff:
    """One key per slot and template: ``backoff/SERVICE/SLOT/TEMPLATE`` ("-" for a record
    of the service itself or of any template). Keys written before the template was
    part of it (``backoff/SERVICE/SLOT``) are read as they are and replaced by the key
    of their template at the slot's next write."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @staticmethod
    def _slot(service: str, slot: int) -> str:
        return f"backoff/{service}/{slot:06d}"

    def _key(self, record: BackoffRecord) -> str:
        return f"{self._slot(record.service, record.slot)}/{record.template or '-'}"

    def record(self, record: BackoffRecord) -> None:
        def write() -> None:
            legacy_key = self._slot(record.service, record.slot)
            legacy = self.kv.get(legacy_key)
            if legacy is not None:
                self.kv.delete(legacy_key)
                moved = BackoffRecord(**legacy)
                if moved.key != record.key:
                    self.kv.put(self._key(moved), _plain(moved))
            self.kv.put(self._key(record), _plain(record))

        self.kv.atomic(write)

    def clear(self, service: str, slot: int | None, template: str | None = None) -> None:
        def write() -> None:
            if slot is not None and template is not None:
                self.kv.delete(f"{self._slot(service, slot)}/{template or '-'}")
                legacy = self.kv.get(self._slot(service, slot))
                if legacy is not None and (legacy.get("template") or "") == template:
                    self.kv.delete(self._slot(service, slot))
                return
            prefix = f"backoff/{service}/" if slot is None else self._slot(service, slot)
            for key, _ in self.kv.range(prefix):
                self.kv.delete(key)

        self.kv.atomic(write)

    def list(self) -> list[BackoffRecord]:
        found = [BackoffRecord(**data) for _, data in self.kv.range("backoff/")]
        return sorted(found, key=lambda b: (b.service, b.slot, b.template or ""))

    def restore(self, records: Iterable[BackoffRecord]) -> None:
        for record in records:
            self.kv.put(self._key(record), _plain(record))


# -- analysis runs and measurements ------------------------------------------------------


def _run(data: Mapping[str, Any]) -> AnalysisRunRecord:
    return AnalysisRunRecord(**{**data, "phase": AnalysisRunPhase(data["phase"])})


def _measurement(data: Mapping[str, Any]) -> Measurement:
    return Measurement(**{**data, "phase": MeasurementPhase(data["phase"])})


def _identity(service: str, revision: str, analysis: str, step_started_at: float) -> str:
    text = json.dumps([service, revision, analysis, step_started_at])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class Analysis:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    def add_measurement(
        self,
        service: str,
        revision: str,
        phase: MeasurementPhase,
        *,
        analysis: str,
        value: Mapping[str, Any] | None,
        message: str,
        at: float | None,
        run_id: int | None,
    ) -> Measurement:
        taken_at = self.kv.now(at)

        def write() -> Measurement:
            if run_id is not None and self.kv.get(f"analysis-runs/{_id(run_id)}") is None:
                raise RecordNotFound(f"no analysis run with id {run_id}")
            record = Measurement(
                id=self.kv.next_id("measurements"),
                service=service,
                revision=revision,
                analysis=analysis,
                taken_at=taken_at,
                phase=MeasurementPhase(phase),
                value=dict(value or {}),
                message=message,
                run_id=run_id,
            )
            self.kv.put(f"measurements/{service}/{_id(record.id)}", _plain(record))
            return record

        return self.kv.atomic(write)

    def list_measurements(
        self,
        service: str | None,
        *,
        revision: str | None,
        analysis: str | None,
        run_id: int | None,
        limit: int | None,
    ) -> list[Measurement]:
        found = [
            m
            for m in (
                _measurement(d)
                for _, d in self.kv.range(
                    "measurements/" if service is None else f"measurements/{service}/"
                )
            )
            if (revision is None or m.revision == revision)
            and (analysis is None or m.analysis == analysis)
            and (run_id is None or m.run_id == run_id)
        ]
        found.sort(key=lambda m: m.id)
        return found if limit is None else found[-limit:] if limit > 0 else []

    def open_run(
        self,
        service: str,
        revision: str,
        analysis: str,
        step_started_at: float,
        *,
        at: float | None,
    ) -> AnalysisRunRecord:
        index = f"analysis-run-ids/{_identity(service, revision, analysis, step_started_at)}"
        started_at = self.kv.now(at)

        def write() -> AnalysisRunRecord:
            known = self.kv.get(index)
            if known is not None:
                found = self.kv.get(f"analysis-runs/{_id(int(known))}")
                if found is not None:
                    return _run(found)
            record = AnalysisRunRecord(
                id=self.kv.next_id("analysis-runs"),
                service=service,
                revision=revision,
                analysis=analysis,
                step_started_at=step_started_at,
                started_at=started_at,
            )
            self.kv.put(f"analysis-runs/{_id(record.id)}", _plain(record))
            self.kv.put(index, record.id)
            return record

        return self.kv.atomic(write)

    def conclude_run(
        self, run_id: int, phase: AnalysisRunPhase, message: str, *, at: float | None
    ) -> AnalysisRunRecord:
        phase = AnalysisRunPhase(phase)
        when = self.kv.now(at)

        def write() -> AnalysisRunRecord:
            found = self.kv.get(f"analysis-runs/{_id(run_id)}")
            if found is None:
                raise RecordNotFound(f"no analysis run with id {run_id}")
            old = _run(found)
            concluded = None if phase is AnalysisRunPhase.RUNNING else (old.concluded_at or when)
            record = replace(old, phase=phase, message=message, concluded_at=concluded)
            self.kv.put(f"analysis-runs/{_id(run_id)}", _plain(record))
            return record

        return self.kv.atomic(write)

    def list_runs(
        self, service: str | None, *, revision: str | None, step_started_at: float | None
    ) -> list[AnalysisRunRecord]:
        return [
            run
            for run in (_run(d) for _, d in self.kv.range("analysis-runs/"))
            if (service is None or run.service == service)
            and (revision is None or run.revision == revision)
            and (step_started_at is None or run.step_started_at == step_started_at)
        ]

    def set_window(self, run_id: int, figures: Mapping[str, Any]) -> None:
        def write() -> None:
            found = self.kv.get(f"analysis-runs/{_id(run_id)}")
            if found is None:
                return  # as SQLite's UPDATE of no row
            record = replace(_run(found), window_figures=dict(figures))
            self.kv.put(f"analysis-runs/{_id(run_id)}", _plain(record))

        self.kv.atomic(write)

    def restore(
        self, runs: Iterable[AnalysisRunRecord], measurements: Iterable[Measurement]
    ) -> None:
        for run in runs:
            self.kv.put(f"analysis-runs/{_id(run.id)}", _plain(run))
            identity = _identity(run.service, run.revision, run.analysis, run.step_started_at)
            self.kv.put(f"analysis-run-ids/{identity}", run.id)
        for m in measurements:
            self.kv.put(f"measurements/{m.service}/{_id(m.id)}", _plain(m))


# -- traffic -----------------------------------------------------------------------------


def _traffic(service: str, data: Mapping[str, Any]) -> TrafficSnapshot:
    figures = data.get("data") or {}
    return TrafficSnapshot(
        service=service,
        taken_at=float(data["taken_at"]),
        since=float(figures.get("since", data["taken_at"])),
        data_plane=str(figures.get("dataPlane", "")),
        versions=tuple(VersionTraffic.from_json(v) for v in figures.get("versions", [])),
    )


class Traffic:
    """Every route's snapshot in one key: replaced whole every few seconds, one write."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    def replace(self, snapshots: Iterable[TrafficSnapshot]) -> None:
        value = {s.service: {"taken_at": s.taken_at, "data": s.data_json()} for s in snapshots}
        self.kv.atomic(lambda: self.kv.put("traffic", value))

    def get(self, service: str) -> TrafficSnapshot | None:
        found = (self.kv.get("traffic") or {}).get(service)
        return None if found is None else _traffic(service, found)

    def list(self) -> list[TrafficSnapshot]:
        found = self.kv.get("traffic") or {}
        return [_traffic(name, found[name]) for name in sorted(found)]


# -- autoscalers and node pools ---------------------------------------------------------


R = TypeVar("R")


class _OneKeyEach(ABC, Generic[R]):
    """Records kept one key each under ``prefix`` (``PREFIX/NAME``), whole on every save."""

    prefix: str

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @abstractmethod
    def _name(self, record: R) -> str:
        """The record's name, the last part of its key."""

    @abstractmethod
    def _record(self, data: Mapping[str, Any]) -> R:
        """The record from its stored JSON."""

    def save(self, record: R) -> None:
        key = f"{self.prefix}/{self._name(record)}"
        self.kv.atomic(lambda: self.kv.put(key, _plain(record)))

    def get(self, name: str) -> R | None:
        found = self.kv.get(f"{self.prefix}/{name}")
        return None if found is None else self._record(found)

    def list(self) -> list[R]:
        records = [self._record(data) for _, data in self.kv.range(f"{self.prefix}/")]
        return sorted(records, key=self._name)

    def forget(self, name: str) -> bool:
        def write() -> bool:
            if self.kv.get(f"{self.prefix}/{name}") is None:
                return False
            self.kv.delete(f"{self.prefix}/{name}")
            return True

        return self.kv.atomic(write)


class Autoscalers(_OneKeyEach[AutoscalerRecord]):
    prefix = "autoscalers"

    def _name(self, record: AutoscalerRecord) -> str:
        return record.service

    def _record(self, data: Mapping[str, Any]) -> AutoscalerRecord:
        return AutoscalerRecord(**{**data, "metrics": tuple(data.get("metrics") or ())})


class NodePools(_OneKeyEach[NodePoolRecord]):
    prefix = "node-pools"

    def _name(self, record: NodePoolRecord) -> str:
        return record.pool

    def _record(self, data: Mapping[str, Any]) -> NodePoolRecord:
        return NodePoolRecord(**{**data, "nodes": tuple(data.get("nodes") or ())})


# -- volumes -----------------------------------------------------------------------------


def _volume(data: Mapping[str, Any]) -> VolumeRecord:
    return VolumeRecord(**data)


class Volumes:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    def bind(self, name: str, node: str, spec: Mapping[str, Any], *, at: float | None) -> None:
        bound_at = self.kv.now(at)

        def write() -> None:
            found = self.kv.get(f"volumes/{name}/{node}")
            record = (
                replace(_volume(found), spec=dict(spec), released_at=None)
                if found is not None
                else VolumeRecord(name=name, node=node, spec=dict(spec), bound_at=bound_at)
            )
            self.kv.put(f"volumes/{name}/{node}", _plain(record))

        self.kv.atomic(write)

    def _change(self, name: str, node: str | None, change: Any) -> int:
        """Apply ``change(record)`` (None: delete) to the record of ``name`` on ``node``
        (None: on every node); how many there were."""

        def write() -> int:
            found = [
                (key, _volume(data))
                for key, data in self.kv.range(f"volumes/{name}/")
                if node is None or key == f"volumes/{name}/{node}"
            ]
            for key, record in found:
                changed = change(record)
                if changed is None:
                    self.kv.delete(key)
                else:
                    self.kv.put(key, _plain(changed))
            return len(found)

        return self.kv.atomic(write)

    def created(self, name: str, node: str, *, at: float | None) -> None:
        when = self.kv.now(at)
        self._change(name, node, lambda v: replace(v, created_at=when, missing_at=None))

    def missing(self, name: str, node: str, *, at: float | None) -> None:
        when = self.kv.now(at)
        self._change(name, node, lambda v: replace(v, missing_at=v.missing_at or when))

    def release(self, name: str, *, at: float | None) -> None:
        when = self.kv.now(at)
        self._change(name, None, lambda v: replace(v, released_at=v.released_at or when))

    def forget(self, name: str, node: str | None) -> bool:
        return self._change(name, node, lambda v: None) > 0

    def list(self) -> list[VolumeRecord]:
        found = (_volume(data) for _, data in self.kv.range("volumes/"))
        return sorted(found, key=lambda v: (v.name, v.node))  # as SQLite orders them

    def restore(self, records: Iterable[VolumeRecord]) -> None:
        for record in records:
            self.kv.put(f"volumes/{record.name}/{record.node}", _plain(record))


# -- audit -------------------------------------------------------------------------------


def _chain_entry(data: Mapping[str, Any]) -> ChainEntry:
    return ChainEntry(**{**data, "data": dict(data.get("data") or {})})


def _event(data: Mapping[str, Any]) -> AuditEvent:
    entry = _chain_entry(data)
    return AuditEvent(
        id=entry.id,
        at=entry.at,
        kind=entry.kind,
        message=entry.message,
        service=entry.service,
        revision=entry.revision,
        data=entry.data,
        actor=entry.actor,
        hash=entry.hash,
    )


#: The newest chained entry's id and hash: what the next entry links to.
AUDIT_HEAD = "audit-head"


class Audit:
    """Append-only by construction: nothing here updates or deletes an ``audit/`` key.
    Each entry carries its link in the hash chain (``prev_hash``, ``hash``), computed by
    :mod:`gitorch.state.audit_chain` exactly as on SQLite."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    def append(
        self,
        kind: str,
        message: str,
        *,
        service: str | None,
        revision: str | None,
        data: Mapping[str, Any] | None,
        at: float | None,
        actor: str,
    ) -> AuditEvent:
        event_at = self.kv.now(at)
        stored_data = json.loads(json.dumps(dict(data or {})))  # hashed as it is read back

        def write() -> AuditEvent:
            # The sequence and the head join the transaction's condition: two appends
            # cannot both link to the same head (the second is tried again).
            entry = ChainEntry(
                id=self.kv.next_id("audit"),
                at=event_at,
                kind=kind,
                message=message,
                actor=actor,
                service=service,
                revision=revision,
                data=stored_data,
            )
            prev_hash = self._head_hash()
            entry = replace(entry, prev_hash=prev_hash, hash=link(prev_hash, entry))
            self.kv.put(f"audit/{_id(entry.id)}", _plain(entry))
            self.kv.put(AUDIT_HEAD, {"id": entry.id, "hash": entry.hash})
            return _event(_plain(entry))

        return self.kv.atomic(write)

    def _head_hash(self) -> str:
        head = self.kv.get(AUDIT_HEAD)
        if head is not None:
            return str(head["hash"])
        # No head yet: the first chained entry of this namespace. It seals whatever was
        # written before the chain (a namespace of an older gitorch); GENESIS if nothing.
        found = [_chain_entry(d) for _, d in self.kv.range("audit/")]
        chained = [e for e in found if e.hash is not None]
        return next_prev_hash(
            chained[-1] if chained else None, [e for e in found if e.hash is None]
        )

    def chain(self) -> tuple[list[ChainEntry], int | None]:
        entries, seq = self.kv.read_many(("audit/", True), ("seq/audit", False))
        found = sorted((_chain_entry(d) for _, d in entries), key=lambda e: e.id)
        return found, (int(seq[0][1]) if seq else None)

    def list(
        self,
        *,
        service: str | None,
        kind: str | None,
        after_id: int | None,
        since: float | None,
        limit: int | None,
        newest_first: bool,
    ) -> list[AuditEvent]:
        found: list[AuditEvent] = []
        page = None if limit is None else max(limit, 20)
        for data in self.kv.scan("audit/", descending=newest_first, page=page):
            if limit is not None and len(found) >= limit:
                break
            event = _event(data)
            if after_id is not None and event.id <= after_id:
                if newest_first:
                    break
                continue
            if (
                (service is not None and event.service != service)
                or (kind is not None and event.kind != kind)
                or (since is not None and event.at < since)
            ):
                continue
            found.append(event)
        return found

    def restore(self, entries: Iterable[ChainEntry]) -> None:
        """Entries as they are, links included; the head follows the newest chained one
        (written by the backend's restore, after every batch)."""
        for entry in entries:
            self.kv.put(f"audit/{_id(entry.id)}", _plain(entry))
