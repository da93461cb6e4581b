"""The status document: every service's replicas, rollout, endpoint and traffic, the nodes,
and the last error (of the store's last revision, or what a running daemon reports)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from gitorch.decide.backoff import listen_retry, remaining
from gitorch.decide.service import slot_of
from gitorch.decide.vertical import recommendation_lines
from gitorch.errors import StateError
from gitorch.live.model import LiveReplica, LiveService, LiveState
from gitorch.manifests.model import POOL_LABEL
from gitorch.readmodel.allocation import allocation
from gitorch.readmodel.cluster import ClusterView
from gitorch.readmodel.daemon_file import read_daemon_file
from gitorch.readmodel.volumes import volumes_json
from gitorch.state import AutoscalerRecord, BackoffRecord, StateStore, TrafficSnapshot, lock_holder
from gitorch.state.records import NO_BACKOFF, RevisionResult, ServiceBackoff, iso_time
from gitorch.strategies.canary import analysis_label
from gitorch.traffic.holders import own_data_plane


def service_json(
    service: LiveService,
    backoff: ServiceBackoff | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """One service of the status document. ``backoff``: the crash-loop state per slot
    and template (gitorch replaces a crashed replica, so the runtime's own count stays
    0); slot 0 is a failure of the service itself (a port it cannot bind), which makes it
    Degraded."""
    backoff = backoff or NO_BACKOFF
    now = time.time() if now is None else now
    applied = service.applied
    # The crash loops of the version applied or of one still running: a version rolled
    # back from runs nowhere, and its replicas' restarts are history (`gitorch history`,
    # the events), not the live replicas' (which would read as flapping).
    current = {r.template_digest for r in service.replicas}
    if applied is not None:
        current.add(applied.digest)
    # Failed starts are the slot's until a replica of that template runs there: then the
    # start works, and the running replica did not restart (status said `6 restart(s),
    # last: start failed: ...` beside a Healthy service until the record reset, 60 s).
    started = {
        (slot_of(r.replica), r.template_digest) for r in service.replicas if r.state == "running"
    }
    slots = [
        b
        for b in backoff.replicas
        if (b.template is None or b.template in current)
        and not (b.failed_start and _ran(b.slot, b, started))
    ]
    shown = ServiceBackoff(tuple(slots))
    failure = backoff.failure
    spec = applied.canonical.get("spec", {}) if applied else {}
    desired = spec.get("replicas", 0) if applied else 0
    expose = spec.get("expose")
    return {
        "name": service.name,
        "revision": applied.revision if applied else None,
        "replicas": {
            "desired": desired,
            "running": len(service.running),
            "ready": sum(1 for r in service.replicas if r.ready),
            "updated": sum(
                1
                for r in service.running
                if applied is not None and r.template_digest == applied.digest
            ),
        },
        "rollout": {
            # A failure of the service itself (its port) outranks the rollout's phase.
            "phase": "Degraded"
            if failure is not None
            else (applied.phase if applied else "Unmanaged"),
            "step": applied.step if applied else None,
            "weight": applied.weight if applied else 100,
            "lastError": failure.reason
            if failure is not None
            else (applied.last_error if applied else None),
            "message": applied.message if applied else "",
        },
        "failure": _failure_json(failure, now) if failure is not None else None,
        "endpoint": {"port": expose["port"], "protocol": expose["protocol"]} if expose else None,
        # The applied strategy (its steps draw the rollout on the dashboard).
        "strategy": spec.get("strategy"),
        # Crash-loop restarts of all slots (a slot in back-off may have no replica at all),
        # and starts that failed (no replica ran: they are not restarts).
        "restarts": sum(b.restarts for b in slots if not b.failed_start),
        "failedStarts": sum(b.restarts for b in slots if b.failed_start),
        "backoff": [
            {
                "replica": f"{service.name}-{b.slot}",
                # A progressive rollout's stable replica backs off on its own record,
                # beside the slot's new one.
                "stable": applied is not None
                and b.template is not None
                and b.template != applied.digest,
                "restarts": 0 if b.failed_start else b.restarts,
                "failedStarts": b.restarts if b.failed_start else 0,
                "lastCause": b.reason or None,
                "exitCode": b.last_exit_code,
                "retryInSeconds": round(remaining(b, now), 1),
            }
            for b in slots
        ],
        "instances": [
            {
                "id": r.id,
                "name": r.name,
                "replica": r.replica,
                "node": r.node,
                "revision": r.revision,
                "state": r.state,
                "ready": r.ready,
                "address": r.address,
                "startedAt": r.started_at,
                "restarts": max(r.restarts, _restarts_of(r, shown)),
                "exitCode": r.exit_code,
                "exitReason": r.exit_reason,
            }
            for r in service.replicas
        ],
    }


def _restarts_of(replica: LiveReplica, slots: ServiceBackoff) -> int:
    """Restarts counted on ``replica``'s slot for the template it runs (a failed new
    version's deaths are not the old version's restarts, nor are failed starts)."""
    known = slots.get(slot_of(replica.replica), replica.template_digest)
    if known is None or known.failed_start:
        return 0
    return known.restarts


def _ran(slot: int, record: BackoffRecord, started: set[tuple[int, str | None]]) -> bool:
    """A replica of the template whose starts failed in ``slot`` runs there now."""
    if record.template is None:
        return any(s == slot for s, _ in started)
    return (slot, record.template) in started


def _failure_json(failure: BackoffRecord, now: float) -> dict[str, Any]:
    return {
        "message": failure.reason,
        "failures": failure.restarts,
        "retryInSeconds": round(remaining(failure, now, listen_retry()), 1),
    }


def autoscale_json(
    service: LiveService, record: AutoscalerRecord | None, now: float
) -> dict[str, Any] | None:
    """The ``autoscale`` field of one service: bounds (as applied), the autoscaler's count,
    its last decision and every metric's reading; None when the service is not autoscaled."""
    applied = service.applied
    spec = applied.canonical.get("spec", {}) if applied else {}
    auto = spec.get("autoscale")
    if auto is None:
        return None
    low, high = int(auto.get("minReplicas", 1)), int(auto["maxReplicas"])
    doc: dict[str, Any] = {
        "min": low,
        "max": high,
        "desired": None,
        "decidedAt": None,
        "changedAt": None,
        "reason": "no decision yet (the daemon's autoscaler decides every sync period)",
        "metrics": [],
    }
    if record is not None:
        doc.update(
            desired=max(low, min(high, record.desired)),
            decidedAt=record.decided_at,
            ageSeconds=round(max(0.0, now - record.decided_at), 1),
            changedAt=record.changed_at,
            reason=record.reason,
            metrics=[dict(m) for m in record.metrics],
        )
    vertical = auto.get("vertical")
    if vertical is not None:
        stored = record.usage.get("recommendation") if record is not None else None
        applied = record.usage.get("applied") if record is not None else None
        requests = spec.get("resources", {}).get("requests", {})
        doc["vertical"] = {
            "mode": vertical["mode"],
            "requests": dict(requests),
            "recommendation": dict(stored) if stored else None,
            "applied": dict(applied) if isinstance(applied, dict) else None,
            "lines": list(recommendation_lines(vertical["mode"], requests, stored, applied)),
        }
    return doc


