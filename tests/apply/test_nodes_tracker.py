"""NodeTracker against a real state store: conditions are written when they change (and a
Ready node's last-seen time every SEEN_WRITE_EVERY seconds), never on every pass, while
the grace period still counts from the last answer the daemon saw."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from gitorch.apply.nodes import SEEN_WRITE_EVERY, NodeTracker
from gitorch.live import NodeTarget
from gitorch.live.model import LiveNode, LiveReplica, LiveService, LiveState
from gitorch.manifests.model import DesiredState
from gitorch.state import NodeCondition, StateStore

GRACE = 30.0


class CountingStore:
    """The real store, counting condition writes."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.writes: list[tuple[str, NodeCondition]] = []

    def update_node_condition(self, name: str, condition: NodeCondition, **kw: Any) -> Any:
        self.writes.append((name, condition))
        return self.store.update_node_condition(name, condition, **kw)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.store, attr)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CountingStore]:
    opened = StateStore(tmp_path / "state")
    opened.register_node("n1", "process")
    try:
        yield CountingStore(opened)
    finally:
        opened.close()


def live(ready: bool, message: str = "") -> LiveState:
    node = LiveNode("n1", "process", ready, "127.0.0.1", 2000, 2**30, message=message)
    return LiveState("c", 0.0, MappingProxyType({"n1": node}), MappingProxyType({}))


DESIRED = DesiredState(
    "r", "/", MappingProxyType({}), MappingProxyType({}), MappingProxyType({}), "d"
)
TARGETS = [NodeTarget("n1", "process")]


def test_ready_node_is_written_on_change_and_then_every_interval(store: CountingStore) -> None:
    now = [1000.0]
    tracker = NodeTracker(store, grace=GRACE, clock=lambda: now[0])  # type: ignore[arg-type]
    for _ in range(20):  # 20 passes within the interval: one write
        tracker.update(live(True))
        now[0] += SEEN_WRITE_EVERY / 40
    assert store.writes == [("n1", NodeCondition.READY)]
    now[0] = 1000.0 + SEEN_WRITE_EVERY
    tracker.update(live(True))
    assert len(store.writes) == 2
    record = store.get_node("n1")
    assert record is not None and record.last_seen == pytest.approx(now[0])


def test_not_ready_written_once_and_grace_counts_from_the_last_answer(
    store: CountingStore,
) -> None:
    now = [1000.0]
    tracker = NodeTracker(store, grace=GRACE, clock=lambda: now[0])  # type: ignore[arg-type]
    tracker.update(live(True))  # written at 1000
    now[0] = 1000.0 + SEEN_WRITE_EVERY - 1  # answered again: not written (in memory only)
    tracker.update(live(True))
    assert len(store.writes) == 1
    # Silent from now on: the grace counts from the last answer (1009), not the write.
    now[0] = 1000.0 + GRACE + 1
    _, lost = tracker.update(live(False, "engine down"))
    assert lost == frozenset()
    now[0] = 1000.0 + SEEN_WRITE_EVERY - 1 + GRACE
    _, lost = tracker.update(live(False, "engine down"))
    assert lost == frozenset({"n1"})
    assert store.writes.count(("n1", NodeCondition.NOT_READY)) == 1  # same message: once
    tracker.update(live(False, "engine gone"))
    assert store.writes.count(("n1", NodeCondition.NOT_READY)) == 2  # a new message
    record = store.get_node("n1")
    assert record is not None and record.message == "engine gone"


def test_a_restarted_daemon_uses_the_stored_time(store: CountingStore) -> None:
    now = [1000.0]
    first = NodeTracker(store, grace=GRACE, clock=lambda: now[0])  # type: ignore[arg-type]
    first.update(live(True))
    restarted = NodeTracker(store, grace=GRACE, clock=lambda: now[0])  # type: ignore[arg-type]
    now[0] = 1000.0 + GRACE - 1
    assert restarted.update(live(False))[1] == frozenset()
    now[0] = 1000.0 + GRACE
    assert restarted.update(live(False))[1] == frozenset({"n1"})


def _replica(rid: str, started_at: float) -> LiveReplica:
    return LiveReplica(
        id=rid,
        name=f"c-{rid}",
        service="web",
        replica=f"web-{rid}",
        node="n1",
        revision="r",
        template_digest="t",
        state="running",
        started_at=started_at,
        address=f"10.0.0.2:{40000 + len(rid)}",
    )


def live_with(ready: bool, *replicas: LiveReplica) -> LiveState:
    node = LiveNode("n1", "docker", ready, "10.0.0.2", 2000, 2**30)
    services = {"web": LiveService("web", None, replicas)} if replicas else {}
    return LiveState("c", 0.0, MappingProxyType({"n1": node}), MappingProxyType(services))


def test_a_node_lost_at_once_keeps_its_replicas_listed_until_it_answers(
    store: CountingStore,
) -> None:
    """A pass blocked past the grace by a call to the silent node finds it lost at once:
    its replicas leave the services (their slots go elsewhere) but stay in
    ``lost_replicas``, which every routing table lists unreachable."""
    now = [1000.0]
    tracker = NodeTracker(store, grace=GRACE, clock=lambda: now[0])  # type: ignore[arg-type]
    old = _replica("old", 900.0)
    tracker.update(live_with(True, old))
    now[0] += GRACE + 5  # the first pass that finds it silent
    seen, lost = tracker.update(live_with(False))
    assert lost == frozenset({"n1"})
    assert not seen.replicas()
    assert [(r.id, r.state) for r in seen.lost_replicas] == [("old", "unknown")]
    now[0] += 1
    assert [r.id for r in tracker.update(live_with(False))[0].lost_replicas] == ["old"]
    # It answers again: nothing is lost any more; what it ran is stale.
    now[0] += 1
    back, lost = tracker.update(live_with(True, old))
    assert lost == frozenset() and back.lost_replicas == ()
    assert set(tracker.stale_replicas(back)) == {"old"}


def test_stale_replicas_are_those_the_node_ran_when_it_came_back_whatever_its_clock(
    store: CountingStore,
) -> None:
    """A replica started on the node after it came back is not stale, even when the
    node's clock is behind the daemon's (its start time earlier than the return)."""
    now = [1000.0]
    tracker = NodeTracker(store, grace=GRACE, clock=lambda: now[0])  # type: ignore[arg-type]
    old = _replica("old", 900.0)
    tracker.update(live_with(True, old))
    now[0] += GRACE + 5
    tracker.update(live_with(False))
    now[0] += 10
    back, _ = tracker.update(live_with(True, old))
    assert set(tracker.stale_replicas(back)) == {"old"}
    new = _replica("new", now[0] - 60)  # started after the return; its host's clock lags
    now[0] += 1
    later, _ = tracker.update(live_with(True, old, new))
    assert set(tracker.stale_replicas(later)) == {"old"}
    now[0] += 1
    gone, _ = tracker.update(live_with(True, new))  # the stale copy removed
    assert tracker.stale_replicas(gone) == {}
