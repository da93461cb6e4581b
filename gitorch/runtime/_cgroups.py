"""Control groups for the process driver: real memory and cpu limits, OOM kills seen.

Each replica gets its own group, ``gitorch/<cluster>/<node>/<replica>`` below the root of
every hierarchy that matters (the node level keeps two process nodes of one cluster on one
machine from taking each other's groups for orphans). The driver creates the group and
sets its limits *before* the replica's program runs, and the program starts inside it
(see ``LAUNCHER`` in :mod:`gitorch.runtime.process`), so no instruction of the replica
runs outside its limits.

Both layouts of the kernel are supported:

* **cgroup v1** (one hierarchy per controller, e.g. ``/sys/fs/cgroup/memory`` and
  ``/sys/fs/cgroup/cpu``): ``memory.limit_in_bytes`` (and ``memory.memsw.limit_in_bytes``
  when swap is accounted, so swap is no way around the limit), ``cpu.cfs_quota_us`` over a
  100 ms ``cpu.cfs_period_us``; OOM kills are counted by ``oom_kill`` in
  ``memory.oom_control``.
* **cgroup v2** (one unified tree): ``memory.max``, ``memory.swap.max = 0``, ``cpu.max``,
  ``memory.oom.group = 1`` (the whole replica dies together, as a container does); the
  controllers are enabled in ``cgroup.subtree_control`` of every ancestor; OOM kills are
  counted by ``oom_kill`` in ``memory.events``.

A machine with the memory controller on a v1 hierarchy is treated as v1 even when a
(controller-less) v2 tree is mounted beside it, the "hybrid" layout of systemd machines.

What is not done: no pids, io or cpuset limits; cpu *shares* are left alone (a limit is a
quota, like ``docker --cpus``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

#: Top-level group every gitorch replica lives under (like Docker's ``docker``).
PARENT = "gitorch"
#: The cfs period the cpu quota is a share of (the kernel's default, and Docker's).
CPU_PERIOD_US = 100_000
#: The smallest quota the kernel accepts.
_MIN_QUOTA_US = 1_000
_KILL_ROUNDS_SECONDS = 5.0
_RMDIR_WAIT_SECONDS = 2.0
_POLL_SECONDS = 0.01


class CgroupError(OSError):
    """A group could not be created or configured."""


@dataclass(frozen=True)
class CgroupMount:
    """One mounted cgroup filesystem, from ``/proc/self/mountinfo``."""

    path: Path
    version: int  # 1 or 2
    options: frozenset[str]  # v1: the controllers (and name=...) of this hierarchy


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[CgroupMount]:
    """The cgroup mounts listed in a ``/proc/<pid>/mountinfo`` text (pure)."""
    mounts = []
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        if not sep:
            continue
        fields, after = head.split(), tail.split()
        if len(fields) < 5 or len(after) < 3:
            continue
        fstype, super_options = after[0], after[2]
        if fstype == "cgroup":
            mounts.append(
                CgroupMount(Path(_unescape(fields[4])), 1, frozenset(super_options.split(",")))
            )
        elif fstype == "cgroup2":
            mounts.append(CgroupMount(Path(_unescape(fields[4])), 2, frozenset()))
    return mounts


def _write(path: Path, value: str) -> None:
    with open(path, "w", encoding="ascii") as fh:
        fh.write(value)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None


def _keyed(text: str | None, key: str) -> int | None:
    """The number after ``key`` in a ``key value`` per line file (memory.events...)."""
    for line in (text or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().lstrip("-").isdigit():
            return int(value)
    return None


def _pids_in(procs_file: Path) -> list[int]:
    text = _read(procs_file)
    return [int(p) for p in (text or "").split() if p.isdigit()]


class CgroupTree(ABC):
    """The groups of one machine, in one layout (see :class:`CgroupV1`, :class:`CgroupV2`).

    Group names are relative paths (``gitorch/<cluster>/<node>/<replica>``); every method
    maps them under each hierarchy root. ``controllers`` are those that enforce limits
    here (``memory``, and ``cpu`` when available).
    """

    version: int
    controllers: tuple[str, ...]

    def describe(self) -> str:
        """One line for ``gitorch nodes``: ``cgroup v1 (memory, cpu)``."""
        return f"cgroup v{self.version} ({', '.join(self.controllers)})"

    # -- layout-specific -------------------------------------------------------------

    @abstractmethod
    def _dirs(self, group: str) -> list[Path]:
        """The group's folder in every hierarchy (the first one lists its processes)."""
        ...

    @abstractmethod
    def _configure(self, group: str, memory_bytes: int | None, cpu_cores: float | None) -> None: ...

    def _make_level(self, group: str) -> None:
        """Create one level of a group path (its parent exists)."""
        for folder in self._dirs(group):
            with contextlib.suppress(FileExistsError):
                folder.mkdir()

    @abstractmethod
    def oom_kills(self, group: str) -> int | None:
        """How many processes of the group the kernel OOM-killed (None: unknown)."""
        ...

    @abstractmethod
    def memory_peak(self, group: str) -> int | None:
        """The most memory the group has used, in bytes (None: the kernel does not say)."""
        ...

    def procs_files(self, group: str) -> list[Path]:
        """The files a process writes its pid to, to join the group in every hierarchy."""
        return [folder / "cgroup.procs" for folder in self._dirs(group)]

    # -- shared ----------------------------------------------------------------------

    def create(
        self, group: str, *, memory_bytes: int | None = None, cpu_cores: float | None = None
    ) -> list[Path]:
        """Create the group (and missing ancestors), set its limits; return the files a
        process joins it through. Raises :class:`CgroupError` with the reason."""
        parts = group.strip("/").split("/")
        for attempt in range(3):
            try:
                for depth in range(1, len(parts) + 1):
                    self._make_level("/".join(parts[:depth]))
                self._configure(group, memory_bytes, cpu_cores)
                return self.procs_files(group)
            except FileNotFoundError:
                # A concurrent remove() pruned an ancestor that had just become empty.
                if attempt == 2:
                    raise
            except OSError as exc:
                raise CgroupError(exc.errno, f"cgroup {group}: {exc.strerror or exc}") from exc
        raise AssertionError("unreachable")

    def exists(self, group: str) -> bool:
        return self._dirs(group)[0].is_dir()

    def pids(self, group: str) -> list[int]:
        """Every process in the group now."""
        return _pids_in(self._dirs(group)[0] / "cgroup.procs")

    def children(self, group: str) -> list[str]:
        """The names of the direct subgroups of ``group``."""
        try:
            return sorted(e.name for e in os.scandir(self._dirs(group)[0]) if e.is_dir())
        except (FileNotFoundError, NotADirectoryError):
            return []

    def kill(self, group: str) -> bool:
        """SIGKILL every process in the group until it is empty; True once it is.

        Repeated because a process may fork between reading the list and the signal.
        """
        deadline = time.monotonic() + _KILL_ROUNDS_SECONDS
        while True:
            pids = self.pids(group)
            if not pids:
                return True
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_SECONDS)

    def remove(self, group: str) -> None:
        """Kill what runs in the group, delete it, then its ancestors below ``PARENT``
        that became empty. A group that does not exist is fine."""
        if not self.exists(group):
            return
        self.kill(group)
        deadline = time.monotonic() + _RMDIR_WAIT_SECONDS
        for folder in reversed(self._dirs(group)):
            while True:
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    # EBUSY: a killed process has not left the group yet.
                    if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                        raise CgroupError(
                            exc.errno, f"cgroup {group}: {exc.strerror or exc}"
                        ) from exc
                    time.sleep(_POLL_SECONDS)
        parts = group.strip("/").split("/")
        for depth in range(len(parts) - 1, 1, -1):  # never PARENT itself
            try:
                for folder in self._dirs("/".join(parts[:depth])):
                    folder.rmdir()
            except OSError:
                break  # not empty (another replica), or already gone


