"""Desired vs live state -> Plan (pure), and the plan's renderers.

:func:`compute_plan` is the one entry point; :mod:`gitorch.diff.render` turns a Plan into
text (terraform-plan style), markdown (pull-request comments) or JSON.
"""

from gitorch.diff.compute import compute_plan, dependency_waves
from gitorch.diff.fields import FieldChange, diff_objects
from gitorch.diff.plan import (
    DriftItem,
    ObjectChange,
    PlacementItem,
    Plan,
    Unschedulable,
    check_expected,
)

__all__ = [
    "DriftItem",
    "FieldChange",
    "ObjectChange",
    "PlacementItem",
    "Plan",
    "Unschedulable",
    "check_expected",
    "compute_plan",
    "dependency_waves",
    "diff_objects",
]
