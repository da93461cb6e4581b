"""Finer errors of the state store, all under :class:`gitorch.errors.StateError`."""

from __future__ import annotations

from gitorch.errors import StateError


class PortUnavailable(StateError):
    """The requested host port is already allocated on that node, or the range is full."""


class StateReadOnly(StateError):
    """A write was attempted on a store opened read-only (``status``, ``history``)."""


class RecordNotFound(StateError):
    """An update named a record (revision id, node) that the store does not hold."""


class StateUnavailable(StateError):
    """The store cannot be reached now (etcd: no member answers, or none has a quorum).

    Transient: a daemon stops acting until it is back, and resumes by itself."""


class StateConflict(StateError):
    """A transaction read something another writer changed before it committed (etcd's
    optimistic concurrency): nothing was written; the next pass decides again."""


class NotLeader(StateError):
    """A write (or an action on the world) by a daemon that does not lead (any more).

    ``leader`` names the daemon that leads, when one does."""

    def __init__(
        self,
        message: str,
        *,
        leader: str | None = None,
        url: str | None = None,
        detail: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message, detail=detail)
        self.leader = leader
        self.url = url
