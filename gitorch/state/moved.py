"""A state directory whose state ``gitorch state migrate`` copied to etcd.

The directory keeps its ``state.db`` (nothing is deleted) and goes on as the etcd daemons'
``--runtime-dir``, but that database is a stale copy from then on: a daemon started on it
(an old systemd unit, a forgotten ``--state``) would reconcile the same replicas as the
etcd daemons from old records, two controllers fighting. So the migration leaves a marker
naming where the state went, and opening the directory's store refuses while it is there;
migrating the state back into the directory sets the stale database aside and removes it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from gitorch.errors import StateError
from gitorch.state.layout import STATE_DB

#: The marker's file name inside the state directory.
MOVED_FILE = "moved-to.json"


class StateMoved(StateError):
    """The directory's state was migrated elsewhere (its database is a stale copy)."""


def moved_to(state_dir: Path) -> str | None:
    """Where ``state_dir``'s state went (an ``etcd://`` location), or None (not moved, or
    a marker that cannot be read: :func:`is_moved` tells)."""
    try:
        data = json.loads((state_dir / MOVED_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    location = data.get("location") if isinstance(data, dict) else None
    return location if isinstance(location, str) and location else None


def is_moved(state_dir: Path) -> bool:
    """Whether ``state_dir`` carries the marker (readable or not)."""
    return (state_dir / MOVED_FILE).exists()


def refuse_if_moved(state_dir: Path) -> None:
    """:class:`StateMoved`, naming the new location, when ``state_dir``'s state moved."""
    if not is_moved(state_dir):
        return
    where = moved_to(state_dir) or "another store (its marker cannot be read)"
    raise StateMoved(
        f"the state in {state_dir} was moved to {where} by `gitorch state migrate`: "
        f"its {STATE_DB} is a stale copy",
        detail=(
            f"use --state {where} --runtime-dir {state_dir}",
            f"to move it back: gitorch state migrate --from {where} --to {state_dir}",
        ),
    )


def mark_moved(state_dir: Path, location: str) -> None:
    """Leave the marker: ``state_dir``'s state now lives at ``location``."""
    body = json.dumps({"location": location, "at": time.time()}) + "\n"
    fresh = state_dir / f".{MOVED_FILE}.{os.getpid()}"
    fresh.write_text(body, encoding="utf-8")
    os.chmod(fresh, 0o600)
    os.replace(fresh, state_dir / MOVED_FILE)


def set_aside_stale(state_dir: Path) -> Path | None:
    """Before the state moves back in: the stale database (and SQLite's files beside it)
    into a folder of its own, kept, and the marker removed. Returns that folder (None when
    the directory was not marked)."""
    if not is_moved(state_dir):
        return None
    aside = state_dir / time.strftime("stale-state-%Y%m%dT%H%M%SZ", time.gmtime())
    aside.mkdir(mode=0o700)
    for name in (STATE_DB, f"{STATE_DB}-wal", f"{STATE_DB}-shm"):
        if (state_dir / name).exists():
            os.replace(state_dir / name, aside / name)
    (state_dir / MOVED_FILE).unlink()
    return aside
