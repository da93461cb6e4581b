"""Deciding a reconcile pass: pure functions from what is wanted and what is observed to
the actions that move the cluster one step closer.

``gitorch plan`` and the reconciler call the same :func:`decide_pass`; the plan renders
its actions, the executor (:mod:`gitorch.apply`) carries them out. Nothing here performs
I/O or reads a clock.
"""

from gitorch.decide.actions import (
    Action,
    ForgetService,
    RollBack,
    SetTraffic,
    StartReplica,
    StopReplica,
    Wait,
    action_keys,
)
from gitorch.decide.cluster import PassDecision, PassInput, PruneDecision, decide_pass
from gitorch.decide.nodes import NodeVerdicts, node_views, verdicts
from gitorch.decide.service import (
    Applied,
    Event,
    ServiceDecision,
    ServiceProgress,
    TrafficIntent,
    version_key,
)

__all__ = [
    "Action",
    "Applied",
    "Event",
    "ForgetService",
    "NodeVerdicts",
    "PassDecision",
    "PassInput",
    "PruneDecision",
    "RollBack",
    "ServiceDecision",
    "ServiceProgress",
    "SetTraffic",
    "StartReplica",
    "StopReplica",
    "TrafficIntent",
    "Wait",
    "action_keys",
    "decide_pass",
    "node_views",
    "verdicts",
    "version_key",
]
