"""Concurrent readers and writers, threads and processes, on one state directory."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gitorch.errors import StateError
from gitorch.state import PortUnavailable, StateStore

Spawn = Callable[..., subprocess.Popen[str]]


def test_readers_see_the_old_state_during_a_long_write(
    store: StateStore, location: str, spawn: Spawn
) -> None:
    for i in range(5):
        store.record_revision(f"{i:040x}", services=["web"])
    written = threading.Event()
    readers_done = threading.Event()

    def long_write() -> None:
        with store.transaction():
            # 60 of each: within one etcd transaction's limit (128 operations).
            for i in range(5, 65):
                store.record_revision(f"{i:040x}", services=["web"])
                store.append_event("revision.started", f"applying {i}")
            written.set()
            # Hold the uncommitted write while the readers look (bounded, never hangs).
            readers_done.wait(timeout=10)

    seen: list[int] = []
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for _ in range(20):
                seen.append(len(store.list_revisions(limit=None)))
                seen.append(len(store.list_events(limit=None)))
        except BaseException as exc:  # collected: the assertion below names it
            errors.append(exc)

    writer = threading.Thread(target=long_write)
    writer.start()
    assert written.wait(timeout=10)
    readers = [threading.Thread(target=reader) for _ in range(4)]
    for thread in readers:
        thread.start()
    # A separate read-only process (like `gitorch status`) also reads the old state.
    other = spawn("read-count", location)
    out, err = other.communicate(timeout=30)
    for thread in readers:
        thread.join(timeout=10)
    readers_done.set()
    writer.join(timeout=10)

    assert errors == []
    assert other.returncode == 0, err
    assert out.strip() == "5"
    assert len(seen) == 4 * 40 and set(seen) <= {5, 0}
    assert set(seen) == {5, 0}  # 5 revisions, 0 events: nothing of the open transaction
    assert len(store.list_revisions(limit=None)) == 65


def test_a_second_writer_waits_for_the_first_instead_of_failing(
    sqlite_store: StateStore,
) -> None:
    store = sqlite_store
    holding = threading.Event()

    def slow_write() -> None:
        with store.transaction():
            store.append_event("slow", "first")
            holding.set()
            time.sleep(0.3)

    thread = threading.Thread(target=slow_write)
    thread.start()
    assert holding.wait(timeout=10)
    started = time.monotonic()
    store.append_event("fast", "second")  # blocks on the write lock, then succeeds
    waited = time.monotonic() - started
    thread.join(timeout=10)
    assert waited >= 0.2
    assert [e.message for e in store.list_events(newest_first=False)] == ["first", "second"]


def test_a_writer_that_waits_too_long_gets_a_clear_error(state_dir: Path) -> None:
    holder = StateStore(state_dir)
    impatient = StateStore(state_dir, busy_timeout=0.05)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with holder.transaction():
            holder.append_event("k", "holding the write lock")
            holding.set()
            release.wait(timeout=10)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert holding.wait(timeout=10)
        with pytest.raises(StateError, match="stayed busy"):
            impatient.append_event("k", "cannot get in")
    finally:
        release.set()
        thread.join(timeout=10)
        holder.close()
        impatient.close()


def test_port_allocation_race_between_threads_never_double_allocates(store: StateStore) -> None:
    def allocate(worker: int) -> list[int]:
        return [store.allocate_port("n1", f"w{worker}-{i}/http").host_port for i in range(25)]

    def contest(worker: int) -> int | None:
        try:
            return store.allocate_port("n1", f"c{worker}/http", port=31000).host_port
        except PortUnavailable:
            return None

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(allocate, range(4)))
        winners = [p for p in pool.map(contest, range(4)) if p is not None]
    ports = [p for chunk in results for p in chunk]
    assert len(ports) == 100 and len(set(ports)) == 100
    assert sorted(ports) == list(range(30000, 30100))  # lowest free, no gap
    assert winners == [31000]
    assert len(store.list_ports("n1")) == 101


def test_port_allocation_race_between_processes_never_double_allocates(
    store: StateStore, location: str, tmp_path: Path, spawn: Spawn
) -> None:
    go = tmp_path / "go"
    workers = [spawn("allocate", location, "n1", f"p{i}", "40", str(go)) for i in range(2)]
    for proc in workers:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
    # Both are open and polling: start them together, and race from here too.
    go.touch()
    mine = [store.allocate_port("n1", f"main-{i}/http").host_port for i in range(20)]
    outputs = []
    for proc in workers:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        outputs.append(json.loads(out))
    ports = mine + [p for result in outputs for p in result["ports"]]
    assert len(ports) == 100 and len(set(ports)) == 100
    assert [r["contested"] for r in outputs].count(31000) == 1
    assert [r["contested"] for r in outputs].count(None) == 1
    stored = [(p.host_port, p.owner) for p in store.list_ports("n1")]
    assert len(stored) == 101 and len({port for port, _ in stored}) == 101
    # Both racers allocated in the same moment (the worker's halfway meeting point): the
    # second half of the ports is shared between them, not one block each.
    racers = [owner.split("-")[0] for _, owner in stored if owner.startswith("p")]
    second_half = racers[40:80]
    assert second_half.count("p0") == second_half.count("p1") == 20
