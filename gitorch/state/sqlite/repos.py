"""Every repository of the SQLite backend, by concern (see :mod:`gitorch.state.repositories`)."""

from gitorch.state.sqlite.analysis import Analysis
from gitorch.state.sqlite.audit import Audit
from gitorch.state.sqlite.autoscalers import Autoscalers
from gitorch.state.sqlite.backoff import Backoff
from gitorch.state.sqlite.inventory import Inventory
from gitorch.state.sqlite.node_pools import NodePools
from gitorch.state.sqlite.nodes import Nodes
from gitorch.state.sqlite.ports import Ports
from gitorch.state.sqlite.revisions import Revisions
from gitorch.state.sqlite.rollouts import Rollouts
from gitorch.state.sqlite.traffic import Traffic
from gitorch.state.sqlite.volumes import Volumes

__all__ = [
    "Analysis",
    "Audit",
    "Autoscalers",
    "Backoff",
    "Inventory",
    "NodePools",
    "Nodes",
    "Ports",
    "Revisions",
    "Rollouts",
    "Traffic",
    "Volumes",
]
