"""How long the built-in balancer waits, and the per-connection deadline that bounds it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from gitorch.traffic import _http

COOLDOWN = 2.0
#: Idle keep-alive connections kept per backend.
POOL_SIZE = 16
#: Seconds between two checks of the client connections' deadlines (see Deadline).
SWEEP = 0.25
#: Seconds a client connection of a removed route may still take to send its next request
#: head (it is answered, then closed): a request already on its way when the route went
#: is served, and an idle keep-alive connection does not hold the route for long.
RETIRE_GRACE = 1.0
#: Connections accepted per readiness event before other work gets a turn.
ACCEPT_BATCH = 64
#: Bytes a client may send ahead (pipelined) while its request is served, before the
#: proxy stops reading from it.
PIPELINE_LIMIT = _http.MAX_HEAD + _http.REPLAY_LIMIT


@dataclass(frozen=True)
class Timeouts:
    """How long the proxy waits (seconds)."""

    connect: float = 2.0  # connecting to a backend (then the next one is tried)
    response: float = 60.0  # a backend's response head after the request was sent (504)
    client_idle: float = 60.0  # a client's next request head, and its small body
    pool_idle: float = 15.0  # an unused pooled backend connection is closed after this
    apply: float = 30.0  # apply()/close() waiting for the loop thread


class Deadline:
    """How long one client connection's handler may wait in its current step.

    The handler arms it around a wait (``with deadline.limit(seconds): ...``); a sweep
    every :data:`SWEEP` seconds cancels handlers whose deadline passed, and the ``with``
    turns that cancellation into :class:`TimeoutError`, as ``asyncio.timeout`` does. An
    ``asyncio.timeout`` per wait cost the proxy ~15% of its CPU (a timer handle made and
    cancelled for every request head and every response); this costs two attribute
    writes, for timeouts that fire up to :data:`SWEEP` late.
    """

    __slots__ = ("task", "at", "fired", "_seconds")

    def __init__(self, task: asyncio.Task[None]) -> None:
        self.task = task
        self.at = 0.0  # monotonic deadline while armed, else 0
        self.fired = False
        self._seconds = 0.0

    def limit(self, seconds: float) -> Deadline:
        self._seconds = seconds
        return self

    def shorten(self, at: float) -> None:
        """Bring an armed deadline forward to ``at`` (never later than it was)."""
        if self.at:
            self.at = min(self.at, at)

    def __enter__(self) -> Deadline:
        self.at = time.monotonic() + self._seconds
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: object) -> None:
        self.at = 0.0
        if self.fired:
            self.fired = False
            # Our cancel is withdrawn; another one (shutdown) still propagates.
            if self.task.uncancel() == 0 and exc_type is asyncio.CancelledError:
                raise TimeoutError("deadline passed") from None

    def expire_if_due(self, now: float) -> None:
        if self.at and self.at <= now and not self.fired:
            self.fired = True
            self.task.cancel()
