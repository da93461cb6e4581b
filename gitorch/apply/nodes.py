"""Nodes as the reconciler tracks them: when each last answered, and which are lost.

A node that stops answering is NotReady at once, but its replicas are only *unknown*:
they keep their slots (no second copy starts) until the node has been silent for the
grace period. Then the node is lost and its replicas' slots are filled elsewhere, through
the service's normal strategy, so capacity and availability rules hold. When the node
answers again, its stale replicas reappear as extra copies of filled slots and the
strategy removes them. What that means for a pass (cordons, evictions) is decided in
:mod:`gitorch.decide.nodes`; this tracker keeps the clock and the store's node records.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gitorch.decide.nodes import with_held_replicas
from gitorch.live.model import LiveReplica, LiveState
from gitorch.state import NodeCondition, NodeRecord, StateStore

#: Seconds between two writes of a Ready node's last-seen time. The tracker keeps the
#: exact time in memory; the store's copy (for `gitorch nodes`, and for a restarted
#: daemon) lags at most this much, so a restart can take at most this off a node's grace.
#: Writing it on every pass cost one SQLite write per node per pass.
SEEN_WRITE_EVERY = 10.0


class NodeTracker:
    """Remembers what each node ran, and which nodes are lost."""

    def __init__(
        self, store: StateStore, *, grace: float = 30.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.grace = grace
        self.clock = clock
        self._seen: dict[str, tuple[LiveReplica, ...]] = {}  # node -> its replicas, last answer
        self._last_seen: dict[str, float] = {}  # node -> when it last answered (this daemon)

    def update(self, live: LiveState, *, record: bool = True) -> tuple[LiveState, frozenset[str]]:
        """``live`` plus the last known replicas of silent nodes (unknown), and the nodes
        silent past the grace period. ``record=False`` (a standby's plan) writes nothing."""
        now = self.clock()
        records = {r.name: r for r in self.store.list_nodes()}
        lost: set[str] = set()
        for name, node in live.nodes.items():
            known = records.get(name)
            if node.ready:
                self._last_seen[name] = now
                if record and _stale(known, now):
                    self.store.update_node_condition(name, NodeCondition.READY, seen=True, at=now)
                self._seen[name] = tuple(r for r in live.replicas() if r.node == name)
                continue
            if record and (
                known is None
                or known.condition != NodeCondition.NOT_READY
                or known.message != node.message
            ):
                self.store.update_node_condition(
                    name, NodeCondition.NOT_READY, message=node.message, seen=False
                )
            stored = known.last_seen if known is not None else None
            heard = [t for t in (self._last_seen.get(name), stored) if t is not None]
            if not heard or now - max(heard) >= self.grace:
                lost.add(name)
        held = {
            name: replicas
            for name, replicas in self._seen.items()
            if name in live.nodes and not live.nodes[name].ready and name not in lost
        }
        return with_held_replicas(live, held), frozenset(lost)


def _stale(record: NodeRecord | None, now: float) -> bool:
    """Whether a Ready node's stored record needs writing: unknown, another condition or
    message, or a last-seen time older than :data:`SEEN_WRITE_EVERY`."""
    if record is None or record.condition != NodeCondition.READY:
        return True
    if record.message or record.last_seen is None:
        return True
    return now - record.last_seen >= SEEN_WRITE_EVERY
