"""A one-shot command (validate, plan) ends its process without tearing the heap down
(`common.exit_at_once`), yet as Python would: exit handlers run, output is flushed, the
exit code is the command's, and a thread still running is waited for."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cli_helpers import REPO_ROOT, cli_env

#: The process's own command, as `python -m gitorch` runs it, with an exit handler and
#: (when asked) a non-daemon thread that writes after the command returned.
PROBE = """
import atexit, sys, threading, time
import gitorch.commands.common as common
atexit.register(lambda: print("ATEXIT ran", flush=True))
if sys.argv.pop(1) == "thread":
    # The thread writes once the command has returned (however long it took), so the
    # process's end must wait for it.
    returned, real_exit = threading.Event(), common.exit_at_once
    def exit_at_once(code):
        returned.set()
        real_exit(code)
    common.exit_at_once = exit_at_once
    def late():
        returned.wait()
        time.sleep(0.2)
        print("THREAD finished", flush=True)
    threading.Thread(target=late).start()
sys.argv[0] = "gitorch"
from gitorch.cli import main
sys.exit(main())
"""


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603
        [sys.executable, "-c", PROBE, *args],
        cwd=REPO_ROOT,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_validate_exits_with_its_code_after_the_exit_handlers(tmp_path: Path) -> None:
    done = _run(tmp_path, "plain", "validate", "--path", "examples/repo")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("✓ valid: ")
    assert done.stdout.splitlines()[-1] == "ATEXIT ran"


def test_a_plan_with_changes_exits_2_and_writes_all_of_its_json(tmp_path: Path) -> None:
    done = _run(
        tmp_path,
        "plain",
        "plan",
        "--runtime",
        "process",
        "--format",
        "json",
        "--path",
        "examples/repo",
    )
    assert done.returncode == 2, done.stderr
    body, _, rest = done.stdout.rpartition("}\n")
    assert body.startswith("{") and rest == "ATEXIT ran\n"


def test_a_running_thread_is_waited_for(tmp_path: Path) -> None:
    done = _run(tmp_path, "thread", "validate", "--path", "examples/repo")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-2:] == ["THREAD finished", "ATEXIT ran"]
