"""The process driver's bookkeeping: one ``instance.json`` per replica.

Layout under the driver's ``state_dir``::

    replicas/<name>/instance.json   the record below (mode 0600; never a secret value)
    replicas/<name>/output.log      the replica's stdout and stderr, in the order written
    replicas/<name>/cgroup          the replica's cgroup, written before the group is made
                                    (so a daemon killed before the record finds it again)

Replicas started by earlier versions wrote ``stdout.log`` and ``stderr.log`` apart; they
are still read.

Records are written atomically (a temporary file in the same folder, then ``os.replace``),
so a reader (another daemon, a crash mid-write) sees the old or the new record, never half
of one. No ``fsync``: a record only has to survive the *daemon* dying, which the page cache
already guarantees; a power loss also kills every replica, and the new boot id marks all
old records as exited anyway.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

RECORD_FILE = "instance.json"
OUTPUT_FILE = "output.log"
CGROUP_FILE = "cgroup"
STDOUT_FILE = "stdout.log"  # older replicas
STDERR_FILE = "stderr.log"  # older replicas
RECORD_VERSION = 1


@dataclass(frozen=True)
class PortRecord:
    """A port the replica was given: it listens on ``host_port`` (also in ``$PORT``)."""

    name: str
    container_port: int
    host_ip: str
    host_port: int
    protocol: str = "tcp"


@dataclass(frozen=True)
class ReplicaRecord:
    """Everything needed to find, identify and probe a replica after a daemon restart.

    A replica is identified by ``(boot_id, pid, start_ticks)``: the kernel never gives the
    same pid to two processes started in the same clock tick of one boot, so a recycled
    pid is recognised by its different start time.
    """

    name: str
    pid: int
    start_ticks: int
    boot_id: str
    argv: list[str]
    cmdline: list[str]  # /proc/<pid>/cmdline right after spawn, for humans and debugging
    cwd: str
    env: dict[str, str]  # never a secret value: those are named in secret_env only
    labels: dict[str, str]
    ports: list[PortRecord] = field(default_factory=list)
    created_at: float = 0.0
    memory_limit: int | None = None
    cpu_limit: float | None = None
    stop_grace_seconds: float = 10.0
    exit_code: int | None = None  # known only while this daemon process was the parent
    exited_at: float | None = None
    exit_reason: str | None = None  # "OOMKilled", "exit N", "signal N" (see Instance)
    cgroup: str | None = None  # the group's path below each hierarchy root, if any
    # Names of the env vars that hold secrets (their values are in the process's own
    # environment, never here: an exec probe reads them from /proc/PID/environ).
    secret_env: list[str] = field(default_factory=list)
    version: int = RECORD_VERSION

    @property
    def instance_id(self) -> str:
        """``"<pid>-<start ticks>"``: stable for the life of the process, never reused."""
        return f"{self.pid}-{self.start_ticks}"

    def to_json(self) -> dict[str, Any]:
        # Shallow on purpose: dataclasses.asdict deep-copies recursively and was the
        # single largest cost of create() in the start-to-ready benchmark.
        data = dict(self.__dict__)
        data["ports"] = [dict(p.__dict__) for p in self.ports]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReplicaRecord:
        ports = [PortRecord(**p) for p in data.get("ports", [])]
        known = {f for f in cls.__dataclass_fields__ if f != "ports"}
        values = {k: v for k, v in data.items() if k in known}
        return cls(ports=ports, **values)

    def exited(self, code: int | None, at: float, reason: str | None) -> ReplicaRecord:
        return replace(self, exit_code=code, exited_at=at, exit_reason=reason)


class RecordStore:
    """Reads and writes replica records under ``<state_dir>/replicas``.

    One lock per store guards read-modify-write of a record against a concurrent
    ``delete`` (the waiter thread records an exit code while ``remove`` deletes the folder).
    """

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "replicas"  # created by the first claim: reading creates nothing
        self.lock = threading.RLock()
        # all()'s records by name, with the identity of the file each was read from: every
        # write replaces the file (a new inode), so an unchanged (inode, mtime, size) is an
        # unchanged record, whoever wrote it. A daemon lists every record on every pass;
        # a stat is ~10x cheaper than reading and decoding the JSON (4,000 replicas: see
        # bench/bench_daemon.py).
        self._seen: dict[str, tuple[tuple[int, int, int], ReplicaRecord]] = {}

    def folder(self, name: str) -> Path:
        return self.root / name

    def claim(self, name: str) -> Path:
        """Create the replica's folder; raise ``FileExistsError`` if a record is there.

        ``mkdir`` is atomic across processes, so two daemons cannot both claim a name. A
        folder without a record (a crash between claim and first write) is reused.
        """
        folder = self.folder(name)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            if (folder / RECORD_FILE).exists():
                raise
        return folder

    def write(self, record: ReplicaRecord) -> None:
        folder = self.folder(record.name)
        tmp = folder / f".{RECORD_FILE}.{os.getpid()}.{threading.get_ident()}.tmp"
        data = json.dumps(record.to_json(), sort_keys=True).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, folder / RECORD_FILE)

    def read(self, name: str) -> ReplicaRecord | None:
        """The record of ``name``, or ``None`` if missing or unreadable (being deleted)."""
        try:
            with open(self.folder(name) / RECORD_FILE, "rb") as fh:
                return ReplicaRecord.from_json(json.loads(fh.read()))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (ValueError, TypeError):
            # Only a hand-edited file can be torn (writes are atomic): skip it, do not crash.
            return None

    def names(self) -> list[str]:
        return [name for name, _ in self._folders()]

    def _folders(self) -> list[tuple[str, str]]:
        """(name, path) of every replica's folder; paths as strings: two pathlib joins per
        replica were a fifth of listing 4,000 of them."""
        try:
            return [(e.name, e.path) for e in os.scandir(self.root) if e.is_dir()]
        except FileNotFoundError:
            return []

    def all(self) -> list[ReplicaRecord]:
        records = []
        seen: dict[str, tuple[tuple[int, int, int], ReplicaRecord]] = {}
        suffix = os.sep + RECORD_FILE
        for name, path in self._folders():
            try:
                info = os.stat(path + suffix)
            except (FileNotFoundError, NotADirectoryError):
                continue
            identity = (info.st_ino, info.st_mtime_ns, info.st_size)
            known = self._seen.get(name)
            if known is not None and known[0] == identity:
                record: ReplicaRecord | None = known[1]
            else:
                record = self.read(name)
            if record is not None:
                records.append(record)
                seen[name] = (identity, record)
        self._seen = seen
        return records

    def record_exit(
        self, name: str, instance_id: str, code: int | None, at: float, reason: str | None
    ) -> None:
        """Store an exit, unless the record was removed or now names another process."""
        with self.lock:
            record = self.read(name)
            if record is None or record.instance_id != instance_id:
                return
            self.write(record.exited(code, at, reason))

    def write_cgroup(self, name: str, group: str) -> None:
        (self.folder(name) / CGROUP_FILE).write_text(group + "\n", encoding="utf-8")

    def read_cgroup(self, name: str) -> str | None:
        """The group a claimed folder announced (None: none, or unreadable)."""
        try:
            group = (self.folder(name) / CGROUP_FILE).read_text(encoding="utf-8").strip()
        except OSError:
            return None
        return group or None

    def delete(self, name: str) -> None:
        """Delete the replica's folder: record *and* logs (like ``docker rm``)."""
        with self.lock:
            shutil.rmtree(self.folder(name), ignore_errors=True)
