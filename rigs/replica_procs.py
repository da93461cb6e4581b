"""Replica processes as /proc shows them: the ground truth the soak and the tests count,
independent of gitorch's own records (so an orphan, a process without a record, shows).

Every process-driver replica carries ``GITORCH_REPLICA=<its name>`` in its environment
(``gitorch.runtime.process.REPLICA_MARKER``), and its name starts with the cluster's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

#: Replicas carry this variable (gitorch.runtime.process.REPLICA_MARKER).
REPLICA_MARKER = b"GITORCH_REPLICA="


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    state: str  # R S D T Z ...
    ticks: int  # start time: with the pid, the process' identity


def read_proc(pid: int) -> Proc | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return Proc(pid, int(fields[1]), fields[0], int(fields[19]))


def alive(pid: int) -> bool:
    proc = read_proc(pid)
    return proc is not None and proc.state not in ("Z", "X")


def environ_of(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = [item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item]
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def cmdline_of(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


@dataclass(frozen=True)
class ReplicaProc:
    """A process carrying the replica marker of the soak's cluster."""

    pid: int
    name: str  # the replica's name (<cluster>-<service>-<slot>-<digest6>-<rand>)
    service: str
    state: str
    ticks: int
    env: dict[str, str] = field(compare=False, hash=False, default_factory=dict)


def replica_processes(cluster: str) -> list[ReplicaProc]:
    """Every live process whose environment names a replica of ``cluster`` (found from
    /proc, not from gitorch's records: orphans included)."""
    prefix = f"{cluster}-".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as fh:
                raw = fh.read()
        except OSError:
            continue
        marker_at = raw.find(REPLICA_MARKER + prefix)
        if marker_at < 0:
            continue
        proc = read_proc(int(entry.name))
        if proc is None or proc.state in ("Z", "X"):
            continue
        env = {
            k.decode(errors="replace"): v.decode(errors="replace")
            for k, _, v in (item.partition(b"=") for item in raw.split(b"\0") if b"=" in item)
        }
        name = env.get("GITORCH_REPLICA", "")
        service = name[len(cluster) + 1 :].rsplit("-", 3)[0]
        found.append(ReplicaProc(proc.pid, name, service, proc.state, proc.ticks, env))
    return found
