"""One daemon per state directory: flock, pid in the message, freed when the holder dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gitorch.errors import StateLocked
from gitorch.state import DaemonLock, StateStore, lock_holder, read_owner

Spawn = Callable[..., subprocess.Popen[str]]


def start_holder(spawn: Spawn, state_dir: Path) -> subprocess.Popen[str]:
    proc = spawn("hold-lock", str(state_dir))
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == f"locked {proc.pid}", (line, proc.stderr.read() if proc.stderr else "")
    return proc


def test_second_daemon_is_refused_with_the_first_ones_pid(state_dir: Path, spawn: Spawn) -> None:
    holder = start_holder(spawn, state_dir)
    with pytest.raises(StateLocked) as caught:
        DaemonLock(state_dir).acquire()
    assert f"pid {holder.pid}" in str(caught.value)
    assert str(state_dir) in str(caught.value)
    owner = lock_holder(state_dir)
    assert owner is not None and owner.pid == holder.pid and owner.started_at is not None
    # Readers need no lock: status/history work while the daemon runs.
    with StateStore(state_dir) as store:
        store.list_revisions()


def test_lock_is_freed_when_the_holder_is_killed(state_dir: Path, spawn: Spawn) -> None:
    holder = start_holder(spawn, state_dir)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    # The pid is still written in the file, but nobody holds the lock any more.
    stale = read_owner(state_dir)
    assert stale is not None and stale.pid == holder.pid
    assert lock_holder(state_dir) is None
    with DaemonLock(state_dir) as lock:
        assert lock.held
        owner = lock_holder(state_dir)
        assert owner is not None and owner.pid == os.getpid()
    assert not lock.held
    assert lock_holder(state_dir) is None
    assert read_owner(state_dir) is None  # released cleanly: the file was emptied


def test_a_second_lock_in_the_same_process_is_refused_too(state_dir: Path) -> None:
    with DaemonLock(state_dir), pytest.raises(StateLocked, match=f"pid {os.getpid()}"):
        DaemonLock(state_dir).acquire()
    with DaemonLock(state_dir) as again:
        assert again.held


def test_children_started_by_the_daemon_do_not_inherit_the_lock(state_dir: Path) -> None:
    lock = DaemonLock(state_dir)
    lock.acquire()
    # Like a workload of the process driver: outlives the daemon, must not keep its lock.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], close_fds=False)
    try:
        lock.release()
        # The kernel wakes a vfork()ing parent a moment before the child's close-on-exec
        # descriptors are closed: allow that instant, not the child's 30 s lifetime.
        deadline = time.monotonic() + 2.0
        while lock_holder(state_dir) is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert lock_holder(state_dir) is None
        with DaemonLock(state_dir) as successor:
            assert successor.held
        assert child.poll() is None  # the child is alive: it simply does not hold the lock
    finally:
        child.kill()
        child.wait(timeout=10)
