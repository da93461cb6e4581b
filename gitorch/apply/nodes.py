"""Nodes as the reconciler tracks them: when each last answered, and which are lost.

A node that stops answering is NotReady at once, but its replicas are only *unknown*:
they keep their slots (no second copy starts) until the node has been silent for the
grace period. Then the node is lost and its replicas' slots are filled elsewhere, through
the service's normal strategy, so capacity and availability rules hold. When the node
answers again, the replicas it ran from before it was lost are *stale*
(:meth:`NodeTracker.stale_replicas`): they are evicted (replaced, here: already replaced,
so simply drained and removed) and listed draining in every routing table from the first
pass that sees them, so they never take a request; a node lost while no daemon ran (its
stored last answer older than the grace) counts as lost the same way. What that means for a pass (cordons, evictions) is decided in
:mod:`gitorch.decide.nodes`; this tracker keeps the clock and the store's node records.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

from gitorch.decide.nodes import with_held_replicas
from gitorch.live.model import LiveReplica, LiveState
from gitorch.state import NodeCondition, NodeRecord, StateStore

log = logging.getLogger("gitorch.nodes")

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
        self._lost: set[str] = set()  # nodes silent past the grace (replaced elsewhere)
        #: node -> the ids of the replicas it had when it answered again after that (no
        #: replica can have been started there since it was lost: ids, not clocks, which
        #: differ between hosts)
        self._returned: dict[str, frozenset[str]] = {}

    def update(self, live: LiveState, *, record: bool = True) -> tuple[LiveState, frozenset[str]]:
        """``live`` plus the last known replicas of silent nodes (unknown), and the nodes
        silent past the grace period. ``record=False`` (a standby's plan) writes nothing."""
        now = self.clock()
        records = {r.name: r for r in self.store.list_nodes()}
        lost: set[str] = set()
        for name, node in live.nodes.items():
            known = records.get(name)
            if node.ready:
                if name in self._lost or _lost_meanwhile(known, now, self.grace):
                    self._lost.discard(name)
                    self._returned[name] = frozenset(
                        r.id for r in live.replicas() if r.node == name
                    )
                    log.warning("node %s answers again after it was lost", name)
                elif known is not None and known.condition == NodeCondition.NOT_READY:
                    log.info("node %s is Ready again", name)
                self._last_seen[name] = now
                if record and _stale(known, now):
                    self.store.update_node_condition(name, NodeCondition.READY, seen=True, at=now)
                self._seen[name] = tuple(r for r in live.replicas() if r.node == name)
                continue
            if known is None or known.condition != NodeCondition.NOT_READY:
                log.warning("node %s is NotReady: %s", name, node.message)
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
                if name not in self._lost:
                    log.warning(
                        "node %s is lost (silent for %.0fs): its replicas go elsewhere",
                        name,
                        self.grace,
                    )
                self._lost.add(name)
        silent = {
            name: replicas
            for name, replicas in self._seen.items()
            if name in live.nodes and not live.nodes[name].ready
        }
        held = {name: replicas for name, replicas in silent.items() if name not in lost}
        # A node may be lost at the first pass that finds it silent (a call to it blocked
        # the pass past the grace): its replicas were never listed unreachable, and the
        # data plane would keep waiting on its requests in flight there.
        gone = tuple(
            replace(r, state="unknown", ready=None)
            for name, replicas in sorted(silent.items())
            if name in lost
            for r in replicas
        )
        return replace(with_held_replicas(live, held), lost_replicas=gone), frozenset(lost)

    def stale_replicas(self, live: LiveState) -> dict[str, str]:
        """Replicas (id -> why) of nodes that answer again after they were lost, those it
        ran when it came back: their slots were filled elsewhere meanwhile."""
        stale: dict[str, str] = {}
        for name, ids in list(self._returned.items()):
            found = {
                r.id: f"node {name} was lost, its replicas replaced elsewhere"
                for r in live.replicas()
                if r.node == name and r.id in ids
            }
            if not found:
                del self._returned[name]  # all gone: nothing of the loss is left
            stale.update(found)
        return stale


def _lost_meanwhile(record: NodeRecord | None, now: float, grace: float) -> bool:
    """A node the store says was silent past the grace when it last looked (lost while
    no daemon ran, or before this one)."""
    return (
        record is not None
        and record.condition == NodeCondition.NOT_READY
        and record.last_seen is not None
        and now - record.last_seen >= grace
    )


def _stale(record: NodeRecord | None, now: float) -> bool:
    """Whether a Ready node's stored record needs writing: unknown, another condition or
    message, or a last-seen time older than :data:`SEEN_WRITE_EVERY`."""
    if record is None or record.condition != NodeCondition.READY:
        return True
    if record.message or record.last_seen is None:
        return True
    return now - record.last_seen >= SEEN_WRITE_EVERY
