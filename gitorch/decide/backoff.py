"""Crash-loop back-off: how long a slot waits before its crashed replica is recreated.

A *slot* is one ``(service, replica number)``. Each time the reconciler recreates the
replica of a slot after it exited (or failed its liveness/startup probe), it records a
restart; the next recreation of that slot waits exponentially longer, so a replica that
crashes on start does not hammer the node (Kubernetes' ``CrashLoopBackOff``).

The defaults are user-visible (``gitorch status`` shows ``back-off 8s, 4 restarts``):

=============  =======  ============================================================
constant       default  meaning
=============  =======  ============================================================
``base``       1 s      wait before the slot is recreated after its first restart
``factor``     2        each further restart multiplies the wait by this
``cap``        60 s     the wait never grows beyond this
``reset_after`` 60 s    a replica that stayed up this long resets the restart count
=============  =======  ============================================================

So the waits after 1, 2, 3, 4, 5, 6, 7... restarts are 1, 2, 4, 8, 16, 32, 60, 60... s:
``delay(n) = min(cap, base * factor ** (n - 1))`` and ``delay(0) = 0`` (a slot that never
restarted is created at once).

Everything here is pure: the caller owns the clock and stores :class:`BackoffState`
records (frozen, replaced on every change).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Protocol

__all__ = [
    "DEFAULT_CRASH_LOOP",
    "LISTEN_RETRY_CAP",
    "listen_retry",
    "BackoffState",
    "Restarts",
    "CrashLoop",
    "describe",
    "ready_at",
    "record_restart",
    "remaining",
    "reset_if_stable",
]


@dataclass(frozen=True)
class CrashLoop:
    """The back-off policy (see the module docstring for what each constant means)."""

    base: float = 1.0
    factor: float = 2.0
    cap: float = 60.0
    reset_after: float = 60.0

    def __post_init__(self) -> None:
        # A policy that shrinks, or never waits, would defeat its purpose: refuse it early.
        if not (math.isfinite(self.base) and self.base > 0):
            raise ValueError(f"base must be a positive number of seconds, not {self.base!r}")
        if not (math.isfinite(self.factor) and self.factor >= 1):
            raise ValueError(f"factor must be at least 1, not {self.factor!r}")
        if not (math.isfinite(self.cap) and self.cap >= self.base):
            raise ValueError(f"cap ({self.cap!r}) must be finite and at least base ({self.base})")
        if not (math.isfinite(self.reset_after) and self.reset_after > 0):
            raise ValueError(f"reset_after must be a positive number, not {self.reset_after!r}")

    def next_delay(self, restarts: int) -> float:
        """Seconds to wait before recreating a slot that has restarted ``restarts`` times."""
        if restarts <= 0:
            return 0.0
        try:
            delay = self.base * self.factor ** (restarts - 1)
        except OverflowError:  # factor ** huge: far beyond any cap
            return self.cap
        return min(self.cap, delay)


#: The policy gitorch uses unless configured otherwise.
DEFAULT_CRASH_LOOP = CrashLoop()

#: Seconds between tries, at most, to listen on a service's port that was taken: a bind
#: is cheap, and a port freed should be served within seconds, not after a crash loop's
#: minute (the chaos soak's port-taken fault waited 8 s for the third try).
LISTEN_RETRY_CAP = 4.0


def listen_retry(policy: CrashLoop = DEFAULT_CRASH_LOOP) -> CrashLoop:
    """The back-off of a service whose port could not be bound: ``policy`` capped at
    :data:`LISTEN_RETRY_CAP` (never below its base)."""
    return replace(policy, cap=max(policy.base, min(policy.cap, LISTEN_RETRY_CAP)))


@dataclass(frozen=True)
class BackoffState:
    """Restart history of one slot.

    ``last_restart_at`` is the unix time the last restart was recorded (``None``: never);
    ``last_exit_code`` what the replica exited with then (``None``: unknown, or it was
    replaced for failing its probes while still running).
    """

    restarts: int = 0
    last_restart_at: float | None = None
    last_exit_code: int | None = None


class Restarts(Protocol):
    """What the back-off arithmetic reads of a slot's history (a :class:`BackoffState`,
    or the store's ``BackoffRecord``)."""

    @property
    def restarts(self) -> int: ...

    @property
    def last_restart_at(self) -> float | None: ...


def record_restart(state: BackoffState, now: float, exit_code: int | None) -> BackoffState:
    """The state after the slot's replica was found dead at ``now`` and will be recreated."""
    return BackoffState(restarts=state.restarts + 1, last_restart_at=now, last_exit_code=exit_code)


def ready_at(state: Restarts, policy: CrashLoop = DEFAULT_CRASH_LOOP) -> float:
    """Unix time from which the slot may be recreated (``-inf``: at once)."""
    if state.last_restart_at is None or state.restarts <= 0:
        return -math.inf
    return state.last_restart_at + policy.next_delay(state.restarts)


def remaining(state: Restarts, now: float, policy: CrashLoop = DEFAULT_CRASH_LOOP) -> float:
    """Seconds still to wait at ``now`` (0 when the slot may be recreated)."""
    return max(0.0, ready_at(state, policy) - now)


def reset_if_stable(
    state: BackoffState,
    running_since: float | None,
    now: float,
    policy: CrashLoop = DEFAULT_CRASH_LOOP,
) -> BackoffState:
    """Forget the restarts of a slot whose replica has been up ``reset_after`` seconds.

    ``running_since`` is when the current replica started (``None``: it is not running).
    A replica that started *before* the last recorded restart is not the one that was
    recreated (stale observation), so it resets nothing. The last exit code is kept: it
    is history, not part of the count.
    """
    if state.restarts == 0 or running_since is None:
        return state
    if state.last_restart_at is not None and running_since < state.last_restart_at:
        return state
    if now - running_since < policy.reset_after:
        return state
    return replace(state, restarts=0, last_restart_at=None)


def describe(
    state: Restarts,
    now: float,
    policy: CrashLoop = DEFAULT_CRASH_LOOP,
    what: str = "restart",
) -> str:
    """Status text: ``"back-off 8s, 4 restarts"`` while waiting, ``"4 restarts"`` after
    (``what="failed start"``: ``"back-off 8s, 4 failed starts"``, the slot's replica never
    ran).

    The figure is the slot's whole wait (stable from one status call to the next, like
    Kubernetes' "back-off 40s restarting failed container"); :func:`remaining` gives what
    is left of it.
    """
    count = f"{state.restarts} {what}{'' if state.restarts == 1 else 's'}"
    if remaining(state, now, policy) <= 0:
        return count
    return f"back-off {policy.next_delay(state.restarts):g}s, {count}"
