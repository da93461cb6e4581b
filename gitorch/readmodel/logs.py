"""What a service's replicas wrote, as ``gitorch logs --format json``, the API
(``GET /api/v1/services/NAME/logs``) and the dashboard show it: the live replicas' output
read from their runtimes, and what the drivers kept of removed ones."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from gitorch.errors import GitorchError, NothingToShow, RuntimeDriverError
from gitorch.live.model import LiveNode, LiveReplica, LiveState
from gitorch.runtime.base import RetainedLog, Runtime


def live_replicas(live: LiveState, service: str, only: str | None) -> list[LiveReplica]:
    """The service's replicas that exist now (optionally the one ``only`` names: its
    replica name, its name or its id), by name."""
    found = live.services.get(service)
    replicas = list(found.replicas) if found is not None else []
    if only is not None:
        replicas = [r for r in replicas if only in (r.replica, r.name, r.id)]
    return sorted(replicas, key=lambda r: (r.replica, r.name))


def nothing_live(live: LiveState, service: str, only: str | None) -> NothingToShow:
    """Why there is no live output to show, with the nodes that did not answer."""
    what = f"{only} of {service}" if only else f"of {service}"
    unknown: Iterable[LiveNode] = [n for n in live.nodes.values() if not n.ready]
    detail = tuple(f"node {n.name} did not answer: {n.message}" for n in unknown)
    if service not in live.services:
        known = ", ".join(sorted(live.services)) or "none"
        return NothingToShow(f"no service {service} (services: {known})", detail=detail)
    return NothingToShow(
        f"no replica {what} exists now (gitorch logs {service} --previous shows "
        "the last dead ones)",
        detail=detail,
    )


def live_logs(
    live: LiveState,
    runtimes: Mapping[str, Runtime],
    service: str,
    only: str | None,
    tail: int,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Each live replica's last ``tail`` lines (``{"replica", "name", "node", "state",
    "output"}``), and a warning for each replica whose runtime could not give them.
    Raises :class:`NothingToShow` when no replica exists now."""
    replicas = live_replicas(live, service, only)
    if not replicas:
        raise nothing_live(live, service, only)
    documents, warnings = [], []
    for replica in replicas:
        runtime = runtimes.get(replica.node)
        try:
            text = runtime.logs(replica.id, tail) if runtime is not None else ""
        except RuntimeDriverError as exc:
            warnings.append(f"{replica.replica}: {exc.message}")
            continue
        documents.append(
            {
                "replica": replica.replica,
                "name": replica.name,
                "node": replica.node,
                "state": replica.state,
                "output": text,
            }
        )
    return documents, warnings


def retained(
    runtimes: Iterable[Runtime], cluster: str, service: str, only: str | None = None
) -> list[RetainedLog]:
    """Every answering node's kept output of ``service`` (optionally of the replica
    ``only`` names), newest removal first."""
    kept: list[RetainedLog] = []
    for runtime in runtimes:
        try:
            kept.extend(runtime.retained_logs(cluster, service))
        except GitorchError:
            continue  # a node that does not answer keeps its logs for later
    if only is not None:
        kept = [k for k in kept if only in (k.replica, k.name, k.instance_id)]
    return sorted(kept, key=lambda k: k.removed_at, reverse=True)


def previous_logs(
    runtimes: Iterable[Runtime], cluster: str, service: str, only: str | None, tail: int
) -> list[dict[str, Any]]:
    """:func:`retained_json` of every kept dead replica of ``service`` (or of the one
    ``only`` names), newest first. Raises :class:`NothingToShow` when none is kept."""
    kept = retained(runtimes, cluster, service, only)
    if not kept:
        what = f"replica {only} of {service}" if only else service
        raise NothingToShow(f"no removed replica of {what} has left output here")
    return [retained_json(k, tail) for k in kept]


def retained_json(kept: RetainedLog, tail: int) -> dict[str, Any]:
    """One removed replica: where it ran, how and when it ended, its last ``tail`` lines."""
    lines = kept.output.splitlines()
    last = lines[-tail:] if tail > 0 else []
    return {
        "replica": kept.replica,
        "name": kept.name,
        "service": kept.service,
        "node": kept.node,
        "id": kept.instance_id,
        "revision": kept.revision,
        "exitCode": kept.exit_code,
        "exitReason": kept.exit_reason,
        "startedAt": _iso(kept.started_at),
        "finishedAt": _iso(kept.finished_at),
        "removedAt": _iso(kept.removed_at),
        "truncated": kept.truncated,
        "output": "".join(line + "\n" for line in last),
    }


def _iso(stamp: float | None) -> str | None:
    return None if stamp is None else datetime.fromtimestamp(stamp, UTC).isoformat()
