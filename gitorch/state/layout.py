"""Where the state directory's files live, and how the directory is chosen.

::

    DIR/
    ├── state.db        the SQLite database (WAL mode)
    ├── state.db-wal    SQLite's write-ahead log (managed by SQLite)
    ├── state.db-shm    SQLite's shared-memory index of the WAL (managed by SQLite)
    ├── daemon.lock     flock()ed by the one daemon that owns DIR; holds its pid
    └── daemon.json     what the running daemon last reported about itself (its last error)
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
    """Create ``state_dir`` if needed; new directories are private (0700) because rollout
    records hold full service specs, environment variables included."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return state_dir
