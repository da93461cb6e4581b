"""Pure rules shared by every source: which names are manifests, and safe folder paths."""

from __future__ import annotations

import hashlib
import posixpath

from gitorch.errors import PathNotFound
from gitorch.sources.base import MANIFEST_SUFFIXES

#: How many symlinks in a row are followed before giving up (loops, or mischief).
MAX_SYMLINK_HOPS = 8


def normalize_folder(path: str) -> str:
    """``path`` as a clean POSIX folder path relative to the repo root ("" for the root).

    ``./deploy/``, ``deploy//prod`` and ``/deploy`` are accepted; a path that leaves the
    repository (``../x``) raises :class:`PathNotFound`.
    """
    text = path.replace("\\", "/").strip()
    text = text.lstrip("/")
    if text in ("", "."):
        return ""
    clean = posixpath.normpath(text)
    if clean == "." or clean == "":
        return ""
    if clean == ".." or clean.startswith("../"):
        raise PathNotFound(f"--path {path!r} leaves the repository")
    return clean


def is_hidden(name: str) -> bool:
    """Names starting with "." are skipped, files and folders alike."""
    return name.startswith(".")


def is_manifest_name(name: str) -> bool:
    """True for a visible file name ending in one of :data:`MANIFEST_SUFFIXES`."""
    return not is_hidden(name) and name.endswith(MANIFEST_SUFFIXES)


def join(folder: str, name: str) -> str:
    """``folder/name`` without a leading "/" for the root folder."""
    return f"{folder}/{name}" if folder else name


def symlink_target_in_repo(link_path: str, target: str) -> str | None:
    """Where a symlink at ``link_path`` (repo-relative) points, repo-relative, or ``None``
    when it points outside the repository (absolute, or climbing above the root).

    The result is computed lexically; callers look it up in the commit's tree, which never
    passes through another symlink on the way, so ``..`` cannot be used to escape.
    """
    if target.startswith("/") or not target:
        return None
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(link_path), target))
    if joined == ".." or joined.startswith("../"):
        return None
    return "" if joined == "." else joined


def git_blob_id(data: bytes) -> str:
    """The id git would give ``data`` as a blob: sha1 of ``blob <size>\\0`` + data.

    Used for working-tree files so that unchanged content has the same id as in a commit
    (parsed results cached by blob id are reused across both).
    """
    digest = hashlib.sha1(usedforsecurity=False)
    digest.update(b"blob %d\0" % len(data))
    digest.update(data)
    return digest.hexdigest()
