"""Who holds a TCP listening port on this host: for messages that name the holder.

Linux only (``/proc/net/tcp{,6}`` and ``/proc/PID/fd``); elsewhere, or without the
permission to read another process's file descriptors, the holder is unknown and callers
say so. Reading is cheap (one pass over /proc per call) and never raises.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column
_LISTEN_FIELD = f" {_LISTEN} "


@dataclass(frozen=True)
class PortHolder:
    """A process listening on a port."""

    port: int
    pid: int | None  # None: a socket whose process could not be found
    command: str = ""

    def describe(self) -> str:
        if self.pid is None:
            return "an unknown process"
        return f"pid {self.pid} ({self.command or '?'})"


def _listening_inodes(ports: Collection[int], proc: Path) -> dict[str, int]:
    """socket inode -> port, for TCP sockets listening on ``ports``."""
    found: dict[str, int] = {}
    for table in ("net/tcp", "net/tcp6"):
        try:
            lines = (proc / table).read_text(encoding="ascii", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines[1:]:
            # Most lines of a busy host are connections, not listeners: the state column
            # is the only field that can read `` 0A `` (the others are hex addresses
            # joined by colons, or decimal), so a line without it is skipped unsplit.
            if _LISTEN_FIELD not in line:
                continue
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN:
                continue
            try:
                port = int(fields[1].rsplit(":", 1)[1], 16)
            except (IndexError, ValueError):
                continue
            if port in ports:
                found[fields[9]] = port
    return found


def port_holders(ports: Collection[int], proc: Path = Path("/proc")) -> dict[int, list[PortHolder]]:
    """For each of ``ports`` that some socket listens on, the processes holding it."""
    wanted = set(ports)
    inodes = _listening_inodes(wanted, proc)
    if not inodes:
        return {}
    holders: dict[int, list[PortHolder]] = {}
    seen: set[tuple[int, int]] = set()
    try:
        pids = [int(entry) for entry in os.listdir(proc) if entry.isdigit()]
    except OSError:
        pids = []
    for pid in pids:
        # Paths as text: a Path joined per descriptor cost more than reading its link.
        fd_dir = os.path.join(proc, str(pid), "fd")
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if not target.startswith("socket:["):
                continue
            port = inodes.get(target[8:-1])
            if port is None or (pid, port) in seen:
                continue
            seen.add((pid, port))
            holders.setdefault(port, []).append(PortHolder(port, pid, _command(proc, pid)))
    for port in set(inodes.values()) - set(holders):
        holders[port] = [PortHolder(port, None)]
    return holders


def _command(proc: Path, pid: int) -> str:
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ""
    words = [w.decode("utf-8", "replace") for w in raw.split(b"\0") if w]
    text = " ".join(words)
    return text if len(text) <= 120 else text[:117] + "..."


def descends_from(pid: int, ancestor: int, proc: Path = Path("/proc")) -> bool:
    """Whether ``pid`` is ``ancestor`` or one of its descendants (its load-balancer
    workers, say)."""
    seen = 0
    while pid > 1 and seen < 64:
        if pid == ancestor:
            return True
        try:
            status = (proc / str(pid) / "status").read_text(encoding="ascii", errors="replace")
        except OSError:
            return False
        parent = next((ln.split()[1] for ln in status.splitlines() if ln.startswith("PPid:")), "0")
        pid, seen = int(parent), seen + 1
    return pid == ancestor
