"""`gitorch validate` as users run it: a subprocess on real git repositories."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import (
    REPO_ROOT,
    SERVICE,
    cli_env,
    commit,
    gitorch,
    init_repo,
)
from ctrl_c_helpers import ctrl_c_reaches_it


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repo whose HEAD holds two valid services under deploy/."""
    path = init_repo(tmp_path / "repo")
    commit(
        path,
        {
            "deploy/web.yaml": SERVICE.format(name="web", replicas=2),
            "deploy/api.yaml": SERVICE.format(name="api", replicas=1),
            "README.md": "not a manifest\n",
        },
        "two services",
    )
    return path


def test_valid_repo_exits_0(tmp_path: Path, repo: Path) -> None:
    done = gitorch(tmp_path, "validate", "--repo", str(repo), "--path", "deploy")
    assert done.returncode == 0, done.stderr
    assert "valid: 2 Services, 0 Nodes, 0 Volumes in 2 files" in done.stdout
    assert done.stderr == ""


def test_invalid_repo_exits_1_with_diagnostics_on_stdout(tmp_path: Path, repo: Path) -> None:
    commit(repo, {"deploy/web.yaml": SERVICE.format(name="web", replicas="-1")}, "break web")
    commit(repo, {"deploy/api.yaml": SERVICE.format(name="api", replicas="many")}, "break api")
    done = gitorch(tmp_path, "validate", "--repo", str(repo), "--path", "deploy")
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "deploy/api.yaml:7:13: spec.replicas: must be an integer, not a string",
        "deploy/web.yaml:7:13: spec.replicas: must be at least 0 (got -1)",
    ]
    # The summary goes to stderr, so stdout holds diagnostics only.
    assert "2 problems in 2 files" in done.stderr
    assert "Traceback" not in done.stderr


