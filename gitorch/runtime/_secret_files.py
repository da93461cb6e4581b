"""Secret files on memory-backed storage, for both drivers.

A replica's secret files live in ``<root>/<replica name>/``, where ``<root>`` is
``gitorch-<uid>`` on the first tmpfs of ``$XDG_RUNTIME_DIR``, ``/run``, ``/dev/shm`` that
this process can write: they are never on a disk, and they vanish at reboot (as the
replicas do). The root is 0700 and must be owned by us (``/dev/shm`` is world-writable:
a folder someone else made there, or a symlink, is refused rather than used); each
replica's folder is 0700. The process driver points ``$SECRETS_DIR`` at the folder (files
0600: the replica runs as the daemon's user); the Docker driver bind-mounts each file
read-only at ``/run/secrets/NAME`` (files 0444 inside a 0700 folder: a container's user
may be anyone, the host's others still cannot reach it), so ``docker inspect`` shows the
path, never the value.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Mapping
from pathlib import Path

from gitorch.errors import ReplicaStartFailed

#: Filesystem types that keep their files in memory.
_MEMORY_FS = frozenset({"tmpfs", "ramfs"})


def _mount_types() -> list[tuple[str, str]]:
    """(mount point, filesystem type) of every mount, from /proc/self/mountinfo."""
    mounts: list[tuple[str, str]] = []
    try:
        text = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return mounts
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if sep and len(fields) >= 5 and right.split():
            point = fields[4].replace("\\040", " ")
            mounts.append((point, right.split()[0]))
    return mounts


def on_memory(path: Path) -> bool:
    """Whether ``path`` is on a tmpfs (the longest mount point that contains it)."""
    target = str(path.resolve())
    best, kind = "", ""
    for point, fstype in _mount_types():
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fstype
    return kind in _MEMORY_FS


def memory_root() -> Path:
    """This process's private folder on memory-backed storage (made if needed)."""
    candidates = [os.environ.get("XDG_RUNTIME_DIR", ""), "/run", "/dev/shm"]
    tried: list[str] = []
    for base in filter(None, candidates):
        folder = Path(base)
        if not folder.is_dir() or not os.access(folder, os.W_OK) or not on_memory(folder):
            tried.append(base)
            continue
        root = folder / f"gitorch-{os.getuid()}"
        try:
            root.mkdir(mode=0o700, exist_ok=True)
            info = os.lstat(root)
        except OSError as exc:
            raise ReplicaStartFailed(f"cannot make {root} for secret files: {exc}") from exc
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise ReplicaStartFailed(
                f"{root} is not a folder of this user: refusing to put secret files there"
            )
        if stat.S_IMODE(info.st_mode) != 0o700:
            os.chmod(root, 0o700)
        return root
    raise ReplicaStartFailed(
        "secret files need memory-backed storage (tmpfs), and none of "
        f"{', '.join(tried) or 'the usual places'} is a writable tmpfs"
    )


def write_files(replica: str, files: Mapping[str, bytes], mode: int) -> Path:
    """Write ``files`` into the replica's own folder (replacing it); the folder."""
    folder = memory_root() / replica
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o700)
    for name, data in files.items():
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.chmod(folder / name, mode)  # whatever the umask took away
    return folder


def _roots() -> list[Path]:
    bases = [os.environ.get("XDG_RUNTIME_DIR", ""), "/run", "/dev/shm"]
    return [Path(base) / f"gitorch-{os.getuid()}" for base in bases if base]


def remove_files(replica: str) -> None:
    """Remove the replica's secret files (nothing when it had none)."""
    for root in _roots():
        shutil.rmtree(root / replica, ignore_errors=True)


def sweep(cluster: str, keep: set[str]) -> int:
    """Remove the secret folders of ``cluster``'s replicas that exist no more (removed
    outside gitorch, or a daemon killed between writing the files and starting the
    replica); ``keep``: the names of every replica the runtimes list. The count."""
    removed = 0
    for root in _roots():
        try:
            entries = list(os.scandir(root))
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith(f"{cluster}-") and entry.name not in keep:
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
    return removed
