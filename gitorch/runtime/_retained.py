"""The output and facts of removed replicas, kept for ``gitorch logs --previous``.

Both drivers keep them under their state directory (``<state>/nodes/<node>/``)::

    retained/<cluster>/<service>/<removed at, ns>-<instance name>/facts.json
    retained/<cluster>/<service>/<removed at, ns>-<instance name>/output.log

``facts.json`` holds a :class:`~gitorch.runtime.base.RetainedLog` without its output (never
the env); ``output.log`` the last ``OUTPUT_BYTES`` of the replica's output. An entry is
written to a hidden folder and renamed into place, so a reader sees whole entries only.
Only the newest ``KEEP_PER_SERVICE`` entries of a service are kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

from gitorch.runtime.base import RetainedLog

RETAINED_DIR = "retained"
KEEP_PER_SERVICE = 5
OUTPUT_BYTES = 64 * 1024
_FACTS = "facts.json"
_OUTPUT = "output.log"
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}$")
# Entries of one store are pruned under one lock: parallel removes of one service must
# not both delete the same old entry, nor a new one.
_LOCK = threading.Lock()


def tail_bytes(data: bytes, limit: int = OUTPUT_BYTES) -> tuple[str, bool]:
    """The end of ``data`` as text, at most ``limit`` bytes, starting on a whole line
    when cut; and whether it was cut."""
    if len(data) <= limit:
        return data.decode("utf-8", "replace"), False
    cut = data[-limit:]
    newline = cut.find(b"\n")
    if 0 <= newline < len(cut) - 1:
        cut = cut[newline + 1 :]
    return cut.decode("utf-8", "replace"), True


def tail_file(path: Path, limit: int = OUTPUT_BYTES) -> tuple[str, bool]:
    """:func:`tail_bytes` of a file's end ("", False when it does not exist)."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - limit - 1))
            data = fh.read()
    except FileNotFoundError:
        return "", False
    text, cut = tail_bytes(data, limit)
    return text, cut or size > len(data)


class RetainedStore:
    """Reads and writes retained entries under ``<state_dir>/retained``."""

    def __init__(self, state_dir: Path, keep: int = KEEP_PER_SERVICE) -> None:
        self.root = Path(state_dir) / RETAINED_DIR
        self.keep_count = keep

    def _folder(self, cluster: str, service: str) -> Path | None:
        if not (_SAFE.match(cluster) and _SAFE.match(service)):
            return None  # never a path outside the store, whatever the labels say
        return self.root / cluster / service

    def keep(self, cluster: str, entry: RetainedLog) -> None:
        """Store ``entry`` and drop the oldest beyond ``keep_count`` for its service."""
        folder = self._folder(cluster, entry.service)
        if folder is None or not _SAFE.match(entry.name):
            return
        facts = asdict(replace(entry, output=""))
        del facts["output"]
        with _LOCK:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            name = f"{time.time_ns():020d}-{entry.name}"
            tmp = folder / f".{name}"
            tmp.mkdir(mode=0o700)
            (tmp / _OUTPUT).write_text(entry.output, encoding="utf-8")
            (tmp / _FACTS).write_text(json.dumps(facts, sort_keys=True), encoding="utf-8")
            tmp.rename(folder / name)
            for old in self._entries(folder)[self.keep_count :]:
                shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def _entries(folder: Path) -> list[Path]:
        """Whole entries, newest first."""
        try:
            names = [e.name for e in os.scandir(folder) if e.is_dir() and e.name[0] != "."]
        except FileNotFoundError:
            return []
        return [folder / n for n in sorted(names, reverse=True)]

    def list(self, cluster: str, service: str) -> list[RetainedLog]:
        """Entries of ``service``, newest first; unreadable ones are skipped."""
        folder = self._folder(cluster, service)
        if folder is None:
            return []
        entries = []
        for path in self._entries(folder):
            with contextlib.suppress(OSError, ValueError, TypeError):
                facts = json.loads((path / _FACTS).read_text(encoding="utf-8"))
                known = {f for f in RetainedLog.__dataclass_fields__ if f != "output"}
                values = {k: v for k, v in facts.items() if k in known}
                output = (path / _OUTPUT).read_text(encoding="utf-8", errors="replace")
                entries.append(RetainedLog(output=output, **values))
        return entries
