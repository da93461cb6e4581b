"""The Plan: what applying a revision would change, and its stable digest."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from gitorch.decide.actions import VOLUME_CHANGING, WORLD_CHANGING, Action
from gitorch.diff.fields import FieldChange
from gitorch.errors import PlanChanged
from gitorch.strategies.preview import RolloutPreview

ACTIONS = ("create", "update", "delete")


@dataclass(frozen=True)
class ObjectChange:
    """One object that differs between Git and what was applied."""

    kind: str
    name: str
    action: str  # create | update | delete
    diff: tuple[FieldChange, ...] = ()
    rollout: RolloutPreview | None = None
    replaces_replicas: bool = False  # the replica template changed: new replicas roll out
    applied_revision: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "action": self.action,
            "diff": [change.to_json() for change in self.diff],
            "replacesReplicas": self.replaces_replicas,
            "appliedRevision": self.applied_revision,
        }
        if self.rollout is not None:
            out["rollout"] = self.rollout.to_json()
        return out


@dataclass(frozen=True)
class DriftItem:
    """Live state that differs from the last applied revision (not from a Git change)."""

    service: str
    policy: str  # correct | warn | ignore
    message: str
    replicas: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "policy": self.policy,
            "message": self.message,
            "replicas": list(self.replicas),
        }


@dataclass(frozen=True)
class PlacementItem:
    service: str
    replica: str
    node: str
    victims: tuple[str, ...] = ()  # "service/replica on node" preempted to make room

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"service": self.service, "replica": self.replica, "node": self.node}
        if self.victims:
            out["preempts"] = list(self.victims)
        return out


@dataclass(frozen=True)
class Unschedulable:
    service: str
    replica: str
    reasons: tuple[str, ...]
    counts: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "replica": self.replica,
            "reasons": list(self.reasons),
            "counts": dict(sorted(self.counts.items())),
        }


@dataclass(frozen=True)
class Plan:
    """Everything ``gitorch plan`` shows; ``apply`` executes the same object."""

    revision: str
    base_revision: str | None  # what is applied now
    path: str
    changes: tuple[ObjectChange, ...]
    drift: tuple[DriftItem, ...]
    placements: tuple[PlacementItem, ...]
    unschedulable: tuple[Unschedulable, ...]
    order: tuple[tuple[str, ...], ...]  # services in dependsOn waves
    unchanged: tuple[str, ...] = ()  # "Kind/name" of objects with no change
    warnings: tuple[str, ...] = ()
    # The next pass, exactly as the reconciler will execute it (empty when the plan was
    # computed without a decision).
    actions: tuple[Action, ...] = ()

    @property
    def summary(self) -> dict[str, int]:
        counts = {action: 0 for action in ACTIONS}
        for change in self.changes:
            counts[change.action] += 1
        counts["unchanged"] = len(self.unchanged)
        counts["drift"] = len(self.drift)
        counts["unschedulable"] = len(self.unschedulable)
        counts["actions"] = sum(1 for a in self.actions if isinstance(a, WORLD_CHANGING))
        counts["volumeActions"] = sum(1 for a in self.actions if isinstance(a, VOLUME_CHANGING))
        return counts

    @property
    def has_changes(self) -> bool:
        """What ``plan``'s exit code 2 means: applying would change something (a field, a
        drift to correct, or a replica the next pass starts or stops)."""
        return (
            bool(self.changes)
            or any(d.policy == "correct" for d in self.drift)
            or any(isinstance(a, WORLD_CHANGING + VOLUME_CHANGING) for a in self.actions)
        )

    def body(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "baseRevision": self.base_revision,
            "path": self.path,
            "changes": [change.to_json() for change in self.changes],
            "drift": [item.to_json() for item in self.drift],
            "placements": [p.to_json() for p in self.placements],
            "unschedulable": [u.to_json() for u in self.unschedulable],
            "order": [list(wave) for wave in self.order],
            "unchanged": list(self.unchanged),
            "warnings": list(self.warnings),
            "actions": [action.to_json() for action in self.actions],
            "summary": self.summary,
        }

    @property
    def digest(self) -> str:
        """sha256 of the plan's content: equal plans, equal digests (no timestamps inside)."""
        text = json.dumps(self.body(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {**self.body(), "digest": self.digest}


def check_expected(plan: Plan, expected: str) -> None:
    """``apply --expect-plan DIGEST``: refuse if the plan is not the one reviewers saw.

    A prefix of at least 12 hex digits is accepted, like a short commit sha.
    """
    expected = expected.strip().lower()
    if len(expected) < 12 or not plan.digest.startswith(expected):
        raise PlanChanged(
            f"the plan changed since it was reviewed: expected {expected[:12]}, now {plan.digest[:12]}",
            detail=("run `gitorch plan` again and review the new plan",),
        )
