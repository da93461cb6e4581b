"""The history document: the applied revisions, newest first, as ``RevisionRecord.to_json()``."""

from __future__ import annotations

from typing import Any

from gitorch.state import StateStore
from gitorch.state.layout import STATE_DB
from gitorch.state.location import StateLocation


def history_json(store: StateStore, service: str | None, limit: int | None) -> list[dict[str, Any]]:
    """The ``history --format json`` list (also what the daemon's API serves)."""
    return [record.to_json() for record in store.list_revisions(service=service, limit=limit)]


def read_local(
    state: StateLocation, service: str | None, limit: int | None
) -> list[dict[str, Any]] | None:
    """History from the store at ``state``; None when no store exists in its directory."""
    if state.directory is not None and not (state.directory / STATE_DB).is_file():
        return None
    with StateStore(state, readonly=True) as store:
        return history_json(store, service, limit)
