"""What a running daemon writes about itself in its state directory (``daemon.json``):
its pid, its API's URL, what it tracks, its last error.

Light on purpose (the standard library only): ``gitorch status`` reads it to ask the
daemon, and loads none of the store's modules on that path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: The file's name; equal to :data:`gitorch.state.layout.DAEMON_FILE` (a test holds them
#: equal), repeated here because importing anything of ``gitorch.state`` loads the store.
DAEMON_FILE = "daemon.json"


def read_daemon_file(state_dir: str | Path) -> dict[str, Any] | None:
    """What a running daemon last wrote about itself (None when absent or unreadable)."""
    try:
        data = json.loads((Path(state_dir) / DAEMON_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
