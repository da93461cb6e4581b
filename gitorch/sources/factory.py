"""Turning ``--repo URL_OR_PATH`` (and ``--worktree``) into the right source."""

from __future__ import annotations

from pathlib import Path

from gitorch.errors import SourceError
from gitorch.sources._urls import is_remote_url, redact_url
from gitorch.sources.base import Source
from gitorch.sources.local import LocalRepoSource, WorktreeSource
from gitorch.sources.remote import GitSource


def open_source(
    repo: str,
    *,
    cache_root: Path,
    worktree: bool = False,
    ref: str | None = None,
    timeout: float = 30.0,
) -> Source:
    """The source for ``repo``: a Git URL (``https://``, ``ssh://``, ``file://``,
    ``git@host:path``) gives a :class:`GitSource` cached under ``cache_root``; an existing
    local directory gives a :class:`LocalRepoSource` (its commits) or, with ``worktree``, a
    :class:`WorktreeSource` (its files as they are).

    ``ref`` only tells a :class:`GitSource` which ref :meth:`~GitSource.fetch` reports on.
    Nothing touches the network here: a remote is cloned on first use.
    """
    if not repo:
        raise SourceError("--repo is empty; give a Git URL or a local checkout")
    local = Path(repo).expanduser()
    if is_remote_url(repo) and not local.exists():
        if worktree:
            raise SourceError(f"--worktree reads a local checkout, not a URL ({redact_url(repo)})")
        return GitSource(repo, cache_root, timeout=timeout, ref=ref)
    if local.is_dir():
        return WorktreeSource(local) if worktree else LocalRepoSource(local)
    if local.exists():
        raise SourceError(f"--repo {repo}: not a directory")
    raise SourceError(f"--repo {redact_url(repo)}: no such directory, and not a Git URL")
