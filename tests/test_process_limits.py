"""A gitorch process raises its open-files soft limit at start (gitorch/process_limits.py),
checked in child processes started under real limits (``prlimit``)."""

from __future__ import annotations

import subprocess
import sys

CHECK = (
    "import resource, sys; from gitorch.process_limits import raise_open_files_limit as r; "
    "now = r(*map(int, sys.argv[1:])); print(now, *resource.getrlimit(resource.RLIMIT_NOFILE))"
)


def limits_after_start(soft: int, hard: int, *wanted: int) -> list[int]:
    """The limit the function says, then soft and hard as the kernel has them. (The
    hard limits stay below this machine's own: a container may forbid raising it.)"""
    out = subprocess.run(
        ["prlimit", f"--nofile={soft}:{hard}", sys.executable, "-c", CHECK, *map(str, wanted)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [int(word) for word in out.split()]


def test_the_soft_limit_is_raised_to_what_the_hard_one_allows() -> None:
    assert limits_after_start(1024, 8192) == [8192, 8192, 8192]  # a shell's usual 1,024


def test_the_raise_is_capped_and_never_lowers() -> None:
    assert limits_after_start(1024, 8192, 4096) == [4096, 4096, 8192]  # replicas inherit it
    assert limits_after_start(6000, 8192, 4096) == [6000, 6000, 8192]
