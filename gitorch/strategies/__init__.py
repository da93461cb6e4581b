"""gitorch.strategies: rollout strategies as pure step functions (see ``machine.py``)."""

from gitorch.strategies.machine import (
    Action,
    Create,
    Decision,
    Phase,
    ReplicaView,
    RolloutInput,
    Stop,
)
from gitorch.strategies.recreate import recreate_step
from gitorch.strategies.rolling import plan_batches, resolve_limits, rolling_step

__all__ = [
    "Action",
    "Create",
    "Decision",
    "Phase",
    "ReplicaView",
    "RolloutInput",
    "Stop",
    "plan_batches",
    "recreate_step",
    "resolve_limits",
    "rolling_step",
]
