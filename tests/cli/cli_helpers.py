"""Helpers for the CLI tests: real git repositories and `python3 -m gitorch` runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.com",
    "GIT_COMMITTER_NAME": "Test Author",
    "GIT_COMMITTER_EMAIL": "author@example.com",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}

SERVICE = """\
apiVersion: gitorch.dev/v1
kind: Service
metadata:
  name: {name}
spec:
  image: shop/{name}:1.0.0
  replicas: {replicas}
"""


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args],
        cwd=repo,
        env={**os.environ, **GIT_ENV},
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def init_repo(repo: Path) -> Path:
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    return repo


def commit(repo: Path, files: dict[str, str], message: str = "change") -> str:
    """Write ``files`` (relative path -> text), commit them, return the new sha."""
    for name, text in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def cli_env(tmp_path: Path) -> dict[str, str]:
    """A plain environment: no colour, no debug tracebacks, state kept in tmp_path."""
    env = {k: v for k, v in os.environ.items() if k not in ("GITORCH_DEBUG", "FORCE_COLOR")}
    env.update({"NO_COLOR": "1", "GITORCH_STATE": str(tmp_path / "state")})
    return env


def gitorch(tmp_path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gitorch", *args],
        cwd=REPO_ROOT,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
