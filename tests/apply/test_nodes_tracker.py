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
from gitorch.live.model import LiveNode, LiveState
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