class CgroupV1(CgroupTree):
    """cgroup v1: one hierarchy per controller (``hierarchies``: controller -> mount)."""

    version = 1

    def __init__(self, hierarchies: Mapping[str, Path]) -> None:
        self.hierarchies = dict(hierarchies)
        self.controllers = tuple(c for c in ("memory", "cpu") if c in hierarchies)
        # Controllers co-mounted (cpu,cpuacct) share one folder: join it once.
        roots: list[Path] = []
        for controller in self.controllers:
            if hierarchies[controller] not in roots:
                roots.append(hierarchies[controller])
        self._roots = roots

    def _dirs(self, group: str) -> list[Path]:
        return [root / group for root in self._roots]

    def _configure(self, group: str, memory_bytes: int | None, cpu_cores: float | None) -> None:
        if memory_bytes is not None and "memory" in self.hierarchies:
            folder = self.hierarchies["memory"] / group
            _write(folder / "memory.limit_in_bytes", str(int(memory_bytes)))
            # memsw (memory + swap) must be >= the memory limit, so it is set second.
            memsw = folder / "memory.memsw.limit_in_bytes"
            if memsw.exists():
                _write(memsw, str(int(memory_bytes)))
        if cpu_cores is not None and "cpu" in self.hierarchies:
            folder = self.hierarchies["cpu"] / group
            _write(folder / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(folder / "cpu.cfs_quota_us", str(cpu_quota_us(cpu_cores)))

    def oom_kills(self, group: str) -> int | None:
        if "memory" not in self.hierarchies:
            return None
        folder = self.hierarchies["memory"] / group
        control = _read(folder / "memory.oom_control")
        if control is None:
            return None
        kills = _keyed(control, "oom_kill")  # since Linux 4.13
        if kills is None and _keyed(control, "under_oom") == 1:
            return 1
        return kills

    def memory_peak(self, group: str) -> int | None:
        if "memory" not in self.hierarchies:
            return None
        text = _read(self.hierarchies["memory"] / group / "memory.max_usage_in_bytes")
        return int(text) if text and text.strip().isdigit() else None


class CgroupV2(CgroupTree):
    """cgroup v2: one tree at ``root``; ``controllers`` enabled for gitorch's groups."""

    version = 2

    def __init__(self, root: Path, controllers: tuple[str, ...]) -> None:
        self.root = root
        self.controllers = controllers

    def _dirs(self, group: str) -> list[Path]:
        return [self.root / group]

    def _enable(self, folder: Path) -> None:
        """Let ``folder``'s children use our controllers (the no-internal-process rule
        allows it: gitorch's inner groups hold no process)."""
        enabled = (_read(folder / "cgroup.subtree_control") or "").split()
        wanted = [f"+{c}" for c in self.controllers if c not in enabled]
        if wanted:
            _write(folder / "cgroup.subtree_control", " ".join(wanted))

    def _make_level(self, group: str) -> None:
        self._enable(self.root / group.rpartition("/")[0] if "/" in group else self.root)
        super()._make_level(group)

    def _configure(self, group: str, memory_bytes: int | None, cpu_cores: float | None) -> None:
        folder = self.root / group
        if memory_bytes is not None and "memory" in self.controllers:
            _write(folder / "memory.max", str(int(memory_bytes)))
            if (folder / "memory.swap.max").exists():
                _write(folder / "memory.swap.max", "0")
        if "memory" in self.controllers and (folder / "memory.oom.group").exists():
            _write(folder / "memory.oom.group", "1")
        if cpu_cores is not None and "cpu" in self.controllers:
            _write(folder / "cpu.max", f"{cpu_quota_us(cpu_cores)} {CPU_PERIOD_US}")

    def kill(self, group: str) -> bool:
        # cgroup.kill (Linux 5.14) kills the whole subtree atomically, forks included.
        kill_file = self.root / group / "cgroup.kill"
        if kill_file.exists():
            with contextlib.suppress(OSError):
                _write(kill_file, "1")
        return super().kill(group)

    def oom_kills(self, group: str) -> int | None:
        return _keyed(_read(self.root / group / "memory.events"), "oom_kill")

    def memory_peak(self, group: str) -> int | None:
        text = _read(self.root / group / "memory.peak")  # Linux 5.19
        return int(text) if text and text.strip().isdigit() else None


def cpu_quota_us(cpu_cores: float) -> int:
    """The cfs quota (per ``CPU_PERIOD_US``) that gives ``cpu_cores`` of cpu time."""
    return max(_MIN_QUOTA_US, round(cpu_cores * CPU_PERIOD_US))


def tree_from_mounts(mounts: list[CgroupMount]) -> CgroupTree | None:
    """The layout the mounts describe: v1 when the memory controller has its own
    hierarchy, else v2 when a unified tree offers it, else None (pure but for reading
    the v2 root's ``cgroup.controllers``)."""
    v1: dict[str, Path] = {
        controller: mount.path
        for mount in mounts
        if mount.version == 1
        for controller in ("memory", "cpu")
        if controller in mount.options
    }
    if "memory" in v1:
        return CgroupV1(v1)
    for mount in mounts:
        if mount.version != 2:
            continue
        available = (_read(mount.path / "cgroup.controllers") or "").split()
        if "memory" in available:
            return CgroupV2(mount.path, tuple(c for c in ("memory", "cpu") if c in available))
    return None


@dataclass(frozen=True)
class Detected:
    """What :func:`detect` found: a usable tree, and the line ``gitorch nodes`` shows."""

    tree: CgroupTree | None
    limits: str


def detect(mountinfo: Path = Path("/proc/self/mountinfo")) -> Detected:
    """Find the cgroup layout and check that gitorch may create groups in it.

    The check creates ``PARENT`` (an empty group, as Docker keeps ``docker``) in every
    hierarchy, and on v2 enables the controllers for it: only doing it proves it works.
    """
    try:
        mounts = parse_mountinfo(mountinfo.read_text(encoding="utf-8", errors="replace"))
    except OSError as exc:
        return Detected(None, f"not enforced: cannot read {mountinfo} ({exc.strerror})")
    tree = tree_from_mounts(mounts)
    if tree is None:
        return Detected(None, "not enforced: no cgroup memory controller is mounted")
    try:
        if isinstance(tree, CgroupV2):
            tree._enable(tree.root)
        tree._make_level(PARENT)
        if isinstance(tree, CgroupV2):
            tree._enable(tree.root / PARENT)
    except OSError as exc:
        where = tree._dirs(PARENT)[0]
        return Detected(
            None,
            f"not enforced: no writable cgroup (cgroup v{tree.version}: {where}: "
            f"{exc.strerror or exc})",
        )
    return Detected(tree, tree.describe())
