"""Live state: what runs now, observed from every node's runtime, plus what the store knows.

:func:`~gitorch.live.observe.observe` returns an immutable :class:`~gitorch.live.model.LiveState`
that diff and planning read; runtimes are the ground truth of which replicas exist, the
store adds what a runtime cannot know (the spec last applied, rollout phase).
"""

from gitorch.live.inventory import NodeTarget, cluster_name, default_node, node_targets
from gitorch.live.model import LiveNode, LiveReplica, LiveService, LiveState
from gitorch.live.observe import observe

__all__ = [
    "LiveNode",
    "LiveReplica",
    "LiveService",
    "LiveState",
    "NodeTarget",
    "cluster_name",
    "default_node",
    "node_targets",
    "observe",
]
