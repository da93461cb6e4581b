"""NoExecute taints: which running replicas must leave their node.

A NoExecute taint keeps new replicas off a node (a filter in :mod:`.shape`) and also
evicts running ones whose service does not tolerate it. The reconciler stops what
:func:`evictions` lists; the scheduler then places replacements elsewhere.
(``tolerationSeconds`` is not honoured yet: a matching toleration tolerates for ever.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from gitorch.manifests.model import Placement
from gitorch.scheduler.model import NodeView, Running
from gitorch.scheduler.tolerations import taint_text, tolerates

_NO_TOLERATIONS = Placement()


def evictions(
    nodes: Sequence[NodeView],
    running: Iterable[Running],
    placements_by_service: Mapping[str, Placement],
) -> list[tuple[str, str, str, str]]:
    """``(service, replica, node, reason)`` for every running replica on a node with a
    NoExecute taint its service does not tolerate, sorted by node, service, replica. The
    reason names the first such taint (``taint dedicated=db:NoExecute``). A service
    missing from ``placements_by_service`` tolerates nothing."""
    taints = {
        n.name: [(k, v, e) for k, v, e in n.taints if e == "NoExecute"] for n in nodes if n.taints
    }
    out: list[tuple[str, str, str, str]] = []
    for replica in running:
        for key, value, effect in taints.get(replica.node, ()):
            placement = placements_by_service.get(replica.service, _NO_TOLERATIONS)
            if not tolerates(placement.tolerations, key, value, effect):
                out.append(
                    (replica.service, replica.replica, replica.node, taint_text(key, value, effect))
                )
                break
    return sorted(out, key=lambda e: (e[2], e[0], e[1]))
