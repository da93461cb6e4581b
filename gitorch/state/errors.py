"""Finer errors of the state store, all under :class:`gitorch.errors.StateError`."""

from __future__ import annotations

from gitorch.errors import StateError


class PortUnavailable(StateError):
    """The requested host port is already allocated on that node, or the range is full."""


class StateReadOnly(StateError):
    """A write was attempted on a store opened read-only (``status``, ``history``)."""


class RecordNotFound(StateError):
    """An update named a record (revision id, node) that the store does not hold."""
