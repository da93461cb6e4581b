"""What every source of desired state hands to the rest of gitorch.

A source turns "a repository at a ref" into an immutable :class:`Snapshot`: the revision,
the commit's metadata, and the bytes of every manifest file under the manifest folder.
Files a source refuses to hand over (too large, a symlink leading outside the repo, ...)
are not silently dropped: they come back as :class:`~gitorch.errors.Diagnostic` entries
in ``Snapshot.problems`` so that ``validate`` reports them with everything else.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from gitorch.errors import Diagnostic
from gitorch.sources.verify import SignaturePolicy, Verification

#: Largest manifest file read, in bytes. Larger files are reported, never read.
MAX_FILE_BYTES = 1024 * 1024

#: Manifest files are those ending in one of these; names starting with "." are skipped.
MANIFEST_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class CommitInfo:
    """Metadata of one commit, as auditors want to read it."""

    sha: str
    author_name: str
    author_email: str
    authored_at: str  # ISO 8601 with offset
    committer_name: str
    committer_email: str
    committed_at: str  # ISO 8601 with offset
    message: str
    signer: str | None = None  # signature key/identity when the commit is signed
    # Added by sources/: git's verdict in words ("good", "bad", "no-public-key", ...;
    # None when unsigned) and the signing key's long id, for signature policies.
    # See gitorch/sources/signatures.py.
    signature_status: str | None = None
    signature_key: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "sha": self.sha,
            "author": f"{self.author_name} <{self.author_email}>",
            "authoredAt": self.authored_at,
            "committer": f"{self.committer_name} <{self.committer_email}>",
            "committedAt": self.committed_at,
            "message": self.message,
            "signer": self.signer,
        }


@dataclass(frozen=True)
class ManifestFile:
    """One manifest file: its path relative to the repo root and its content.

    ``blob_id`` identifies the content (the Git blob sha, or a sha1 of the bytes for a
    working tree), so parsed results can be cached across snapshots.
    """

    path: str
    blob_id: str
    data: bytes


@dataclass(frozen=True)
class Snapshot:
    """The desired state's raw material at one revision."""

    revision: str  # full commit sha, or "worktree" for uncommitted files
    commit: CommitInfo | None
    root_path: str  # the manifest folder inside the repo ("" for the root)
    files: tuple[ManifestFile, ...]
    problems: tuple[Diagnostic, ...] = ()
    # Things skipped on purpose that are not errors (a submodule, a symlinked folder).
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class FetchResult:
    """What a fetch learned about the remote."""

    updated: bool  # the ref moved
    old_sha: str | None
    new_sha: str | None
    history_rewritten: bool = False  # the ref moved to a commit that does not descend from old
    reachable: bool = True  # False: the remote did not answer, the cache was used
    error: str | None = None  # why the remote did not answer
    notes: tuple[str, ...] = field(default_factory=tuple)


class Source(Protocol):
    """A repository of manifests that can be read at any ref."""

    def fetch(self) -> FetchResult:
        """Bring the cache up to date with the remote (no-op for a local checkout)."""
        ...

    def resolve(self, ref: str | None = None) -> str:
        """Return the full commit sha ``ref`` names (default: the repo's HEAD branch)."""
        ...

    def snapshot(self, ref: str | None = None, path: str = "") -> Snapshot:
        """Read every manifest file under ``path`` at ``ref``, straight from the commit."""
        ...

    def changed_paths(self, since: str, until: str | None = None) -> list[str]:
        """Paths changed between two commits (``until`` defaults to the resolved ref)."""
        ...

    def history(self, ref: str | None = None, limit: int = 50) -> Iterator[CommitInfo]:
        """Commits reachable from ``ref``, newest first."""
        ...

    def verify(self, ref: str, policy: SignaturePolicy) -> Verification:
        """Whether the commit ``ref`` names is signed by a key ``policy`` trusts (see
        gitorch/sources/verify.py)."""
        ...
