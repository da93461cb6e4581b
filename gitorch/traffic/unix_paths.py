"""Unix socket paths that fit: a state directory deep in a file system must not stop its
data plane from starting.

A unix socket's path is limited: 107 bytes by the kernel, 97 by HAProxy (its master CLI
refuses a longer one and the master exits at start). The data planes keep their sockets
in the state directory when the path fits, and otherwise in a private directory under
``/tmp`` named after that path (the same name every time, so a restarted daemon finds the
running data plane's sockets again): ``/tmp/gitorch-<uid>-<digest of the path>/``.
"""

from __future__ import annotations

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
    directory for ``path``'s folder (made 0700 if missing). :class:`ConfigError` when that
    directory exists but is not this user's alone (another user could take the socket)."""
    absolute = Path(os.path.abspath(path))
    if len(os.fsencode(absolute)) <= limit:
        return path
    digest = hashlib.sha256(os.fsencode(absolute.parent)).hexdigest()[:16]
    folder = SHORT_ROOT / f"gitorch-{os.getuid()}-{digest}"
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot make {folder} for the socket {path}: {exc.strerror}") from exc
    found = folder.lstat()
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid() or found.st_mode & 0o077:
        raise ConfigError(
            f"{folder} (where the socket {path} goes: its path is over {limit} bytes) is not "
            "a private directory of this user; remove it, or use a shorter state directory"
        )
    return folder / absolute.name
