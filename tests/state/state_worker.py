"""A separate process for the state store tests: holds locks, races, crashes on purpose.

Usage: ``state_worker.py COMMAND STATE_DIR [ARGS...]``. Not a test module (no test_ prefix).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from gitorch.state import DaemonLock, PortUnavailable, StateStore


def say(line: str) -> None:
    print(line, flush=True)


def hold_lock(state_dir: str) -> None:
    """Take the daemon lock, report it, and keep it until killed."""
    DaemonLock(state_dir).acquire()
    say(f"locked {os.getpid()}")
    time.sleep(600)


def allocate(state_dir: str, node: str, prefix: str, count: str, go_file: str) -> None:
    """Wait for ``go_file``, allocate ``count`` ports with a meeting point halfway, then
    fight for port 31000. The meeting point (every racer writes ``GO.PREFIX`` and waits
    for the two files) makes the second halves run at the same time even on a loaded
    machine, where one process could otherwise finish before the other is scheduled."""
    store = StateStore(state_dir)
    say("ready")
    go = Path(go_file)
    while not go.exists():
        time.sleep(0.002)
    ports = []
    for i in range(int(count)):
        if i == int(count) // 2:
            go.with_name(f"{go.name}.{prefix}").touch()
            deadline = time.monotonic() + 30
            while len(list(go.parent.glob(f"{go.name}.*"))) < 2 and time.monotonic() < deadline:
                time.sleep(0.001)
        ports.append(store.allocate_port(node, f"{prefix}-{i}/http").host_port)
        # Let the other racer in between: SQLite's busy handler backs off in sleeps, so
        # without a pause one process would take every port before the other wakes up.
        time.sleep(0.001)
    try:
        contested: int | None = store.allocate_port(node, f"{prefix}-x/http", port=31000).host_port
    except PortUnavailable:
        contested = None
    say(json.dumps({"ports": ports, "contested": contested}))


def crash(state_dir: str, mode: str) -> None:
    """Write two records in one transaction and die at the point ``mode`` names."""
    store = StateStore(state_dir)
    with store.transaction():
        store.record_revision("a" * 40, services=["web"])
        if mode == "exit-midway":
            os._exit(3)  # no cleanup, no rollback, no commit: like a crash
        if mode == "hang-midway":
            say("midway")
            time.sleep(600)
        store.append_event("revision.started", "second write", revision="a" * 40)
    if mode == "exit-after-commit":
        os._exit(3)
    raise SystemExit(f"unknown mode {mode}")


def open_new(state_dir: str, go_file: str) -> None:
    """Wait for ``go_file``, then open (create and migrate) the store and print its version."""
    while not Path(go_file).exists():
        time.sleep(0.002)
    store = StateStore(state_dir)
    store.append_event("opened", f"by {os.getpid()}")
    say(str(store.schema_version))


def read_count(state_dir: str) -> None:
    """Open the store read-only and print how many revisions it holds."""
    store = StateStore(state_dir, readonly=True)
    say(str(len(store.list_revisions(limit=None))))


def append(state_dir: str, prefix: str, count: str, go_file: str) -> None:
    """Wait for ``go_file``, then append ``count`` audit entries, one every millisecond or
    so: without a pause, a process that wins SQLite's lock can append all of its entries
    before the others' busy handlers wake up, and the writers never interleave."""
    store = StateStore(state_dir)
    say("ready")
    while not Path(go_file).exists():
        time.sleep(0.002)
    for i in range(int(count)):
        store.append_event("test.race", f"{prefix} {i}", actor=f"user:{prefix}@test")
        time.sleep(0.001)
    say("done")


COMMANDS: dict[str, Callable[..., None]] = {
    "append": append,
    "hold-lock": hold_lock,
    "open": open_new,
    "allocate": allocate,
    "crash": crash,
    "read-count": read_count,
}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](*sys.argv[2:])