def traffic_json(name: str, snapshots: Mapping[str, TrafficSnapshot], now: float) -> dict[str, Any]:
    """The ``traffic`` fields of one service: its endpoint's per-version figures (None when
    no daemon stored any) and, during a blue-green rollout, its preview listener's."""
    main = snapshots.get(name)
    preview = snapshots.get(f"{name}.preview")
    return {
        "traffic": main.to_json(now) if main is not None else None,
        **({"previewTraffic": preview.to_json(now)} if preview is not None else {}),
    }


def node_pools_json(store: StateStore | None, live: LiveState) -> list[dict[str, Any]]:
    """Every NodePool: its bounds (as applied from Git), its nodes (state, the share
    requested there, since when under-used), since when replicas wait for one of its
    nodes, its last decision and the provider's last error."""
    if store is None:
        return []
    out = []
    for record in store.list_node_pools():
        applied = live.inventory.get(("NodePool", record.pool))
        spec = applied.canonical.get("spec", {}) if applied is not None else {}
        out.append(
            {
                "name": record.pool,
                "inGit": applied is not None,
                "minNodes": spec.get("minNodes"),
                "maxNodes": spec.get("maxNodes"),
                "nodes": [
                    {
                        "name": n["name"],
                        "state": n.get("state"),
                        "endpoint": n.get("endpoint"),
                        "ready": n["name"] in live.nodes and live.nodes[n["name"]].ready,
                        "utilization": n.get("utilization"),
                        "lowSince": n.get("low_since"),
                        "createdAt": n.get("created_at"),
                    }
                    for n in record.nodes
                ],
                "pendingSince": record.pending_since,
                "lastDecision": dict(record.last) or None,
                "error": record.error or None,
                "updatedAt": record.updated_at,
            }
        )
    applied_only = sorted(name for kind, name in live.inventory if kind == "NodePool")
    known = {p["name"] for p in out}
    for name in applied_only:
        if name in known:
            continue
        spec = live.inventory[("NodePool", name)].canonical.get("spec", {})
        out.append(
            {
                "name": name,
                "inGit": True,
                "minNodes": spec.get("minNodes"),
                "maxNodes": spec.get("maxNodes"),
                "nodes": [],
                "pendingSince": None,
                "lastDecision": None,
                "error": None,
                "updatedAt": None,
            }
        )
    return sorted(out, key=lambda p: p["name"])


