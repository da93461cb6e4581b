"""One daemon per state directory: an ``flock`` on ``DIR/daemon.lock``.

Why flock and not a pid file alone: the kernel drops an flock when the holder's file
descriptor is closed, which happens however the process ends (SIGKILL, OOM, power loss of
the process tree), so a crashed daemon never leaves a stale lock that needs a human.
The file's content (pid, start time, host) is only there to tell the next daemon *who*
holds the lock.

The descriptor is opened non-inheritable (Python's default, stated explicitly): workloads
started by the process driver outlive the daemon, and must not keep its lock alive.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from gitorch.errors import StateError, StateLocked
from gitorch.state.layout import LOCK_FILE, ensure_state_dir
from gitorch.state.records import iso_time

# A second daemon may look at the file in the instant between the first one's flock()
# and its write of the pid: wait this long for the content before reporting it unknown.
_OWNER_WAIT_SECONDS = 1.0


@dataclass(frozen=True)
class LockOwner:
    """Who holds a state directory's lock, as written in the lock file."""

    pid: int | None
    started_at: float | None
    host: str | None

    def describe(self) -> str:
        if self.pid is None:
            return "an unknown process"
        text = f"pid {self.pid}"
        if self.host:
            text += f" on {self.host}"
        if self.started_at is not None:
            text += f", started {iso_time(self.started_at)}"
        return text


def _parse_owner(text: str) -> LockOwner | None:
    try:
        data = json.loads(text)
        return LockOwner(
            pid=int(data["pid"]),
            started_at=float(data["startedAt"]),
            host=str(data.get("host") or "") or None,
        )
    except (ValueError, KeyError, TypeError):
        return None


class DaemonLock:
    """The exclusive right to reconcile the state directory ``state_dir``.

    ::

        with DaemonLock(state_dir):
            run_daemon()

    :meth:`acquire` raises :class:`~gitorch.errors.StateLocked`, naming the holder's pid,
    when another process (or another DaemonLock in this one) holds the lock.
    """

    def __init__(self, state_dir: str | Path) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock without waiting, and write our pid into the lock file."""
        if self._fd is not None:
            return
        ensure_state_dir(self.state_dir)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateError(f"cannot open the daemon lock {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            owner = self._wait_for_owner()
            raise StateLocked(
                f"the state directory {self.state_dir} is in use by another gitorch daemon"
                f" ({owner.describe() if owner else 'an unknown process'})",
                detail=("stop that daemon first, or use another --state directory",),
            ) from exc
        except OSError as exc:
            os.close(fd)
            raise StateError(f"cannot lock {self.path}: {exc.strerror}") from exc
        try:
            content = json.dumps(
                {"pid": os.getpid(), "startedAt": time.time(), "host": socket.gethostname()}
            ).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, content + b"\n", 0)
        except OSError as exc:
            os.close(fd)  # closing also drops the flock
            raise StateError(f"cannot write the daemon lock {self.path}: {exc.strerror}") from exc
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (emptying the file first, so nobody reads a stale pid)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        # The lock is dropped by close() below whatever happens to the truncation.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)

    def __enter__(self) -> DaemonLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _wait_for_owner(self) -> LockOwner | None:
        deadline = time.monotonic() + _OWNER_WAIT_SECONDS
        while True:
            owner = read_owner(self.state_dir)
            if owner is not None or time.monotonic() >= deadline:
                return owner
            time.sleep(0.02)


def read_owner(state_dir: str | Path) -> LockOwner | None:
    """What the lock file says about its holder (``None`` if empty or unreadable).

    This reads the file only; use :func:`lock_holder` to know whether it is really held.
    """
    try:
        text = (Path(state_dir) / LOCK_FILE).read_text(encoding="utf-8")
    except OSError:
        return None
    return _parse_owner(text)


def lock_holder(state_dir: str | Path) -> LockOwner | None:
    """The daemon holding ``state_dir``'s lock right now, or ``None`` if no one does.

    For ``gitorch status``: it probes the lock (taking and dropping it at once when it
    is free), so a pid left in the file by a crashed daemon is not reported.
    """
    path = Path(state_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot open the daemon lock {path}: {exc.strerror}") from exc
    try:
        try:
            # A shared lock conflicts with the daemon's exclusive one and with nothing else.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return read_owner(state_dir) or LockOwner(pid=None, started_at=None, host=None)
        return None
    finally:
        os.close(fd)  # also drops the shared lock if we got it
