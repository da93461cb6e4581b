"""Running git through gitpython, with every failure turned into one clear line.

Only this package imports ``git``; this module is where its exceptions are caught and
translated into the :class:`~gitorch.errors.SourceError` tree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import git

from gitorch.errors import SourceError
from gitorch.sources._urls import redact_text

#: Environment for commands that may talk to a remote: never wait for a human to type a
#: password, fail instead (the daemon has no terminal).
_REMOTE_ENV: dict[str, str] = {"GIT_TERMINAL_PROMPT": "0"}


class GitFailed(SourceError):
    """A git command failed; ``line`` is its most telling stderr line (credentials removed)."""

    def __init__(self, message: str, *, line: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.line = line
        self.timed_out = timed_out


def remote_env() -> Mapping[str, str]:
    """Environment additions for fetch/ls-remote: no prompts, SSH in batch mode."""
    env = dict(_REMOTE_ENV)
    if "GIT_SSH_COMMAND" not in os.environ and "GIT_SSH" not in os.environ:
        env["GIT_SSH_COMMAND"] = "ssh -o BatchMode=yes"
    return env


def stderr_line(stderr: str | bytes | None) -> str:
    """The line of git's stderr worth showing: the first fatal/error line, else the last."""
    if isinstance(stderr, bytes):
        stderr = stderr.decode("utf-8", "replace")
    text = (stderr or "").strip()
    # gitpython wraps captured stderr as "stderr: '...'"; peel that once.
    if text.startswith("stderr: '") and text.endswith("'"):
        text = text[len("stderr: '") : -1]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        for prefix in ("fatal: ", "error: "):
            if ln.startswith(prefix):
                return redact_text(ln[len(prefix) :])
    return redact_text(lines[-1]) if lines else "git failed without a message"


def run(
    repo: git.Repo,
    args: list[str],
    *,
    what: str,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    strip: bool = True,
) -> str:
    """Run ``git ARGS`` in ``repo`` and return stdout; raise :class:`GitFailed` on failure.

    ``what`` names the repository in the message (already redacted by the caller).
    """
    try:
        out = repo.git.execute(
            ["git", *args],
            kill_after_timeout=timeout,
            env=env,
            strip_newline_in_stdout=strip,
        )
    except git.GitCommandError as exc:
        stderr = exc.stderr if isinstance(exc.stderr, str) else str(exc.stderr or "")
        if "Timeout: the command" in stderr:
            raise GitFailed(
                f"{what}: no answer within {timeout:g}s",
                line=f"no answer within {timeout:g}s",
                timed_out=True,
            ) from exc
        line = stderr_line(stderr)
        raise GitFailed(f"{what}: {line}", line=line) from exc
    except git.GitCommandNotFound as exc:  # pragma: no cover - git is a hard requirement
        raise SourceError("the git program was not found; install git") from exc
    return str(out)


def try_run(repo: git.Repo, args: list[str]) -> tuple[int, str]:
    """Run ``git ARGS`` in ``repo`` and return (exit status, stdout) without raising."""
    status, out, _err = repo.git.execute(
        ["git", *args], with_extended_output=True, with_exceptions=False
    )
    return int(status), str(out)