class ServiceEntries:
    """The status document's service entries kept between documents (a daemon's status
    of 2,000 services built them all again for every request: ~half its CPU).

    An entry is reused while its service is the very same observed object (a daemon
    hands the same :class:`LiveService` while neither its observation nor the health
    monitor's readiness moved), it has no crash-loop record and is not autoscaled: those
    show a clock (the back-off's retry, the autoscaler's age) and are built every time.
    Its traffic fields are added per document. Entries are shared between documents:
    readers never change them. Only the last document's entries are kept."""

    def __init__(self) -> None:
        self._kept: dict[int, tuple[LiveService, dict[str, Any]]] = {}

    def entry(
        self,
        service: LiveService,
        backoff: ServiceBackoff | None,
        live: LiveState,
        now: float,
        kept: dict[int, tuple[LiveService, dict[str, Any]]],
    ) -> dict[str, Any]:
        """``service``'s entry (without traffic), reused or built; a reusable one is
        put in ``kept`` (the next document's)."""
        held = self._kept.get(id(service))
        if held is not None and held[0] is service and not backoff:
            kept[id(service)] = held
            return held[1]
        doc = _autoscaled(service_json(service, backoff, now), service, live, now)
        if not backoff and doc["autoscale"] is None:
            kept[id(service)] = (service, doc)
        return doc

    def keep(self, kept: dict[int, tuple[LiveService, dict[str, Any]]]) -> None:
        """What the next document may reuse (this one's reusable entries)."""
        self._kept = kept


def status_json(
    view: ClusterView,
    only: str | None,
    *,
    traffic: Mapping[str, TrafficSnapshot] | None = None,
    control_plane: Mapping[str, Any] | None = None,
    entries: ServiceEntries | None = None,
) -> dict[str, Any]:
    """The status document. ``traffic``: route -> its figures (the daemon passes what it
    reads now); None reads the snapshots the daemon last stored. ``entries``: service
    entries kept from the last document (a daemon's; not with ``only``)."""
    live = view.live
    if traffic is None:
        stored = view.store.list_traffic() if view.store is not None else []
        traffic = {snap.service: snap for snap in stored}
    now = time.time()
    last_error = None
    applying = None
    if view.store is not None:
        attempted = view.store.last_attempted_revision()
        if attempted is not None and str(attempted.result) in ("failed", "rolled-back"):
            last_error = attempted.reason or f"the last revision {attempted.result}"
        admitted = view.store.last_admitted_revision()
        if admitted is not None and admitted.result is RevisionResult.IN_PROGRESS:
            applying = admitted.sha
    services = [s for name, s in sorted(live.services.items()) if only in (None, name)]
    measurements: dict[str, list[dict[str, Any]]] = {}
    if only is not None and view.store is not None:
        measurements[only] = [
            {
                "analysis": m.analysis,
                "label": analysis_label(m.analysis),
                "revision": m.revision,
                "phase": str(m.phase),
                "takenAt": m.taken_at,
                "message": m.message,
                "value": dict(m.value),
            }
            for m in view.store.list_measurements(only, limit=None)[-20:]
        ]
    records: dict[str, list[BackoffRecord]] = {}
    for record in view.store.list_backoff() if view.store is not None else []:
        records.setdefault(record.service, []).append(record)
    backoff = {name: ServiceBackoff(tuple(found)) for name, found in records.items()}
    used = allocation(live)
    daemon_error = _daemon_error(view)
    if daemon_error is not None:
        last_error = daemon_error.get("message") or last_error
    kept: dict[int, tuple[LiveService, dict[str, Any]]] = {}
    if entries is not None and only is None:
        built = [entries.entry(s, backoff.get(s.name), live, now, kept) for s in services]
        entries.keep(kept)
    else:
        built = [
            _autoscaled(service_json(s, backoff.get(s.name), now), s, live, now) for s in services
        ]
    return {
        "cluster": live.cluster or None,
        "revision": live.last_applied_revision,
        # The revision being rolled out now (its services' REVISION already), if any: the
        # cluster's revision above stays the last one applied to the end.
        "applying": applying,
        "lastError": last_error,
        "nodes": [
            {
                "name": n.name,
                "driver": n.driver,
                "ready": n.ready,
                "message": n.message,
                # Millicores and bytes: what the node offers, and its replicas request.
                "capacity": {"cpu": n.cpu_millis, "memory": n.memory_bytes},
                "requested": {"cpu": used[n.name]["cpu"], "memory": used[n.name]["memory"]},
                "replicas": used[n.name]["replicas"],
                **({"pool": n.labels[POOL_LABEL]} if POOL_LABEL in n.labels else {}),
            }
            for n in live.nodes.values()
        ],
        "nodePools": node_pools_json(view.store, live),
        "services": [
            {
                **entry,
                **({"analysis": measurements[s.name]} if s.name in measurements else {}),
                **traffic_json(s.name, traffic, now),
            }
            for s, entry in zip(services, built, strict=True)
        ],
        "volumes": volumes_json(live),
        **({"lastErrorDetail": daemon_error.get("diagnostics", [])} if daemon_error else {}),
        "controlPlane": dict(control_plane)
        if control_plane is not None
        else control_plane_json(view.store),
    }


