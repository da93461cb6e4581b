"""Placement of replicas on nodes (see :mod:`gitorch.scheduler.core`)."""

from gitorch.scheduler.core import (
    LEAST_ALLOCATED,
    MOST_ALLOCATED,
    QOS_RANK,
    Decision,
    NodeView,
    Placer,
    Request,
    Running,
    evictions,
    reason_kind,
    schedule,
)

__all__ = [
    "LEAST_ALLOCATED",
    "MOST_ALLOCATED",
    "QOS_RANK",
    "Decision",
    "NodeView",
    "Placer",
    "Request",
    "Running",
    "evictions",
    "reason_kind",
    "schedule",
]
