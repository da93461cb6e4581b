"""How late this process's threads were woken during a stretch of a test.

Tests that check a schedule (a probe every 0.2 s, a back-off of 1 s) measure the machine's
scheduler as much as the code when CI shares two cores with other work. A
:class:`StallMeter` runs a thread that sleeps in short ticks and records how much longer
than asked each sleep took: the worst oversleep is how late any timer of this process
could have fired in that stretch, so a test can allow exactly that much on top of its
bound instead of a generous constant that would hide a real defect on a quiet machine.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType

TICK_SECONDS = 0.01


class StallMeter:
    """A context manager: ``worst`` is the longest oversleep (seconds) seen inside it."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stall-meter", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            before = time.monotonic()
            time.sleep(TICK_SECONDS)
            self.worst = max(self.worst, time.monotonic() - before - TICK_SECONDS)

    def __enter__(self) -> StallMeter:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
