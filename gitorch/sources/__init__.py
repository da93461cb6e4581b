"""Sources of desired state: Git remotes (through a bare cache), local checkouts, folders.

Every source implements :class:`~gitorch.sources.base.Source`; :func:`open_source` picks
one for ``--repo``. :mod:`gitorch.sources.watch` (imported on demand, it needs watchdog)
tells the daemon when a local checkout changes. Only this package imports ``git``.
"""

from gitorch.sources.base import (
    MANIFEST_SUFFIXES,
    MAX_FILE_BYTES,
    CommitInfo,
    FetchResult,
    ManifestFile,
    Snapshot,
    Source,
)
from gitorch.sources.factory import open_source
from gitorch.sources.local import WORKTREE_REVISION, LocalRepoSource, WorktreeSource
from gitorch.sources.remote import GitSource

__all__ = [
    "MANIFEST_SUFFIXES",
    "MAX_FILE_BYTES",
    "WORKTREE_REVISION",
    "CommitInfo",
    "FetchResult",
    "GitSource",
    "LocalRepoSource",
    "ManifestFile",
    "Snapshot",
    "Source",
    "WorktreeSource",
    "open_source",
]
