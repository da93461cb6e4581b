"""Manifests: YAML with positions, JSON Schema validation, cross-checks, the typed model.

Entry points: :class:`ManifestLoader` (cached, reports all diagnostics) and
:func:`load_desired_state` (raises :class:`~gitorch.errors.ManifestInvalid`).
"""

from gitorch.manifests.loader import LoadResult, ManifestLoader, load_desired_state
from gitorch.manifests.model import DesiredState, Node, Service, Volume

__all__ = [
    "DesiredState",
    "LoadResult",
    "ManifestLoader",
    "Node",
    "Service",
    "Volume",
    "load_desired_state",
]
