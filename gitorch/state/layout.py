"""Where the state directory's files live, and how the directory is chosen.

::

    DIR/
    ├── state.db        the SQLite database (WAL mode)
    ├── state.db-wal    SQLite's write-ahead log (managed by SQLite)
    ├── state.db-shm    SQLite's shared-memory index of the WAL (managed by SQLite)
    ├── daemon.lock     flock()ed by the one daemon that owns DIR; holds its pid
    ├── daemon.json     what the running daemon last reported about itself (its last error)
    ├── secret-digest.key  the key of secret values' digests (gitorch.secrets)
    └── moved-to.json  after `gitorch state migrate` to etcd: where the state went (the
                       database is then a stale copy, and opening it refuses: state/moved.py)

DIR is 0700 and every file in it 0600 (the daemon and apply run with umask 077): secret
values are never in it (only digests), but plain environment variables are.
"""

from __future__ import annotations

import os
from pathlib import Path

#: File name of the database inside the state directory.
STATE_DB = "state.db"

#: File name of the daemon lock inside the state directory.
LOCK_FILE = "daemon.lock"

#: File name of the running daemon's report about itself inside the state directory.
DAEMON_FILE = "daemon.json"

#: Environment variable naming the state directory when ``--state`` is not given.
STATE_ENV = "GITORCH_STATE"

#: State directory used when neither ``--state`` nor ``$GITORCH_STATE`` is given.
DEFAULT_STATE_DIR = ".gitorch"


def resolve_state_dir(option: str | os.PathLike[str] | None = None) -> Path:
    """The state directory: ``--state`` if given, else ``$GITORCH_STATE``, else ``./.gitorch``."""
    if option is not None and str(option) != "":
        return Path(option)
    from_env = os.environ.get(STATE_ENV, "")
    return Path(from_env) if from_env else Path(DEFAULT_STATE_DIR)


def ensure_state_dir(state_dir: Path) -> Path:
    """Create ``state_dir`` if needed, private (0700): rollout records hold full service
    specs, plain environment variables included. One made by an older gitorch (or by
    hand) with access for others is made private too."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.stat(state_dir).st_mode & 0o077:
        os.chmod(state_dir, 0o700)
    return state_dir


def private_file(path: Path, *, create: bool) -> None:
    """Make ``path`` private (0600): created so when missing (``create``), its access for
    others taken away when it exists. SQLite gives the WAL and shared-memory files the
    database's mode when it makes them, so a private database makes them private."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError:  # missing, a folder, unreadable: SQLite says what is wrong with it
        return
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
