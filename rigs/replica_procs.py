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
    /proc, not from gitorch's records: orphans included); the containers of the engine
    named by :func:`use_engine` when one is."""
    if _ENGINE:
        return _container_replicas(_ENGINE[0], cluster)
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


# -- Docker replicas (the soak's --runtime docker) --------------------------------------------

_ENGINE: list[str] = []  # the engine whose containers replica_processes lists instead
_LAST: dict[str, list[ReplicaProc]] = {}  # cluster -> the last list the engine gave


def use_engine(endpoint: str | None) -> None:
    """List replicas as the containers of ``endpoint`` (None: process replicas again)."""
    _ENGINE[:] = [endpoint] if endpoint else []


def _container_replicas(endpoint: str, cluster: str) -> list[ReplicaProc]:
    """The running containers of ``cluster`` as :class:`ReplicaProc` (their main process
    as the host sees it). ``env`` is the container's, except ``PORT``: where the replica
    answers from the host (its published port), and ``VOLUME_DATA``: the volume's folder
    as the host reaches it (``/proc/PID/root/...``). While the engine does not answer
    (restarted on purpose), the last list, less the processes that ended."""
    import docker  # the soak's Docker side only; gitorch's is gitorch/runtime/docker.py

    try:
        client = docker.DockerClient(base_url=endpoint, timeout=10)
        try:
            containers = client.containers.list(filters={"label": f"dev.gitorch.cluster={cluster}"})
        finally:
            client.close()
    except Exception:  # the engine is down: what ran before still runs, or is gone
        return [r for r in _LAST.get(cluster, []) if alive(r.pid)]
    found = []
    for container in containers:
        attrs = container.attrs
        pid = int((attrs.get("State") or {}).get("Pid") or 0)
        proc = read_proc(pid) if pid else None
        if proc is None or proc.state in ("Z", "X"):
            continue
        config = attrs.get("Config") or {}
        env = dict(item.partition("=")[::2] for item in config.get("Env") or [])
        bindings = (attrs.get("NetworkSettings") or {}).get("Ports") or {}
        published = [b["HostPort"] for spec in bindings.values() for b in spec or [] if b]
        if published:
            env["PORT"] = published[0]
        if env.get("VOLUME_DATA"):
            env["VOLUME_DATA"] = f"/proc/{pid}/root{env['VOLUME_DATA']}"
        labels = config.get("Labels") or {}
        name = str(attrs.get("Name", "")).lstrip("/")
        service = labels.get("dev.gitorch.service", "")
        found.append(ReplicaProc(pid, name, service, proc.state, proc.ticks, env))
    _LAST[cluster] = found
    return found
