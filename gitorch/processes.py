"""Whether a process runs: one answer for the proxy's HAProxy master, a daemon's lease
(state/etcd/election.py) and a daemon's stand-in (apply/standin.py)."""

from __future__ import annotations

import os


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed and not reaped yet, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
    except OSError:
        return False
