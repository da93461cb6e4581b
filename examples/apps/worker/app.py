"""worker: background jobs, with an HTTP server only for health and version.

A loop does fake work every ``WORK_INTERVAL_MS`` (default 1000) and logs one line per job;
with ``DATA_DIR`` set it also appends that line to ``$DATA_DIR/jobs.log`` (a journal that
outlives the process, e.g. on a gitorch Volume).
``/healthz`` also fails when the loop has stalled (no job finished for three intervals
plus a second), so a liveness probe can replace a stuck worker. On SIGTERM the HTTP server
stops first, then the loop finishes its current job and the process exits 0.

Run: ``PORT=8082 VERSION=1 python3 examples/apps/worker/app.py``
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from pathlib import Path

# Plain script, shared module next to it (see web/app.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.server import AppSpec, Settings, SettingsError, log, main  # noqa: E402


class Worker:
    """The fake job loop; thread-safe counters read by the HTTP side."""

    def __init__(self, app: str, interval_s: float, journal: Path | None = None) -> None:
        self.app = app
        self.interval_s = interval_s
        self.journal = journal
        self.jobs_done = 0
        self.last_beat = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-loop")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the loop to stop after the current job and wait for it."""
        self._stop.set()
        self._thread.join()
        log(self.app, f"worker loop stopped after {self.jobs_done} jobs")

    def healthy(self) -> bool:
        return time.monotonic() - self.last_beat < 3 * self.interval_s + 1.0

    def _run(self) -> None:
        while not self._stop.is_set():
            digest = self._job(self.jobs_done + 1)
            self.jobs_done += 1
            self.last_beat = time.monotonic()
            line = f"job {self.jobs_done} done ({digest[:12]})"
            log(self.app, line)
            self._record(line)
            # wait() instead of sleep(): a stop request ends the pause at once.
            self._stop.wait(self.interval_s)

    def _record(self, line: str) -> None:
        if self.journal is None:
            return
        try:
            with self.journal.open("a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime())} {line}\n")
        except OSError as exc:
            # The job itself succeeded; a full or read-only disk is reported, not fatal.
            log(self.app, f"cannot write {self.journal}: {exc}")

    @staticmethod
    def _job(n: int) -> str:
        # "Work": a few thousand hashes, enough to show up in cpu metrics, not more.
        data = str(n).encode()
        for _ in range(2000):
            data = hashlib.sha256(data).digest()
        return data.hex()


def build(settings: Settings) -> AppSpec:
    """worker = the shared server, a stall-aware health check and the job loop."""
    raw = os.environ.get("WORK_INTERVAL_MS", "1000").strip() or "1000"
    if not raw.isdigit() or int(raw) == 0:
        raise SettingsError(f"WORK_INTERVAL_MS={raw!r} must be a positive whole number")
    data_dir = os.environ.get("DATA_DIR", "").strip()
    journal = Path(data_dir) / "jobs.log" if data_dir else None
    worker = Worker(settings.app, int(raw) / 1000, journal)
    worker.start()
    return AppSpec(
        settings=settings,
        healthy=worker.healthy,
        status_line=lambda: f"jobs_done={worker.jobs_done}",
        on_stop=worker.stop,
    )


if __name__ == "__main__":
    main("worker", build)
