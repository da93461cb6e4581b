"""Helpers shared by the manifest tests: files from a folder, and a real git repo from one."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from gitorch.manifests import LoadResult, ManifestLoader
from gitorch.sources.base import MANIFEST_SUFFIXES, ManifestFile

CORPUS = Path(__file__).parent / "corpus"
REPO_ROOT = Path(__file__).resolve().parents[2]

# A fixed identity and dates so commits never depend on the machine's git config.
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.com",
    "GIT_COMMITTER_NAME": "Test Author",
    "GIT_COMMITTER_EMAIL": "author@example.com",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def manifest_files(folder: Path) -> list[ManifestFile]:
    """Every manifest file under ``folder``, named relative to it (as a source would)."""
    files = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or path.suffix not in MANIFEST_SUFFIXES:
            continue
        if any(part.startswith(".") for part in rel.parts):
            continue
        data = path.read_bytes()
        files.append(ManifestFile(rel.as_posix(), hashlib.sha1(data).hexdigest(), data))  # noqa: S324
    return files


def make_file(path: str, text: str | bytes) -> ManifestFile:
    """One in-memory manifest file."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return ManifestFile(path, hashlib.sha1(data).hexdigest(), data)  # noqa: S324


def load(files: list[ManifestFile], revision: str = "test") -> LoadResult:
    """Load with a fresh loader (no cache shared between tests)."""
    return ManifestLoader().load(files, revision=revision)


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` with a fixed identity; return stdout."""
    env = {**os.environ, **GIT_ENV}
    done = subprocess.run(
        ["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


def git_repo_from(folder: Path, repo: Path) -> Path:
    """A real git repository at ``repo`` with ``folder``'s files in one commit."""
    shutil.copytree(folder, repo, ignore=shutil.ignore_patterns("expected.txt"))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "manifests")
    return repo
