"""Placement of replicas on nodes (see :mod:`gitorch.scheduler.core`)."""

from gitorch.scheduler.core import (
    LEAST_ALLOCATED,
    MOST_ALLOCATED,
    Decision,
    NodeView,
    Request,
    Running,
    schedule,
)

__all__ = [
    "LEAST_ALLOCATED",
    "MOST_ALLOCATED",
    "Decision",
    "NodeView",
    "Request",
    "Running",
    "schedule",
]
