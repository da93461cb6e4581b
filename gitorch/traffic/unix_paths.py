"""Unix socket paths that fit: a state directory deep in a file system must not stop its
data plane from starting.

A unix socket's path is limited: 107 bytes by the kernel, 97 by HAProxy (its master CLI
refuses a longer one and the master exits at start). The data planes keep their sockets
in the state directory when the path fits, and otherwise in a private directory under
``/tmp`` named after that path (the same name every time, so a restarted daemon finds the
running data plane's sockets again): ``/tmp/gitorch-<uid>-<digest of the path>/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from pathlib import Path

from gitorch.errors import ConfigError

#: Longest path HAProxy takes for its master and admin sockets.
HAPROXY_MAX = 97
#: Longest path the kernel takes (``sun_path`` is 108 bytes with its terminating NUL).
KERNEL_MAX = 107
#: Where sockets whose path is too long go (not ``$TMPDIR``: every process that looks for
#: the socket must find the same place, whatever its environment).
SHORT_ROOT = Path("/tmp")


def fitting(path: Path, limit: int = KERNEL_MAX) -> Path:
    """``path`` when it fits ``limit``; else the same file name in this user's private
    directory for ``path``'s folder. Only computed: :func:`make_room` makes that directory
    where a socket is bound, :func:`release` removes it with the socket. :class:`ConfigError`
    when the directory exists but is not this user's alone (another user could have put a
    socket of theirs there)."""
    absolute = Path(os.path.abspath(path))
    if len(os.fsencode(absolute)) <= limit:
        return path
    digest = hashlib.sha256(os.fsencode(absolute.parent)).hexdigest()[:16]
    folder = SHORT_ROOT / f"{_prefix()}{digest}"
    if folder.exists() or folder.is_symlink():
        _check_private(folder, path, limit)
    return folder / absolute.name


def make_room(socket_path: Path) -> None:
    """Make the private directory of a socket that :func:`fitting` moved (0700), before
    the socket is bound there; nothing for a socket in its own place."""
    folder = socket_path.parent
    if not _is_short_folder(folder):
        return
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(
            f"cannot make {folder} for the socket {socket_path}: {exc.strerror}"
        ) from exc
    _check_private(folder, socket_path, None)


def release(socket_path: Path) -> None:
    """Remove the private directory of a socket that :func:`fitting` moved, once the
    socket is gone and nothing else is in it (a successor's socket keeps it)."""
    folder = socket_path.parent
    if _is_short_folder(folder):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _prefix() -> str:
    return f"gitorch-{os.getuid()}-"


def _is_short_folder(folder: Path) -> bool:
    return folder.parent == SHORT_ROOT and folder.name.startswith(_prefix())


def _check_private(folder: Path, socket_path: Path, limit: int | None) -> None:
    found = folder.lstat()
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid() or found.st_mode & 0o077:
        why = f": its path is over {limit} bytes" if limit is not None else ""
        raise ConfigError(
            f"{folder} (where the socket {socket_path} goes{why}) is not a private "
            "directory of this user; remove it, or use a shorter state directory"
        )
