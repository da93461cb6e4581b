"""Durations on the command line (issue 12, item 12: `--interval 30s` was refused): every
time option takes what manifests take (``30s``, ``1m``, ``500ms``, ``1m30s``) or plain
seconds, and says clearly what it expected otherwise."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import REPO_ROOT, cli_env, commit, gitorch, init_repo
from data_plane_helpers import stop_data_plane

from gitorch.cli import build_parser

# (command, option) for every option that takes a time.
TIME_OPTIONS = [
    ("daemon", "--interval"),
    ("daemon", "--resync"),
    ("daemon", "--node-grace"),
    ("apply", "--node-grace"),
    ("apply", "--timeout"),
    ("plan", "--node-grace"),
]

SPELLINGS = {
    "30s": 30.0,
    "1m": 60.0,
    "500ms": 0.5,
    "1m30s": 90.0,
    "1h": 3600.0,
    "2.5s": 2.5,
    "45": 45.0,
    "2.5": 2.5,
}


def dest(option: str) -> str:
    return option.removeprefix("--").replace("-", "_")


@pytest.mark.parametrize(("command", "option"), TIME_OPTIONS)
@pytest.mark.parametrize("text", sorted(SPELLINGS))
def test_every_time_option_reads_durations(command: str, option: str, text: str) -> None:
    args = build_parser(command).parse_args([command, option, text])
    assert getattr(args, dest(option)) == SPELLINGS[text]


@pytest.mark.parametrize(("command", "option"), TIME_OPTIONS)
def test_defaults_are_unchanged(command: str, option: str) -> None:
    defaults = {"--interval": 30.0, "--resync": 2.0, "--node-grace": 30.0, "--timeout": 900.0}
    assert getattr(build_parser(command).parse_args([command]), dest(option)) == defaults[option]


@pytest.mark.parametrize(("command", "option"), TIME_OPTIONS)
@pytest.mark.parametrize("text", ["10x", "-5", "1m30", "s", "", "30 s", "inf", "nan", "1e3"])
def test_bad_durations_are_refused_clearly(
    command: str, option: str, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser(command).parse_args([command, option, text])
    assert exit_.value.code == 1  # gitorch keeps 2 for "plan has changes"
    error = capsys.readouterr().err
    assert f"argument {option}: invalid duration {text!r}" in error
    assert "use 500ms, 30s, 5m, 1h or seconds" in error


@pytest.mark.parametrize(
    ("command", "option"),
    [("daemon", "--interval"), ("daemon", "--resync"), ("apply", "--timeout")],
)
def test_intervals_and_timeouts_must_be_more_than_zero(
    command: str, option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for zero in ("0", "0s", "0ms"):
        with pytest.raises(SystemExit):
            build_parser(command).parse_args([command, option, zero])
        assert f"argument {option}: must be more than zero, not {zero!r}" in capsys.readouterr().err
    assert build_parser("apply").parse_args(["apply", "--node-grace", "0s"]).node_grace == 0.0


def test_the_daemon_starts_with_durations(tmp_path: Path) -> None:
    """The defect as seen: `gitorch daemon --interval 30s` exited with a usage error."""
    repo = init_repo(tmp_path / "repo")
    commit(repo, {"README.md": "no manifests yet\n"})
    log = tmp_path / "daemon.log"
    argv = [sys.executable, "-m", "gitorch", "daemon", "--repo", str(repo)]
    argv += ["--state", str(tmp_path / "state"), "--runtime", "process"]
    argv += ["--listen", "127.0.0.1:0", "--interval", "30s", "--resync", "500ms"]
    argv += ["--node-grace", "1m30s", "--lb-workers", "0"]
    with log.open("wb") as out:
        daemon = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=cli_env(tmp_path),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while "daemon started" not in log.read_text() and time.monotonic() < deadline:
            assert daemon.poll() is None, log.read_text()
            time.sleep(0.1)
        assert "daemon started" in log.read_text(), log.read_text()
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait(5)
        stop_data_plane(tmp_path / "state")  # the proxy outlives the daemon by design
    assert daemon.returncode == 0, log.read_text()


def test_a_bad_duration_is_one_line_and_exit_1(tmp_path: Path) -> None:
    done = gitorch(tmp_path, "daemon", "--interval", "30 seconds")
    assert done.returncode == 1
    assert (
        "gitorch daemon: error: argument --interval: invalid duration '30 seconds'" in done.stderr
    )
    assert "Traceback" not in done.stderr
