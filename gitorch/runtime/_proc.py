"""Small, dependency-free readers of Linux ``/proc`` used by the process driver.

Everything here is read-only and tolerant: a process can vanish between two reads, so
readers return ``None`` instead of raising when ``/proc/<pid>`` disappears.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")

#: Clock ticks per second: the unit of start time, utime and stime in /proc/<pid>/stat.
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` the driver needs."""

    pid: int
    state: str  # R, S, D, Z, T, X, ...
    pgrp: int
    utime: int  # ticks
    stime: int  # ticks
    start_ticks: int  # field 22: start time after boot, in ticks
    rss_pages: int

    @property
    def is_dead(self) -> bool:
        """A zombie (``Z``) or dying (``X``) process has exited already."""
        return self.state in ("Z", "X")


def parse_stat(text: str) -> ProcStat:
    """Parse one ``/proc/<pid>/stat`` line.

    The command name (field 2) is in parentheses and may itself contain spaces and
    parentheses, so fields are counted from the *last* ``)``.
    """
    head, _, tail = text.rpartition(")")
    pid = int(head.split("(", 1)[0])
    rest = tail.split()
    # rest[0] is field 3 (state); field N is rest[N - 3].
    return ProcStat(
        pid=pid,
        state=rest[0],
        pgrp=int(rest[2]),
        utime=int(rest[11]),
        stime=int(rest[12]),
        start_ticks=int(rest[19]),
        rss_pages=int(rest[21]),
    )


def read_stat(pid: int) -> ProcStat | None:
    """``/proc/<pid>/stat`` parsed, or ``None`` when there is no such process.

    Read with ``os.open``/``os.read``, without a file object: a pass reads this for every
    replica, and the text file object was two thirds of listing 4,000 replicas."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        return None
    try:
        raw = os.read(fd, 4096)
    except ProcessLookupError:  # it exited between the open and the read
        return None
    finally:
        os.close(fd)
    try:
        return parse_stat(raw.decode("utf-8", "replace"))
    except (IndexError, ValueError):
        return None


def read_cmdline(pid: int) -> list[str] | None:
    """The argv of ``pid`` (empty for kernel threads and zombies), ``None`` when gone."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def boot_id() -> str:
    """This boot's random id: start ticks are only comparable within one boot."""
    try:
        return (PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
    except OSError:
        return ""


def boot_time() -> float:
    """Unix time the machine booted (``btime`` in ``/proc/stat``)."""
    with open("/proc/stat", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("btime "):
                return float(line.split()[1])
    return 0.0


def mem_total_bytes() -> int:
    """``MemTotal`` from ``/proc/meminfo`` in bytes (0 when unreadable)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def group_members(pgrp: int) -> list[ProcStat]:
    """Every live process whose process group is ``pgrp``.

    Costs one scan of ``/proc`` (a few ms with a few hundred processes); used by
    :meth:`usage` only, never on the hot listing path.
    """
    members = []
    for entry in os.scandir(PROC):
        if not entry.name.isdigit():
            continue
        stat = read_stat(int(entry.name))
        if stat is not None and stat.pgrp == pgrp and not stat.is_dead:
            members.append(stat)
    return members


def tail_lines(path: Path, count: int, *, end: int | None = None, block: int = 8192) -> list[str]:
    """The last ``count`` lines of a text file, reading backwards from its end (or from
    byte ``end``, so that a follower can go on from exactly there)."""
    if count <= 0:
        return []
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            end = size if end is None else min(end, size)
            data = b""
            pos = end
            # One more newline than lines wanted, so the first kept line is whole.
            while pos > 0 and data.count(b"\n") <= count:
                step = min(block, pos)
                pos -= step
                fh.seek(pos)
                data = fh.read(step) + data
    except FileNotFoundError:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    return lines[-count:]
