"""counter: a stateful app that counts its starts in its volume and serves the count.

Its data folder is ``DATA_DIR``, else ``VOLUME_DATA``: gitorch gives every replica
``VOLUME_<NAME>`` for each volume it mounts (in a container the mountPath, on the process
driver the volume's directory), so one manifest serves both drivers.

* On start (a *writer*, the default) it adds one to ``starts`` in the folder (written
  atomically) and appends a line to ``starts.log``: the count survives the replica being
  killed, replaced by a new version, or the daemon restarting, only if the volume does.
* While it runs it beats in ``writer.lock`` every 100 ms (``<instance> <beat>``). When it
  sees another instance's beat *advance* there, two writers run at once, and it appends a
  line to ``conflicts.log`` (a dead writer's beat stays still: a replacement is no
  conflict). A ReadWriteOnce volume must never have one.
* ``COUNTER_MODE=reader``: serves the count and writes nothing (for readOnly mounts).
* ``LINGER_MS``: on SIGTERM a writer keeps beating this long before it exits (a database
  flushing on its way out), so an orchestrator that starts the next writer before the old
  one has *exited* gets caught.

``GET /``: ``app=counter version=1 instance=... starts=3 conflicts=0 writable=yes``;
``GET /count``: the count alone. ``/healthz`` fails when the folder cannot be read (or, for
a writer, written).

Run: ``PORT=8083 DATA_DIR=/tmp/counter python3 examples/apps/counter/app.py``
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from pathlib import Path

# Plain script, shared module next to it (see web/app.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.server import AppSpec, Reply, Settings, SettingsError, log, main  # noqa: E402

BEAT_SECONDS = 0.1


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def read_count(folder: Path) -> int:
    try:
        return int((folder / "starts").read_text(encoding="utf-8").strip() or 0)
    except (OSError, ValueError):
        return 0


def conflicts(folder: Path) -> int:
    try:
        return len((folder / "conflicts.log").read_text(encoding="utf-8").splitlines())
    except OSError:
        return 0


def writable(folder: Path) -> bool:
    probe = folder / f".writable-{os.getpid()}"
    try:
        probe.write_text("", encoding="utf-8")
        probe.unlink()
    except OSError:
        return False
    return True


class Counter:
    """The start count and the writer's beat (see the module docstring)."""

    def __init__(
        self, app: str, version: str, folder: Path, writer: bool, linger_s: float = 0.0
    ) -> None:
        self.app = app
        self.linger_s = linger_s
        self.folder = folder
        self.writer = writer
        self.instance = f"{socket.gethostname()}:{os.getpid()}"
        self.version = version
        self._stop = threading.Event()
        self._beats = threading.Thread(target=self._beat, name="counter-beat", daemon=True)
        self.beating = True

    def start(self) -> None:
        if not self.writer:
            log(self.app, f"reader of {self.folder}: {read_count(self.folder)} starts so far")
            return
        count = read_count(self.folder) + 1
        _write_atomically(self.folder / "starts", f"{count}\n")
        with (self.folder / "starts.log").open("a", encoding="utf-8") as journal:
            journal.write(f"{count} version={self.version} instance={self.instance}\n")
        log(self.app, f"start number {count} (data in {self.folder})")
        self._beats.start()

    def stop(self) -> None:
        if self._beats.is_alive() and self.linger_s:
            log(self.app, f"still writing for {self.linger_s:g}s before exiting")
            self._stop.wait(self.linger_s)
        self._stop.set()
        if self._beats.is_alive():
            self._beats.join(2)

    def _beat(self) -> None:
        lock = self.folder / "writer.lock"
        seen: dict[str, str] = {}  # another instance -> the beat it had last time
        reported: set[str] = set()
        beat = 0
        while not self._stop.is_set():
            try:
                other, _, their_beat = lock.read_text(encoding="utf-8").strip().partition(" ")
            except OSError:
                other, their_beat = "", ""
            if other and other != self.instance:
                if other in seen and seen[other] != their_beat and other not in reported:
                    reported.add(other)  # one line per overlapping writer
                    line = f"{self.instance} saw {other} writing at the same time\n"
                    with (self.folder / "conflicts.log").open("a", encoding="utf-8") as f:
                        f.write(line)
                    log(self.app, line.strip())
                seen[other] = their_beat
            beat += 1
            try:
                _write_atomically(lock, f"{self.instance} {beat}\n")
                self.beating = True
            except OSError as exc:
                self.beating = False
                log(self.app, f"cannot write {lock}: {exc}")
            self._stop.wait(BEAT_SECONDS)

    def healthy(self) -> bool:
        return self.folder.is_dir() and (self.beating or not self.writer)

    def status_line(self) -> str:
        yes = "yes" if writable(self.folder) else "no"
        return (
            f"starts={read_count(self.folder)} conflicts={conflicts(self.folder)} writable={yes}"
        )


def build(settings: Settings) -> AppSpec:
    """counter = the shared server, the start count and the writer's beat."""
    raw = os.environ.get("DATA_DIR", "").strip() or os.environ.get("VOLUME_DATA", "").strip()
    if not raw:
        raise SettingsError("DATA_DIR (or VOLUME_DATA, from a volume mount named data) is not set")
    folder = Path(raw)
    if not folder.is_dir():
        raise SettingsError(f"the data folder {folder} does not exist")
    mode = os.environ.get("COUNTER_MODE", "writer").strip() or "writer"
    if mode not in ("writer", "reader"):
        raise SettingsError(f"COUNTER_MODE={mode!r} is not one of: writer, reader")
    linger = os.environ.get("LINGER_MS", "0").strip() or "0"
    if not linger.isdigit():
        raise SettingsError(f"LINGER_MS={linger!r} is not a whole number")
    counter = Counter(
        settings.app, settings.version, folder, mode == "writer", int(linger) / 1000
    )
    counter.start()
    return AppSpec(
        settings=settings,
        routes={"/count": lambda: Reply(200, f"{read_count(folder)}\n")},
        healthy=counter.healthy,
        status_line=counter.status_line,
        on_stop=counter.stop,
    )


if __name__ == "__main__":
    main("counter", build)
