"""A remote Git repository, read through a local bare cache.

The cache is cloned once, into ``cache_dir/<sha256(url)[:16]>.git``, with mirror-style
refspecs (``+refs/heads/*:refs/heads/*`` and ``+refs/tags/*:refs/tags/*``), so every branch
and tag of the remote is a local ref of the same name. :meth:`GitSource.fetch` updates it
with ``--prune`` (a branch or tag deleted on the remote disappears) and points the cache's
``HEAD`` at the remote's default branch. Reads never touch the network: when the remote is
down, the cache keeps answering.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import git

from gitorch.errors import EmptyRepository, RefNotFound, SourceError, SourceUnreachable
from gitorch.sources._commits import CommitStore
from gitorch.sources._gitcmd import GitFailed, remote_env, run
from gitorch.sources._urls import redact_url
from gitorch.sources.base import MAX_FILE_BYTES, CommitInfo, FetchResult, Snapshot
from gitorch.sources.verify import SignaturePolicy, Verification

_REFSPECS = ("+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")


def cache_name(url: str) -> str:
    """The cache folder's name for ``url``: stable, and free of anything secret in it."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:16] + ".git"


class GitSource:
    """A :class:`~gitorch.sources.base.Source` for a Git URL.

    ``ref`` is the ref :meth:`fetch` reports on (default: the remote's HEAD branch);
    ``timeout`` bounds each network command (the process is killed after it).
    """

    def __init__(
        self,
        url: str,
        cache_dir: Path | str,
        *,
        timeout: float = 30.0,
        ref: str | None = None,
        max_file_bytes: int = MAX_FILE_BYTES,
    ) -> None:
        self.url = url
        self.display_url = redact_url(url)
        self.cache_path = Path(cache_dir) / cache_name(url)
        self.timeout = timeout
        self.tracked_ref = ref
        self.max_file_bytes = max_file_bytes
        self._lock = threading.RLock()
        self._store: CommitStore | None = None

    def __repr__(self) -> str:
        return f"GitSource({self.display_url!r}, cache={str(self.cache_path)!r})"

    # -- the cache ----------------------------------------------------------------------

    def _open_cache(self) -> CommitStore | None:
        if self._store is not None:
            return self._store
        if not (self.cache_path / "HEAD").is_file():
            return None
        try:
            repo = git.Repo(self.cache_path)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
            raise SourceError(
                f"{self.display_url}: the cache {self.cache_path} is damaged; delete it"
            ) from exc
        self._store = CommitStore(repo, what=self.display_url, max_file_bytes=self.max_file_bytes)
        return self._store

    def _clone(self) -> CommitStore:
        """Make the cache: init a bare repo aside, fetch everything, then move it in place
        (so a failed or interrupted clone never leaves a half cache behind)."""
        # 0700: the cache's config holds the URL as given, credentials included.
        self.cache_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".clone-", dir=self.cache_path.parent))
        try:
            repo = git.Repo.init(tmp, bare=True)
            try:
                run(repo, ["config", "remote.origin.url", self.url], what=self.display_url)
                for spec in _REFSPECS:
                    run(
                        repo,
                        ["config", "--add", "remote.origin.fetch", spec],
                        what=self.display_url,
                    )
                # Automatic gc (after enough fetches) runs inside the fetch, not as a
                # detached background process outliving it; it only prunes objects
                # unreachable for two weeks, so no reader loses a commit it just resolved.
                run(repo, ["config", "gc.autoDetach", "false"], what=self.display_url)
                self._update(repo)
            except GitFailed as exc:
                raise SourceUnreachable(f"{self.display_url}: cannot clone: {exc.line}") from exc
            finally:
                repo.close()
            try:
                os.rename(tmp, self.cache_path)
            except OSError:
                # Another process made the cache first: use theirs.
                if not (self.cache_path / "HEAD").is_file():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        store = self._open_cache()
        assert store is not None
        return store

    def _update(self, repo: git.Repo) -> None:
        """Ask the remote for its default branch, then fetch and prune. Raises GitFailed."""
        env = remote_env()
        heads = run(
            repo,
            ["ls-remote", "--symref", "origin", "HEAD"],
            what=self.display_url,
            timeout=self.timeout,
            env=env,
        )
        run(
            repo,
            ["fetch", "--prune", "--quiet", "origin"],
            what=self.display_url,
            timeout=self.timeout,
            env=env,
        )
        self._set_head(repo, heads)

    def _set_head(self, repo: git.Repo, ls_remote: str) -> None:
        """Point the cache's HEAD where the remote's HEAD points."""
        for line in ls_remote.splitlines():
            if line.startswith("ref: ") and line.endswith("\tHEAD"):
                branch = line[len("ref: ") : -len("\tHEAD")]
                if branch.startswith("refs/heads/"):
                    run(repo, ["symbolic-ref", "HEAD", branch], what=self.display_url)
                return
        for line in ls_remote.splitlines():
            sha, _, name = line.partition("\t")
            if name == "HEAD" and len(sha) >= 40:
                # A detached remote HEAD: keep its commit.
                run(repo, ["update-ref", "--no-deref", "HEAD", sha], what=self.display_url)
                return

    def _require_store(self) -> CommitStore:
        with self._lock:
            store = self._open_cache()
            return store if store is not None else self._clone()

    def _tracked_sha(self, store: CommitStore) -> str | None:
        try:
            return store.resolve(self.tracked_ref)
        except (RefNotFound, EmptyRepository):
            return None

    # -- Source -------------------------------------------------------------------------

    def fetch(self) -> FetchResult:
        """Update the cache from the remote. Never raises for an unreachable remote once a
        cache exists (``reachable=False`` and ``error`` say why); raises
        :class:`SourceUnreachable` when there is no cache and the first clone fails."""
        with self._lock:
            store = self._open_cache()
            if store is None:
                store = self._clone()
                new = self._tracked_sha(store)
                return FetchResult(
                    updated=new is not None,
                    old_sha=None,
                    new_sha=new,
                    notes=(f"cloned {self.display_url} into {self.cache_path}",),
                )
            old = self._tracked_sha(store)
            try:
                self._update(store.repo)
            except GitFailed as exc:
                return FetchResult(
                    updated=False,
                    old_sha=old,
                    new_sha=old,
                    reachable=False,
                    error=str(exc),
                    notes=("the remote did not answer; the cached copy is used",),
                )
            new = self._tracked_sha(store)
            notes: list[str] = []
            rewritten = False
            if old is not None and new is None:
                notes.append(f"{self.tracked_ref or 'the default branch'} no longer exists")
            if old is not None and new is not None and old != new:
                rewritten = not store.is_ancestor(old, new)
                if rewritten:
                    notes.append(f"history rewritten: {new[:12]} does not descend from {old[:12]}")
            return FetchResult(
                updated=old != new,
                old_sha=old,
                new_sha=new,
                history_rewritten=rewritten,
                notes=tuple(notes),
            )

    def resolve(self, ref: str | None = None) -> str:
        """Full sha of ``ref`` in the cache (default: the remote's HEAD branch)."""
        return self._require_store().resolve(ref)

    def snapshot(self, ref: str | None = None, path: str = "") -> Snapshot:
        """Manifests under ``path`` at ``ref``, read from the cached commit's tree."""
        return self._require_store().snapshot(ref, path)

    def changed_paths(self, since: str, until: str | None = None) -> list[str]:
        """Paths changed between two commits of the cache."""
        return self._require_store().changed_paths(since, until)

    def history(self, ref: str | None = None, limit: int = 50) -> Iterator[CommitInfo]:
        """Commits reachable from ``ref``, newest first."""
        return self._require_store().history(ref, limit)

    def verify(self, ref: str, policy: SignaturePolicy) -> Verification:
        """The signed-commit policy's verdict on the cached commit ``ref`` names."""
        return self._require_store().verify(ref, policy)

    def close(self) -> None:
        """Stop gitpython's helper processes (the cache stays on disk)."""
        with self._lock:
            if self._store is not None:
                with contextlib.suppress(Exception):
                    self._store.repo.close()
                self._store = None