def test_json_output_is_one_json_document(tmp_path: Path, repo: Path) -> None:
    done = gitorch(
        tmp_path, "validate", "--repo", str(repo), "--path", "deploy", "--format", "json"
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["valid"] is True
    assert report["diagnostics"] == []
    assert report["objects"] == {"Service": 2, "Node": 0, "Volume": 0}
    assert len(report["revision"]) == 40

    commit(repo, {"deploy/web.yaml": SERVICE.format(name="web", replicas="-1")})
    done = gitorch(
        tmp_path, "validate", "--repo", str(repo), "--path", "deploy", "--format", "json"
    )
    assert done.returncode == 1
    report = json.loads(done.stdout)  # stdout holds the JSON and nothing else
    assert report["valid"] is False
    assert report["diagnostics"] == [
        {
            "path": "deploy/web.yaml",
            "line": 7,
            "column": 13,
            "field": "spec.replicas",
            "message": "must be at least 0 (got -1)",
        }
    ]


def test_ref_reads_an_older_commit(tmp_path: Path, repo: Path) -> None:
    good = commit(repo, {"deploy/web.yaml": SERVICE.format(name="web", replicas=3)})
    commit(repo, {"deploy/web.yaml": SERVICE.format(name="web", replicas="-1")}, "break")
    head = gitorch(tmp_path, "validate", "--repo", str(repo), "--path", "deploy")
    assert head.returncode == 1
    old = gitorch(tmp_path, "validate", "--repo", str(repo), "--path", "deploy", "--ref", good)
    assert old.returncode == 0, old.stdout + old.stderr
    assert good[:12] in old.stdout
    short = gitorch(
        tmp_path, "validate", "--repo", str(repo), "--path", "deploy", "--ref", "HEAD~1"
    )
    assert short.returncode == 0


def commit_of(repo: Path) -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"],  # noqa: S607
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_worktree_sees_an_uncommitted_edit(tmp_path: Path, repo: Path) -> None:
    (repo / "deploy" / "web.yaml").write_text(SERVICE.format(name="web", replicas="-5"))
    committed = gitorch(tmp_path, "validate", "--repo", str(repo), "--path", "deploy")
    assert committed.returncode == 0, committed.stdout
    # The commit was read, and the note says the edit was not.
    assert committed.stderr == (
        "note: uncommitted changes to 1 manifest file(s) are not read (deploy/web.yaml): "
        "this reads the commit " + commit_of(repo)[:7] + "; --worktree reads the working tree\n"
    )
    edited = gitorch(tmp_path, "validate", "--repo", str(repo), "--path", "deploy", "--worktree")
    assert edited.returncode == 1
    assert edited.stdout.splitlines() == [
        "deploy/web.yaml:7:13: spec.replicas: must be at least 0 (got -5)"
    ]
    assert "note:" not in edited.stderr
    older = gitorch(tmp_path, "validate", "--repo", str(repo), "--path", "deploy", "--ref", "HEAD")
    assert older.returncode == 0 and older.stderr == "", older.stderr  # a ref asked for


def test_missing_path_is_one_clear_error(tmp_path: Path, repo: Path) -> None:
    done = gitorch(tmp_path, "validate", "--repo", str(repo), "--path", "nowhere")
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error:") and "nowhere" in lines[0]
    assert "Traceback" not in done.stderr


def test_missing_repo_is_one_clear_error(tmp_path: Path) -> None:
    done = gitorch(tmp_path, "validate", "--repo", str(tmp_path / "absent"))
    assert done.returncode == 1
    assert done.stderr.startswith("error:") and "Traceback" not in done.stderr


def test_help_shows_an_example(tmp_path: Path) -> None:
    done = gitorch(tmp_path, "validate", "--help")
    assert done.returncode == 0
    assert "example:" in done.stdout
    assert "gitorch validate --path examples/repo" in done.stdout
    for option in ("--repo", "--ref", "--path", "--worktree", "--format", "--watch"):
        assert option in done.stdout


def test_example_repo_is_valid_through_the_cli(tmp_path: Path) -> None:
    done = gitorch(
        tmp_path, "validate", "--repo", str(REPO_ROOT), "--path", "examples/repo", "--worktree"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "valid: 4 Services, 0 Nodes, 1 Volume" in done.stdout


# ---------------------------------------------------------------- --watch


class Watcher:
    """A running `gitorch validate --watch`, its stdout read line by line off-thread."""

    def __init__(self, tmp_path: Path, repo: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gitorch", "validate", "--watch", "--repo", str(repo)],
            cwd=REPO_ROOT,
            env=cli_env(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            preexec_fn=ctrl_c_reaches_it,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert self.process.stdout is not None
        threading.Thread(target=self._pump, args=(self.process.stdout,), daemon=True).start()

    def _pump(self, stream: Iterator[str]) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 10.0) -> str:
        """The first new stdout line containing ``text``; fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no line with {text!r} within {timeout}s; saw {self.seen}")
            try:
                line = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.process.poll() is not None:
                    pytest.fail(f"watch exited with {self.process.returncode}; saw {self.seen}")
                continue
            self.seen.append(line)
            if text in line:
                return line

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                return self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                # Stuck: SIGQUIT makes gitorch print every thread's stack (stack_dump),
                # so the failure says where instead of only that it hung.
                self.process.send_signal(signal.SIGQUIT)
                time.sleep(1.0)
                self.process.kill()
                self.process.wait()
                assert self.process.stderr is not None
                pytest.fail(f"watch ignored Ctrl-C for 10 s:\n{self.process.stderr.read()}")
        return self.process.returncode


@pytest.fixture
def watcher(tmp_path: Path, repo: Path) -> Iterator[Watcher]:
    running = Watcher(tmp_path, repo)
    try:
        yield running
    finally:
        running.stop()
        for stream in (running.process.stdout, running.process.stderr):
            if stream is not None:
                stream.close()


def test_watch_reports_each_commit(repo: Path, watcher: Watcher) -> None:
    watcher.wait_for("valid: 2 Services")
    commit(repo, {"deploy/web.yaml": SERVICE.format(name="web", replicas="-1")}, "break")
    line = watcher.wait_for("spec.replicas")
    assert line == "deploy/web.yaml:7:13: spec.replicas: must be at least 0 (got -1)"
    commit(repo, {"deploy/web.yaml": SERVICE.format(name="web", replicas=4)}, "fix")
    watcher.wait_for("valid: 2 Services")
    code = watcher.stop()
    assert watcher.process.stderr is not None
    stderr = watcher.process.stderr.read()
    # Stopped by Ctrl-C: exits with the last verdict (valid), no traceback.
    assert code == 0, stderr
    assert "Traceback" not in stderr and "watching" in stderr


def test_watch_needs_a_local_checkout(tmp_path: Path) -> None:
    done = gitorch(
        tmp_path, "validate", "--watch", "--repo", "https://git.invalid/shop.git", timeout=30
    )
    assert done.returncode == 1
    assert done.stderr.startswith("error:") and "Traceback" not in done.stderr


def test_sigquit_prints_every_threads_stack_and_the_watch_goes_on(
    repo: Path, watcher: Watcher
) -> None:
    watcher.wait_for("valid: 2 Services")
    watcher.process.send_signal(signal.SIGQUIT)
    time.sleep(0.5)
    assert watcher.process.poll() is None  # a dump, not an exit
    commit(repo, {"deploy/web.yaml": SERVICE.format(name="web", replicas=5)}, "more")
    watcher.wait_for("valid: 2 Services")
    assert watcher.stop() == 0
    assert watcher.process.stderr is not None
    stderr = watcher.process.stderr.read()
    assert "Current thread" in stderr or "Thread 0x" in stderr, stderr
    assert "gitorch/commands/validate.py" in stderr, stderr
