"""The reading commands as scripts use them (issue 22, items 4-6): output piped to another
program, no $COLUMNS, a state directory that is not there, and the README's commands run
as written from the repository root.

Every command runs as ``python3 -m gitorch`` with stdout and stderr captured (pipes, not a
terminal), as ``gitorch history | grep`` would.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import REPO_ROOT, commit, init_repo
from live_helpers import load_services, record_rollout, service_yaml

from gitorch.state import RevisionResult, StateStore

LONG_AUTHOR = "Alexandra Longname-Smithson <alexandra.longname-smithson@example.com>"
LONG_SIGNER = "alexandra.longname-smithson@example.com (ssh SHA256:0123456789abcdefghij)"
LONG_REASON = "web-frontend-with-a-long-name-2 never became ready within 600s (readiness probe)"
# 63 characters: the longest name a Service may have.
LONG_SERVICE = "a-service-with-the-longest-name-a-service-may-have-63-character"
LONG_NODE = "node-with-a-long-name-in-a-rack-far-away-from-the-first-one-0042"


def piped(
    *args: str, cwd: Path = REPO_ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``gitorch ARGS`` with stdout a pipe and no $COLUMNS: what a script sees."""
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("COLUMNS", "LINES", "GITORCH_DEBUG", "FORCE_COLOR")
        and not k.startswith("GITORCH_")
    }
    return subprocess.run(
        [sys.executable, "-m", "gitorch", *args],
        cwd=cwd,
        env={**base, "NO_COLOR": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_not_cut(output: str, *values: str) -> None:
    assert "…" not in output, output
    for value in values:
        assert value in output, (value, output)


# -- issue 22, item 4: tables are not cut to 80 columns in a pipe -------------------------


def test_history_in_a_pipe_keeps_every_cell_whole(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with StateStore(state) as store:
        record = store.record_revision(
            "a1" * 20,
            author=LONG_AUTHOR,
            signer=LONG_SIGNER,
            services=["web"],
            summary={"changes": [{"kind": "Service", "name": "web", "action": "update"}]},
        )
        store.finish_revision(record.id, RevisionResult.FAILED, reason=LONG_REASON)

    done = piped("history", "--state", str(state))

    assert done.returncode == 0, done.stderr
    assert_not_cut(done.stdout, LONG_AUTHOR, LONG_SIGNER, f"update web: {LONG_REASON}")
    header, row = done.stdout.splitlines()  # one line per revision: grep and awk work
    assert header.split()[:2] == ["REVISION", "AUTHOR"] and row.startswith("a1a1a1a1a1a1")


def test_status_and_nodes_in_a_pipe_keep_every_cell_whole(tmp_path: Path) -> None:
    state = tmp_path / "state"
    service = load_services(
        service_yaml(
            LONG_SERVICE,
            replicas=1,
            command=["/bin/sleep", "60"],
            probe_path="/",
            expose_port=18123,
        )
    )[LONG_SERVICE]
    with StateStore(state) as store:
        record_rollout(store, service)
        store.register_node(LONG_NODE, "process")

    status = piped("status", "--state", str(state))
    nodes = piped("nodes", "--state", str(state))

    assert status.returncode == 0, status.stderr
    assert_not_cut(status.stdout, LONG_SERVICE, ":18123 (http)", LONG_NODE)
    assert nodes.returncode == 0, nodes.stderr
    assert_not_cut(nodes.stdout, LONG_NODE, "MEMORY (alloc/cap)", "REPLICAS")
    assert len(nodes.stdout.splitlines()) == 2


def test_columns_still_sets_the_width_when_given(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with StateStore(state) as store:
        store.record_revision("b2" * 20, author=LONG_AUTHOR, services=["web"])
    done = piped("history", "--state", str(state), env={"COLUMNS": "60"})
    assert done.returncode == 0, done.stderr
    assert max(len(line) for line in done.stdout.splitlines()) <= 60


def test_plan_in_a_pipe_keeps_lines_whole(tmp_path: Path) -> None:
    done = piped(
        "plan",
        "--path",
        "examples/repo",
        "--runtime",
        "process",
        env={"GITORCH_STATE": str(tmp_path / "state")},
    )
    assert done.returncode == 2, done.stderr
    assert "…" not in done.stdout


# -- issue 22, item 5: say where they looked, and how to look elsewhere ------------------


def test_status_without_a_state_directory_fails_and_says_where_it_looked(tmp_path: Path) -> None:
    for args in ([], ["--format", "json"]):
        done = piped("status", "--runtime", "process", *args, cwd=tmp_path)
        assert done.returncode == 1
        assert done.stdout == ""
        assert f"no gitorch state in {tmp_path / '.gitorch'}" in done.stderr
        for way in ("--state DIR", "$GITORCH_STATE", "--server URL"):
            assert way in done.stderr
    elsewhere = tmp_path / "elsewhere"
    done = piped(
        "status", "--runtime", "process", cwd=tmp_path, env={"GITORCH_STATE": str(elsewhere)}
    )
    assert done.returncode == 1 and f"no gitorch state in {elsewhere}" in done.stderr
    assert not elsewhere.exists()  # reading never creates a state directory


def test_status_of_an_empty_store_says_where_it_looked(tmp_path: Path) -> None:
    StateStore(tmp_path / ".gitorch").close()
    done = piped("status", "--runtime", "process", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"no services applied or running in {tmp_path / '.gitorch'}" in done.stdout
    assert "--state DIR" in done.stderr and "--server URL" in done.stderr
    done = piped("status", "nope", "--runtime", "process", cwd=tmp_path)
    assert done.returncode == 1
    assert (
        f"no service named 'nope' is applied or running in {tmp_path / '.gitorch'}" in done.stderr
    )


def test_history_says_where_it_looked(tmp_path: Path) -> None:
    done = piped("history", cwd=tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    assert f"no gitorch state in {tmp_path / '.gitorch'}" in done.stderr
    assert "--server URL" in done.stderr

    StateStore(tmp_path / ".gitorch").close()
    done = piped("history", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"no revisions applied yet in {tmp_path / '.gitorch'}\n"
    assert "--state DIR" in done.stderr
    done = piped("history", "web", cwd=tmp_path)
    assert done.stdout == f"no revisions applied to service web in {tmp_path / '.gitorch'}\n"
    done = piped("history", "--format", "json", cwd=tmp_path)
    assert (done.returncode, json.loads(done.stdout)) == (0, [])


def test_nodes_without_a_state_directory_says_which_node_it_shows(tmp_path: Path) -> None:
    done = piped("nodes", "--runtime", "process", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"no gitorch state in {tmp_path / '.gitorch'}: showing the local node" in done.stderr
    assert "--state DIR" in done.stderr
    assert len(done.stdout.splitlines()) == 2  # the header and the local node


# -- issue 22, item 6: the README's commands work as written from the repository root ----


def readme_commands(name: str) -> list[str]:
    """Every ``gitorch NAME ...`` line of the README's shell blocks."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    return [
        line.strip()
        for block in blocks
        for line in block.splitlines()
        if line.strip().startswith(f"gitorch {name}")
    ]


@pytest.mark.parametrize(("name", "expected"), [("validate", {0}), ("plan", {0, 2})])
def test_readme_commands_work_from_the_repository_root(
    tmp_path: Path, name: str, expected: set[int]
) -> None:
    commands = readme_commands(name)
    assert commands, f"the README shows no `gitorch {name}`"
    for command in commands:
        args = command.split()[1:]
        done = piped(*args, env={"GITORCH_STATE": str(tmp_path / "state")})
        assert done.returncode in expected, (command, done.stdout, done.stderr)
        if name == "validate":
            assert "valid: 4 Services, 0 Nodes, 1 Volume" in done.stdout, done.stdout


@pytest.mark.parametrize(
    "args", [["validate"], ["plan", "--runtime", "process"]], ids=["validate", "plan"]
)
def test_reading_every_folder_of_the_root_says_how_to_pick_one(
    tmp_path: Path, args: list[str]
) -> None:
    done = piped(*args, env={"GITORCH_STATE": str(tmp_path / "state")})
    assert done.returncode == 1
    assert "separate folders (examples/repo, examples/repo-docker," in done.stderr
    assert "no --path was given; to read one: --path examples/" in done.stderr


# -- a reader that goes away: `gitorch plan | head` ----------------------------------------


def _many_services(count: int) -> dict[str, str]:
    """``count`` Services in one file: a plan whose text outgrows a pipe's buffer."""
    docs = [
        f"""apiVersion: gitorch.dev/v1
kind: Service
metadata: {{name: svc-{i}}}
spec:
  command: ["/bin/sleep", "600"]
  replicas: 2
  env: {{GREETING: "hello from service {i}, a value long enough to take some room"}}
"""
        for i in range(count)
    ]
    return {"apps/services.yaml": "---\n".join(docs)}


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_plan_into_a_pipe_closed_early_ends_quietly(tmp_path: Path, fmt: str) -> None:
    """`gitorch plan | head -1`: the reader leaves after one line; the plan ends without
    a traceback, with 128 + SIGPIPE as a tool killed by SIGPIPE would (not with its own
    code, as if its output had all been read: the JSON's one write used to come back
    short in silence)."""
    repo = init_repo(tmp_path / "repo")
    commit(repo, _many_services(300))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITORCH_") and k != "COLUMNS"}
    argv = [sys.executable, "-m", "gitorch", "plan", "--repo", str(repo), "--path", "apps"]
    argv += ["--runtime", "process", "--format", fmt, "--state", str(tmp_path / "state")]
    process = subprocess.Popen(  # noqa: S603
        argv,
        cwd=tmp_path,
        env={**env, "NO_COLOR": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    first = process.stdout.readline()
    process.stdout.close()  # as `head -1` does
    error = process.stderr.read().decode()
    code = process.wait(timeout=120)
    assert first.strip(), error
    assert "Traceback" not in error and "Broken pipe" not in error, error
    assert code == 141, (code, error)


@pytest.mark.parametrize(
    "args",
    [
        ("validate", "--path", "examples/repo"),
        ("plan", "--path", "examples/repo", "--runtime", "process"),
        ("plan", "--path", "examples/repo", "--runtime", "process", "--format", "json"),
    ],
)
def test_output_that_cannot_be_written_is_one_line_not_a_traceback(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    """`> /dev/full` (a full disk): the command says it could not write, exit 1."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITORCH_")}
    env["GITORCH_STATE"] = str(tmp_path / "state")
    with open("/dev/full", "wb") as full:
        done = subprocess.run(  # noqa: S603
            [sys.executable, "-m", "gitorch", *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1, done.stderr
    assert done.stderr == "error: cannot write the output: No space left on device\n"
