"""LogFollower's order and lifecycle (what `gitorch logs --follow` shows, locally and
through the API's stream), with a stub runtime: which events come in which order, which
tail each replica is read with, and that closing it ends every replica's reader."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

import pytest

from gitorch.errors import NothingToShow
from gitorch.live.model import LiveNode, LiveReplica, LiveService, LiveState
from gitorch.readmodel.logs import ALL_LINES, LogFollower


class StubRuntime:
    """``follow_logs`` gives one line per replica at once, then waits for its stop, as a
    quiet live replica does; it records each call's tail and each reader's end."""

    def __init__(self) -> None:
        self.tails: dict[str, int] = {}
        self.ended: set[str] = set()
        self._lock = threading.Lock()

    def follow_logs(
        self, instance_id: str, tail: int = 100, stop: threading.Event | None = None
    ) -> Iterator[str]:
        with self._lock:
            self.tails[instance_id] = tail
        assert stop is not None
        try:
            yield f"{instance_id} says hello"
            stop.wait()
        finally:
            with self._lock:
                self.ended.add(instance_id)


def _replica(slot: int, state: str = "running") -> LiveReplica:
    return LiveReplica(
        id=f"id-{slot}",
        name=f"c-web-{slot}",
        service="web",
        replica=f"web-{slot}",
        node="vm",
        revision="abc",
        template_digest="d",
        state=state,
    )


def _live(*replicas: LiveReplica) -> LiveState:
    return LiveState(
        cluster="c",
        observed_at=0.0,
        nodes={"vm": LiveNode("vm", "process", True, "127.0.0.1", 2000, 1 << 30)},
        services={"web": LiveService("web", None, tuple(replicas))},
    )


class Looks:
    """The live states a follower finds, one per look (the last one repeated)."""

    def __init__(self, runtime: StubRuntime, *states: LiveState) -> None:
        self.runtime, self.states = runtime, list(states)

    def __call__(self) -> tuple[LiveState, Mapping[str, Any]]:
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        return state, {"vm": self.runtime}


def _take(events: Iterator[dict[str, str] | None], count: int) -> list[dict[str, str]]:
    taken: list[dict[str, str]] = []
    while len(taken) < count:
        event = next(events)
        if event is not None:
            taken.append(event)
    return taken


def test_every_follow_event_comes_before_any_line_and_later_replicas_show_all() -> None:
    runtime = StubRuntime()
    first = _live(_replica(1), _replica(2), _replica(3, state="created"))
    later = _live(_replica(1), _replica(2), _replica(3))
    follower = LogFollower(Looks(runtime, first, later), "web", None, 5, discover_every=0.05)
    try:
        events = follower.events(quiet=0.2)
        # A reader prefixes lines once it follows two replicas: it learns of both first.
        assert _take(events, 2) == [
            {"follow": "web-1", "revision": "abc"},
            {"follow": "web-2", "revision": "abc"},
        ]
        lines = _take(events, 2)
        assert sorted(e["line"] for e in lines) == ["id-1 says hello", "id-2 says hello"]
        assert {e["replica"] for e in lines} == {"web-1", "web-2"}
        # web-3 runs at the next look: followed from its first line.
        assert _take(events, 2) == [
            {"follow": "web-3", "revision": "abc"},
            {"replica": "web-3", "line": "id-3 says hello", "revision": "abc"},
        ]
        assert runtime.tails == {"id-1": 5, "id-2": 5, "id-3": ALL_LINES}
        assert follower.followed == ["web-1", "web-2", "web-3"]
        assert next(events) is None  # quiet: a keep-alive
    finally:
        follower.close()
    readers = [t for t in threading.enumerate() if t.name.startswith("gitorch-logs-web-")]
    for reader in readers:
        reader.join(timeout=2.0)
    assert runtime.ended == {"id-1", "id-2", "id-3"}


def test_a_slots_stable_and_new_replica_are_told_apart_by_their_commit() -> None:
    """During a canary a slot's name is shared by its stable and its new replica: each
    event names the commit its replica runs."""
    runtime = StubRuntime()
    canary = replace(_replica(1), id="id-1-new", name="c-web-1-new", revision="def")
    follower = LogFollower(Looks(runtime, _live(_replica(1), canary)), "web", "web-1", 5)
    try:
        events = follower.events(quiet=0.2)
        assert _take(events, 2) == [
            {"follow": "web-1", "revision": "abc"},
            {"follow": "web-1", "revision": "def"},
        ]
        lines = _take(events, 2)
        assert sorted((e["revision"], e["line"]) for e in lines) == [
            ("abc", "id-1 says hello"),
            ("def", "id-1-new says hello"),
        ]
    finally:
        follower.close()


def test_nothing_running_is_said_at_once() -> None:
    runtime = StubRuntime()
    with pytest.raises(NothingToShow, match="no replica of web exists now"):
        LogFollower(Looks(runtime, _live()), "web", None, 5)
    with pytest.raises(NothingToShow, match="no service api"):
        LogFollower(Looks(runtime, _live(_replica(1))), "api", None, 5)
