"""The volumes document: every Volume gitorch knows, where it lives, who uses it, and its
phase; one source for ``gitorch volumes``, ``gitorch status --format json`` and the API.

Phases, per volume and node:

``Pending``   in Git, not made yet (a ReadWriteOnce volume without ``spec.node`` waits for
              its first user to be placed; then it is bound and made before that user starts)
``Bound``     made, and on its node
``Missing``   made, then removed outside gitorch: its users are not started on an empty one
              until ``gitorch volumes --reset NAME``
``Released``  left Git with reclaimPolicy Retain: kept with its data for a Volume of the
              same name
``Deleting``  left Git with reclaimPolicy Delete: removed once its last user has stopped
``Unknown``   its node does not answer
``Unrecorded`` on a node, labelled for this cluster, but in no record (left by a reset)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gitorch.errors import NothingToShow, NotNow
from gitorch.live.model import LiveState
from gitorch.manifests.quantities import format_memory
from gitorch.state.records import VolumeRecord, iso_time

#: Why each size is only recorded (neither driver's default backend has one to enforce).
SIZE_NOTE = "recorded, not enforced"


def _backend(spec: Mapping[str, Any]) -> str:
    if spec.get("hostPath"):
        return f"hostPath {spec['hostPath']}"
    if spec.get("driver") or spec.get("driverOpts"):
        opts = ",".join(f"{k}={v}" for k, v in sorted((spec.get("driverOpts") or {}).items()))
        return f"driver {spec.get('driver', 'local')}" + (f" ({opts})" if opts else "")
    return "local"


def _phase(
    live: LiveState, record: VolumeRecord | None, in_git: bool, node: str | None, name: str
) -> str:
    if record is not None and not in_git:
        policy = (record.spec.get("spec") or {}).get("reclaimPolicy", "Retain")
        return "Deleting" if policy == "Delete" else "Released"
    if node is None:
        return "Pending"
    if node not in live.nodes or not live.nodes[node].ready:
        return "Unknown"
    present = name in live.volumes_on[node]
    if record is None:
        return "Unrecorded" if present else "Pending"
    if record.created:
        return "Bound" if present else "Missing"
    return "Bound" if present else "Pending"


def volumes_json(live: LiveState) -> list[dict[str, Any]]:
    """One entry per volume and node (a Pending volume not bound yet has node None)."""
    applied = {name: a.canonical for (kind, name), a in live.inventory.items() if kind == "Volume"}
    rows: list[tuple[str, str | None, VolumeRecord | None]] = []
    seen: set[tuple[str, str]] = set()
    for name, records in live.volume_records.items():
        for kept in records:
            rows.append((name, kept.node, kept))
            seen.add((name, kept.node))
    for name, canonical in applied.items():
        if name not in live.volume_records:
            node = (canonical.get("spec") or {}).get("node")
            rows.append((name, node, None))
            if node is not None:
                seen.add((name, node))
    for node, volumes in live.volumes_on.items():
        for name in volumes:
            if (name, node) not in seen:
                rows.append((name, node, None))
    out: list[dict[str, Any]] = []
    for name, node, record in sorted(rows, key=lambda r: (r[0], r[1] or "")):
        in_git = name in applied
        canonical = applied.get(name) or (record.spec if record is not None else {})
        spec = canonical.get("spec") or {}
        info = live.volumes_on.get(node or "", {}).get(name)
        size = spec.get("size")
        if size is None and info is not None and info.size_bytes is not None:
            size = format_memory(info.size_bytes)
        users = live.volume_users(name, node) if node is not None else []
        out.append(
            {
                "name": name,
                "node": node,
                "phase": _phase(live, record, in_git, node, name),
                "accessMode": spec.get("accessMode", "ReadWriteOnce"),
                "reclaimPolicy": spec.get("reclaimPolicy", "Retain"),
                "size": size,
                "sizeEnforced": False,
                "backend": _backend(spec),
                "handle": info.handle if info is not None else None,
                "users": sorted(
                    {
                        f"{r.replica}{'' if name in r.writes else ' (ro)'}"
                        for r in users
                        if r.state != "exited"
                    }
                ),
                "inGit": in_git,
                "boundAt": iso_time(record.bound_at) if record is not None else None,
                "createdAt": iso_time(record.created_at) if record is not None else None,
                "releasedAt": iso_time(record.released_at) if record is not None else None,
                "missingAt": iso_time(record.missing_at) if record is not None else None,
            }
        )
    return out


def check_resettable(rows: list[dict[str, Any]], name: str) -> None:
    """Raise unless ``name`` is a volume (:class:`NothingToShow`) that went missing on a
    node (:class:`NotNow`): only a volume removed outside gitorch is reset, as its data
    is gone already. ``rows``: :func:`volumes_json`."""
    mine = [r for r in rows if r["name"] == name]
    if not mine:
        raise NothingToShow(f"no volume named {name!r}")
    if not any(r["phase"] == "Missing" for r in mine):
        phases = ", ".join(f"{r['phase']} on {r['node'] or '-'}" for r in mine)
        raise NotNow(
            f"volume {name} is not missing ({phases}): only a volume removed outside "
            "gitorch is reset (its data is gone already)"
        )


def reset_message(name: str) -> str:
    """What a reset says, to its caller and in the audit log."""
    return f"volume {name} reset: the next pass makes it anew, empty"
