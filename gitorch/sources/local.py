"""Sources for a local checkout: its commits, or its working tree as it is.

:class:`LocalRepoSource` reads commits from the checkout's own object store, exactly like
the bare cache of a remote (no clone, the working tree is never looked at or changed).
:class:`WorktreeSource` reads the files on disk, uncommitted edits included, for trying
changes before a commit (the daemon never applies these).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
from collections.abc import Iterator
from pathlib import Path

import git

from gitorch.errors import Diagnostic, PathNotFound, SourceError
from gitorch.sources._commits import CommitStore
from gitorch.sources._gitcmd import run
from gitorch.sources._paths import git_blob_id, is_hidden, is_manifest_name, join, normalize_folder
from gitorch.sources.base import MAX_FILE_BYTES, CommitInfo, FetchResult, ManifestFile, Snapshot
from gitorch.sources.verify import SignaturePolicy, Verification

#: The revision a working-tree snapshot carries.
WORKTREE_REVISION = "worktree"


def open_repo(path: Path) -> git.Repo:
    """The git repository whose top level (or bare directory) is ``path``.

    A folder *inside* a checkout is refused with a hint, so ``--path`` keeps meaning
    "relative to the repository root".
    """
    try:
        repo = git.Repo(path, search_parent_directories=True)
    except git.NoSuchPathError as exc:
        raise SourceError(f"{path}: no such directory") from exc
    except git.InvalidGitRepositoryError as exc:
        raise SourceError(
            f"{path} is not a git repository (use --worktree to read a plain folder)"
        ) from exc
    top = Path(repo.working_tree_dir or repo.git_dir).resolve()
    if top != path.resolve():
        repo.close()
        raise SourceError(f"{path} is inside the git repository {top}; use --repo {top}")
    return repo


class LocalRepoSource:
    """A :class:`~gitorch.sources.base.Source` reading the commits of a local repository."""

    def __init__(self, path: Path | str, *, max_file_bytes: int = MAX_FILE_BYTES) -> None:
        self.path = Path(path)
        self.repo = open_repo(self.path)
        self._store = CommitStore(self.repo, what=str(self.path), max_file_bytes=max_file_bytes)

    def __repr__(self) -> str:
        return f"LocalRepoSource({str(self.path)!r})"

    def fetch(self) -> FetchResult:
        """Nothing to fetch: the checkout is its own source."""
        return FetchResult(updated=False, old_sha=None, new_sha=None)

    def resolve(self, ref: str | None = None) -> str:
        """Full sha of ``ref`` (default: the checkout's HEAD)."""
        return self._store.resolve(ref)

    def snapshot(self, ref: str | None = None, path: str = "") -> Snapshot:
        """Manifests under ``path`` at ``ref``, read from the commit's tree."""
        return self._store.snapshot(ref, path)

    def changed_paths(self, since: str, until: str | None = None) -> list[str]:
        """Paths changed between two commits."""
        return self._store.changed_paths(since, until)

    def history(self, ref: str | None = None, limit: int = 50) -> Iterator[CommitInfo]:
        """Commits reachable from ``ref``, newest first."""
        return self._store.history(ref, limit)

    def uncommitted(self, path: str = "") -> list[str]:
        """Manifest files under ``path`` whose working copy differs from HEAD's (edited,
        staged, added, deleted or untracked and not ignored): what a reading of the
        commit leaves out. Empty for a bare repository."""
        if self.repo.bare:
            return []
        folder = normalize_folder(path)
        out = run(
            self.repo,
            ["status", "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames", "--"]
            + ([folder] if folder else []),
            what=str(self.path),
            # No refresh of the index: a reading never takes the lock a user's git needs.
            env={"GIT_OPTIONAL_LOCKS": "0"},
        )
        # Each entry: two status letters, a space, the path (relative to the top level).
        paths = (entry[3:] for entry in out.split("\x00") if len(entry) > 3)
        return sorted(p for p in paths if is_manifest_name(posixpath.basename(p)))

    def verify(self, ref: str, policy: SignaturePolicy) -> Verification:
        """The signed-commit policy's verdict on the commit ``ref`` names."""
        return self._store.verify(ref, policy)

    def close(self) -> None:
        """Stop gitpython's helper processes."""
        with contextlib.suppress(Exception):
            self.repo.close()


class WorktreeSource:
    """A :class:`~gitorch.sources.base.Source` reading the files of a folder as they are.

    The folder may be a git checkout (then :meth:`history` and :meth:`changed_paths` use
    its commits) or a plain folder. Symlinks are followed only when their real path stays
    inside the folder.
    """

    def __init__(self, path: Path | str, *, max_file_bytes: int = MAX_FILE_BYTES) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise SourceError(f"{self.path}: no such directory")
        self.root = Path(os.path.realpath(self.path))
        self.max_file_bytes = max_file_bytes
        self._store: CommitStore | None = None
        try:
            repo = git.Repo(self.path)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            repo = None
        if repo is not None and not repo.bare:
            self._store = CommitStore(repo, what=str(self.path), max_file_bytes=max_file_bytes)

    def __repr__(self) -> str:
        return f"WorktreeSource({str(self.path)!r})"

    def _check_ref(self, ref: str | None) -> None:
        if ref not in (None, WORKTREE_REVISION):
            raise SourceError(
                f"{self.path}: the working tree is read as it is; a ref ({ref!r}) cannot be given"
            )

    def fetch(self) -> FetchResult:
        """Nothing to fetch."""
        return FetchResult(updated=False, old_sha=None, new_sha=None)

    def resolve(self, ref: str | None = None) -> str:
        """Always ``"worktree"``."""
        self._check_ref(ref)
        return WORKTREE_REVISION

    def snapshot(self, ref: str | None = None, path: str = "") -> Snapshot:
        """Manifests under ``path`` as they are on disk now."""
        self._check_ref(ref)
        folder = normalize_folder(path)
        start = self.root / folder if folder else self.root
        real = os.path.realpath(start)
        if not _inside(real, str(self.root)) or not os.path.isdir(real) or os.path.islink(start):
            raise PathNotFound(f"{self.path}: {folder!r} is not a folder")
        reader = _FolderReader(str(self.root), self.max_file_bytes)
        reader.walk(str(start), folder)
        return Snapshot(
            revision=WORKTREE_REVISION,
            commit=None,
            root_path=folder,
            files=tuple(sorted(reader.files, key=lambda f: f.path)),
            problems=tuple(sorted(reader.problems)),
            notes=tuple(reader.notes),
        )

    def changed_paths(self, since: str, until: str | None = None) -> list[str]:
        """Paths that differ between commit ``since`` and the working tree (tracked files
        that changed plus untracked, non-ignored files). Needs a git checkout."""
        self._check_ref(until)
        store = self._require_store()
        sha = store.resolve(since)
        changed = run(
            store.repo, ["diff", "--name-only", "-z", "--no-renames", sha, "--"], what=store.what
        )
        untracked = run(
            store.repo, ["ls-files", "-z", "--others", "--exclude-standard"], what=store.what
        )
        return sorted({p for p in (changed + "\x00" + untracked).split("\x00") if p})

    def history(self, ref: str | None = None, limit: int = 50) -> Iterator[CommitInfo]:
        """The checkout's commits from HEAD (or ``ref``); nothing for a plain folder."""
        if self._store is None:
            return iter(())
        return self._store.history(None if ref == WORKTREE_REVISION else ref, limit)

    def verify(self, ref: str, policy: SignaturePolicy) -> Verification:
        """Uncommitted files carry no signature: refused, always."""
        raise SourceError(
            "--verify-commits checks commits; the working tree (--worktree) has no signature"
        )

    def _require_store(self) -> CommitStore:
        if self._store is None:
            raise SourceError(f"{self.path} is not a git checkout; it has no commits to compare")
        return self._store

    def close(self) -> None:
        """Stop gitpython's helper processes, if any."""
        if self._store is not None:
            with contextlib.suppress(Exception):
                self._store.repo.close()


def _inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


class _FolderReader:
    """Collects manifest files, problems and notes from a folder on disk."""

    def __init__(self, root: str, max_file_bytes: int) -> None:
        self.root = root
        self.max_file_bytes = max_file_bytes
        self.files: list[ManifestFile] = []
        self.problems: list[Diagnostic] = []
        self.notes: list[str] = []

    def _problem(self, rel: str, message: str) -> None:
        self.problems.append(Diagnostic(rel, 1, 1, message))

    def walk(self, directory: str, rel_dir: str) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            self._problem(rel_dir or ".", f"folder cannot be read: {exc.strerror}")
            return
        for entry in entries:
            if is_hidden(entry.name):
                continue
            rel = join(rel_dir, entry.name)
            if entry.is_symlink():
                self._symlink(entry.path, rel, entry.name)
            elif entry.is_dir(follow_symlinks=False):
                if os.path.lexists(os.path.join(entry.path, ".git")):
                    # A submodule or nested repository: skipped, as in a commit's tree.
                    self.notes.append(f"{rel}: nested git repository skipped")
                    continue
                self.walk(entry.path, rel)
            elif is_manifest_name(entry.name):
                self._read(entry.path, rel)

    def _symlink(self, link: str, rel: str, name: str) -> None:
        real = os.path.realpath(link)
        inside = _inside(real, self.root)
        if not is_manifest_name(name):
            if inside and os.path.isdir(real):
                self.notes.append(f"{rel}: symlinked folder not followed")
            return
        if not inside:
            self._problem(rel, "symlink leads outside the repository; not read")
        elif not os.path.exists(real):
            self._problem(rel, "symlink to a file that does not exist")
        elif os.path.isdir(real):
            self._problem(rel, "symlink points to a folder, not a file")
        else:
            self._read(real, rel)

    def _read(self, path: str, rel: str) -> None:
        # O_NOFOLLOW: a file swapped for a symlink after the checks above is not followed;
        # O_NONBLOCK: a FIFO named *.yaml cannot hang the reader.
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            self._problem(rel, f"file cannot be read: {exc.strerror}")
            return
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                self._problem(rel, "not a regular file; not read")
                return
            if info.st_size > self.max_file_bytes:
                self._problem(
                    rel,
                    f"file is {info.st_size} bytes, over the {self.max_file_bytes}-byte limit; not read",
                )
                return
            # Read one byte past the limit: a file growing while it is read is caught too.
            data = handle.read(self.max_file_bytes + 1)
        if len(data) > self.max_file_bytes:
            self._problem(rel, f"file is over the {self.max_file_bytes}-byte limit; not read")
            return
        self.files.append(ManifestFile(path=rel, blob_id=git_blob_id(data), data=data))
