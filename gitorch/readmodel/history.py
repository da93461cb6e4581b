"""The history document: the applied revisions, newest first, as ``RevisionRecord.to_json()``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gitorch.state import StateStore
from gitorch.state.layout import STATE_DB
from gitorch.state.location import StateLocation


def history_json(store: StateStore, service: str | None, limit: int | None) -> list[dict[str, Any]]:
    """The ``history --format json`` list (also what the daemon's API serves)."""
    return [record.to_json() for record in store.list_revisions(service=service, limit=limit)]


def read_local(
    state: StateLocation, service: str | None, limit: int | None, *, scaling: bool = False
) -> list[dict[str, Any]] | None:
    """History from the store at ``state`` (``scaling``: its scaling decisions instead of
    its revisions); None when no store exists in its directory."""
    if state.directory is not None and not (state.directory / STATE_DB).is_file():
        return None
    with StateStore(state, readonly=True) as store:
        return (scaling_json if scaling else history_json)(store, service, limit)


#: The audit entries that are scaling decisions: the horizontal autoscaler's counts,
#: vertical mode Auto's requests, and node pools' nodes (what ``gitorch history`` lists
#: under the revisions).
SCALING_KINDS = (
    "autoscale.scaled",
    "autoscale.vertical-applied",
    "nodepool.scaled-up",
    "nodepool.draining",
    "nodepool.scaled-down",
    "nodepool.node-adopted",
    "nodepool.node-vanished",
)


def scaling_json(store: StateStore, service: str | None, limit: int | None) -> list[dict[str, Any]]:
    """Scaling decisions, newest first (``gitorch history --scaling --format json``): each
    ``{"at", "kind", "object", "from", "to", "reason", "message", "data"}``; ``object`` is
    the service, or ``NodePool/NAME``. With ``service``, only that service's decisions."""
    events = [
        event
        for kind in SCALING_KINDS
        for event in store.list_events(kind=kind, service=service, limit=limit)
    ]
    events.sort(key=lambda e: e.id, reverse=True)
    return [_scaling_entry(event.to_json()) for event in events[:limit]]


def _scaling_entry(event: dict[str, Any]) -> dict[str, Any]:
    data = event.get("data") or {}
    pool = data.get("pool")
    return {
        "at": event["at"],
        "kind": event["kind"],
        "object": f"NodePool/{pool}" if pool else event.get("service"),
        "from": data.get("from"),
        "to": data.get("to"),
        "reason": data.get("reason"),
        "message": event["message"],
        "data": data,
    }


def volume_fate(change: Mapping[str, Any]) -> str | None:
    """What a Volume leaving Git (a history change, ``action`` delete) did to its data:
    "data retained" or "data deleted", from the reclaim policy the change recorded; None
    for any other change. A Volume leaves Git and loses its data only with reclaimPolicy
    Delete: "delete Volume/x" alone would tell an auditor the data is gone when it is
    kept."""
    if change.get("kind") != "Volume" or change.get("action") != "delete":
        return None
    policy = _removed_value(change, "spec.reclaimPolicy")
    return {"Retain": "data retained", "Delete": "data deleted"}.get(str(policy))


def _removed_value(change: Mapping[str, Any], path: str) -> object:
    """The value ``path`` had before a delete, as history recorded it (None if not kept)."""
    for field in change.get("diff") or []:
        if isinstance(field, dict) and field.get("path") == path:
            return field.get("before")
    return None
