"""What is left of removed replicas, as ``gitorch logs --previous --format json`` and the
dashboard show it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gitorch.runtime.base import RetainedLog


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