def _autoscaled(doc: dict[str, Any], service: LiveService, live: Any, now: float) -> dict[str, Any]:
    """``doc`` with the ``autoscale`` field; an autoscaled service's desired count is the
    autoscaler's (Git's ``replicas`` is not what it runs)."""
    auto = autoscale_json(service, live.autoscalers.get(service.name), now)
    doc["autoscale"] = auto
    if auto is not None and auto["desired"] is not None:
        doc["replicas"]["desired"] = auto["desired"]
    return doc


def _daemon_error(view: ClusterView) -> dict[str, Any] | None:
    """The error a running daemon reports (an invalid newest commit, an unreachable repo):
    with etcd state, the leader's member record; else the daemon file."""
    if view.store is not None and view.store.location.etcd is not None:
        from gitorch.state.etcd.backend import EtcdBackend
        from gitorch.state.etcd.election import read_leadership

        assert isinstance(view.store.backend, EtcdBackend)
        try:
            leading = read_leadership(view.store.backend)
        except StateError:
            return None
        for member in leading.get("members", []):
            if member.get("role") == "leader" and member.get("lastError"):
                return {"message": member["lastError"]}
        return None
    if view.state_dir is None or lock_holder(view.state_dir) is None:
        return None
    data = read_daemon_file(view.state_dir)
    error = data.get("lastError") if data else None
    return error if isinstance(error, dict) else None


def _sqlite_daemon(store: StateStore, this: Any) -> dict[str, Any]:
    """Whether a daemon holds the state directory (``daemon``: its pid and start, or None):
    without one nothing reconciles or heals, while replicas and the proxy keep running."""
    if this is not None:
        return {"daemon": {"pid": os.getpid(), "startedAt": None}}
    directory = store.location.directory
    try:
        owner = lock_holder(directory) if directory is not None else None
    except StateError:
        return {}
    if owner is None:
        # Without a daemon the endpoints stay up only while a proxy (built-in or HAProxy)
        # runs: not after `gitorch apply`, whose load balancer lives as long as it does.
        return {
            "daemon": None,
            "dataPlane": directory is not None and bool(own_data_plane(directory)),
        }
    return {"daemon": {"pid": owner.pid, "startedAt": iso_time(owner.started_at)}}


def control_plane_json(store: StateStore | None, this: Any = None) -> dict[str, Any]:
    """Where the state lives and, with etcd, which daemon leads and which stand by.

    ``this``: the asking daemon's :class:`~gitorch.state.etcd.election.LeaderView` (its
    role and why it does not act); None for ``gitorch status`` without a daemon. An etcd
    that does not answer is said, not raised: status still shows what runs."""
    if store is None:
        return {"backend": "none"}
    if store.location.etcd is None:
        return {"backend": "sqlite", "location": store.describe(), **_sqlite_daemon(store, this)}
    from gitorch.state.etcd.backend import EtcdBackend
    from gitorch.state.etcd.election import read_leadership

    backend = store.backend
    assert isinstance(backend, EtcdBackend)
    doc: dict[str, Any] = {"backend": "etcd", "location": store.describe()}
    try:
        doc.update(read_leadership(backend))
        doc["leaderSince"] = iso_time(doc.get("leaderSince"))
    except StateError as exc:
        doc.update({"leader": None, "members": [], "message": exc.message})
    doc["etcd"] = backend.client.member_health()
    if this is not None:
        doc["self"] = this.name
        doc["role"] = "leader" if this.leading else ("standby" if this.reachable else "not acting")
        if not this.leading:
            doc["message"] = this.message or doc.get("message", "")
    return doc
