"""Sources of desired state: Git remotes (through a bare cache), local checkouts, folders.

Every source implements :class:`~gitorch.sources.base.Source`; :func:`open_source` picks
one for ``--repo``. :mod:`gitorch.sources.watch` (imported on demand, it needs watchdog)
tells the daemon when a local checkout changes. Only this package imports ``git``.

Rules every snapshot follows (decisions recorded here so the docs can point at them):

* Commits are read from the object store only (never a checkout): a ref is resolved to one
  sha first and every file comes from that commit's tree, so a commit landing meanwhile
  cannot mix into a snapshot.
* Files ending ``.yaml``/``.yml`` under ``--path`` are read; any file or folder whose name
  starts with "." is skipped. Bytes are handed over undecoded (manifests/ decodes).
* Refused and reported as a ``Diagnostic(path, 1, 1, ...)`` in ``Snapshot.problems``: a
  file over ``MAX_FILE_BYTES`` (size read from the object header before the content), a
  ``*.yaml`` symlink leading outside the *repository root* (absolute, or ``..`` above the
  root), dangling, looping (more than 8 hops) or pointing at a folder. A symlink to a file
  inside the repository is followed, even outside ``--path``; its path is the link's, its
  content and blob id the target's. Symlinked folders and submodules (nested checkouts in
  a working tree) are not entered: they are listed in ``Snapshot.notes``.
* A working-tree snapshot has revision ``"worktree"`` and no commit; its blob ids are
  computed the way git computes blob ids, so unchanged content keeps its id.
* Signatures: see :mod:`gitorch.sources.signatures`.
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
