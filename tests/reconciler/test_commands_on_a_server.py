"""The CLI contract's ``--server URL`` ("instead of --state: ask a running daemon") for
``plan``, ``nodes``, ``volumes``, ``audit``, ``logs`` and ``drain``: what the daemon answers is what
the command shows on the daemon's own host. A pull request's check, or an operator's
laptop, then needs neither the state store nor the nodes."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from audit_tamper_helpers import tamper_for
from ctrl_c_helpers import ctrl_c_reaches_it
from reconciler_helpers import (
    Cluster,
    DaemonProc,
    cli_env,
    commit,
    converged,
    get_body,
    git,
    gitorch,
    pid_of,
    process_service,
    wait_for,
)


def serving(cluster: Cluster, sha: str, replicas: int) -> tuple[DaemonProc, list[str]]:
    """A daemon on the cluster's repo once it runs ``sha``'s api, and the ``--server``
    options that ask it."""
    daemon = cluster.daemon()
    wait_for(f"{sha[:7]} applied", lambda: converged(daemon.service("api"), sha, replicas), 60,
             describe=daemon.log_tail)  # fmt: skip
    return daemon, ["--server", f"http://127.0.0.1:{daemon.port}"]


def test_a_daemon_plans_a_branch_as_the_cli_does(cluster: Cluster) -> None:
    port = cluster.port

    def manifest(version: str, replicas: int = 2) -> dict[str, str]:
        return {"api.yaml": process_service("api", port=port, version=version, replicas=replicas)}

    applied = commit(cluster.repo, manifest("1"), "v1")
    # Two pull requests' branches, never merged: a new version on three replicas, and a typo.
    git(cluster.repo, "checkout", "-q", "-b", "feature")
    feature = commit(cluster.repo, manifest("2", replicas=3), "v2 on three replicas")
    git(cluster.repo, "checkout", "-q", "-b", "broken", "main")
    valid = manifest("3")["api.yaml"]
    commit(cluster.repo, {"api.yaml": valid + "  replica: 4\n"}, "a typo")
    typo_line = valid.count("\n") + 1
    git(cluster.repo, "checkout", "-q", "main")
    daemon, server = serving(cluster, applied, 2)

    text = gitorch("plan", *server, "--ref", "feature", cwd=cluster.root)
    assert text.code == 2, text.stderr
    assert f"gitorch plan: revision {feature[:7]}, applied now: {applied[:7]}" in text.stdout
    assert '~ spec.env.VERSION: "1" -> "2"' in text.stdout
    assert "~ spec.replicas: 2 -> 3" in text.stdout
    node = daemon.service("api")["instances"][0]["node"]  # type: ignore[index]
    assert f"api-3 -> {node}" in text.stdout, text.stdout  # where the new replica lands
    assert "\x1b[" not in text.stdout

    # The JSON is the plan the CLI makes on this host (same digest: same next pass).
    remote = gitorch("plan", *server, "--ref", "feature", "--format", "json", cwd=cluster.root)
    local = gitorch(
        "plan", "--repo", str(cluster.repo), "--ref", "feature", *cluster.state_args,
        "--runtime", "process", "--format", "json", cwd=cluster.root,
    )  # fmt: skip
    assert (remote.code, local.code) == (2, 2), (remote.stderr, local.stderr)
    assert remote.stdout == local.stdout
    assert remote.json()["revision"] == feature

    markdown = gitorch(
        "plan", *server, "--ref", "feature", "--format", "markdown", cwd=cluster.root
    )
    assert markdown.code == 2, markdown.stderr
    assert f"### gitorch plan for `{feature[:7]}`" in markdown.stdout
    assert f"Plan digest: `{remote.json()['digest']}`" in markdown.stdout

    # What runs: nothing to do, exit 0.
    same = gitorch("plan", *server, "--ref", applied, cwd=cluster.root)
    assert same.code == 0, same.stdout + same.stderr

    # Errors are one clear line, with every manifest problem as path:line:column.
    typo = gitorch("plan", *server, "--ref", "broken", cwd=cluster.root)
    assert typo.code == 1 and typo.stdout == ""
    assert "answered 422: 1 problem in the manifests" in typo.stderr
    assert f"api.yaml:{typo_line}:3: spec.replica: unknown field 'replica'" in typo.stderr
    unknown = gitorch("plan", *server, "--ref", "nope", cwd=cluster.root)
    assert unknown.code == 1 and "answered 400" in unknown.stderr and "nope" in unknown.stderr
    assert "as of its last fetch" in unknown.stderr
    assert "Traceback" not in typo.stderr + unknown.stderr
    local_only = gitorch("plan", *server, "--worktree", "--path", "x", cwd=cluster.root)
    assert local_only.code == 1
    assert "--path, --worktree cannot be used with --server" in local_only.stderr
    # Nothing of it was applied.
    assert converged(daemon.service("api"), applied, 2)


VOLUME = """\
apiVersion: gitorch.dev/v1
kind: Volume
metadata: {name: data}
spec: {size: 64Mi, accessMode: ReadWriteOnce, reclaimPolicy: Retain}
"""


def test_nodes_and_volumes_from_a_daemon_are_what_its_host_shows(cluster: Cluster) -> None:
    applied = commit(
        cluster.repo,
        {"api.yaml": process_service("api", port=cluster.port, replicas=2), "data.yaml": VOLUME},
        "v1 and a volume",
    )
    daemon, server = serving(cluster, applied, 2)
    local = [*cluster.state_args, "--runtime", "process"]

    for command in ("nodes", "volumes"):
        remote = gitorch(command, *server, "--format", "json", cwd=cluster.root)
        here = gitorch(command, *local, "--format", "json", cwd=cluster.root)
        assert (remote.code, here.code) == (0, 0), (remote.stderr, here.stderr)
        assert remote.json() == here.json(), command
        text = gitorch(command, *server, cwd=cluster.root)
        assert text.code == 0, text.stderr
        assert text.stdout == gitorch(command, *local, cwd=cluster.root).stdout
    [node] = gitorch("nodes", *server, "--format", "json", cwd=cluster.root).json()["nodes"]
    assert node["replicas"] == 2 and node["condition"] == "Ready"
    [volume] = gitorch("volumes", *server, "--format", "json", cwd=cluster.root).json()["volumes"]
    assert volume["name"] == "data"

    # A reset through the daemon is refused for a volume that is not missing (409), as
    # where the state is, and for one that does not exist (404).
    refused = gitorch("volumes", *server, "--reset", "data", cwd=cluster.root)
    here = gitorch("volumes", *local, "--reset", "data", cwd=cluster.root)
    assert (refused.code, here.code) == (1, 1)
    assert "answered 409: volume data is not missing (Pending on -)" in refused.stderr
    assert "error: volume data is not missing (Pending on -)" in here.stderr
    unknown = gitorch("volumes", *server, "--reset", "nope", cwd=cluster.root)
    assert unknown.code == 1 and "answered 404: no volume named 'nope'" in unknown.stderr
    gone = gitorch("nodes", "--server", "http://127.0.0.1:9", cwd=cluster.root)
    assert gone.code == 1
    assert gone.stderr.startswith("error: cannot reach the gitorch daemon at http://127.0.0.1:9")


def test_the_audit_log_from_a_daemon_and_its_chain_verified_here(cluster: Cluster) -> None:
    """An auditor without the store: the entries and their filters as on the daemon's
    host, and ``--verify`` checking the chain the daemon sends, on the auditor's side (an
    edit of the store is named; the head kept earlier is checked with ``--expect``)."""
    first = commit(
        cluster.repo, {"api.yaml": process_service("api", port=cluster.port, replicas=1)}, "v1"
    )
    daemon, server = serving(cluster, first, 1)

    for query in ([], ["--service", "api"], ["--kind", "revision.started"], ["--since", "1h"],
                  ["--limit", "2"], ["--limit", "0"]):  # fmt: skip
        remote = gitorch("audit", *server, *query, "--format", "json", cwd=cluster.root)
        here = gitorch("audit", *cluster.state_args, *query, "--format", "json", cwd=cluster.root)
        assert (remote.code, here.code) == (0, 0), (query, remote.stderr, here.stderr)
        assert remote.json() == here.json(), query
    entries = gitorch("audit", *server, "--format", "json", cwd=cluster.root).json()
    assert any(e["kind"] == "revision.started" and e["revision"] == first for e in entries)
    table = gitorch("audit", *server, cwd=cluster.root)
    assert table.code == 0 and "revision.started" in table.stdout

    head = gitorch("audit", *server, "--head", cwd=cluster.root)
    assert head.code == 0, head.stderr
    assert head.stdout == gitorch("audit", *cluster.state_args, "--head", cwd=cluster.root).stdout
    intact = gitorch(
        "audit", *server, "--verify", "--expect", head.stdout.strip(), cwd=cluster.root
    )
    assert intact.code == 0 and "audit log intact" in intact.stdout, intact.stdout + intact.stderr

    # Someone with write access to the store rewrites who did the first entry.
    tamper_for(cluster.store_location).edit(1, actor="user:nobody@nowhere")
    tampered = gitorch("audit", *server, "--verify", "--format", "json", cwd=cluster.root)
    assert tampered.code == 1, tampered.stderr
    verdict = tampered.json()
    assert verdict["intact"] is False and any(p["entry"] == 1 for p in verdict["problems"])


def test_logs_from_a_daemon_live_and_of_a_dead_replica(cluster: Cluster) -> None:
    applied = commit(
        cluster.repo, {"api.yaml": process_service("api", port=cluster.port, replicas=2)}, "v1"
    )
    daemon, server = serving(cluster, applied, 2)

    # Live: each replica's lines (each answered probe adds one, so only the start is compared).
    remote = gitorch("logs", "api", *server, "--tail", "all", "--format", "json", cwd=cluster.root)
    here = gitorch("logs", "api", *cluster.state_args, "--tail", "all", "--format", "json",
                   cwd=cluster.root)  # fmt: skip
    assert (remote.code, here.code) == (0, 0), (remote.stderr, here.stderr)

    def firsts(documents: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
        return [(d["replica"], d["state"], d["output"].splitlines()[0]) for d in documents]

    assert firsts(remote.json()) == firsts(here.json())
    assert [r for r, _, _ in firsts(remote.json())] == ["api-1", "api-2"]
    one = gitorch("logs", "api", *server, "--replica", "api-2", "--tail", "1", cwd=cluster.root)
    assert one.code == 0 and len(one.stdout.splitlines()) == 1, one.stdout + one.stderr

    # A replica killed: the daemon replaces it, and its output is kept (--previous).
    instances = daemon.service("api")["instances"]  # type: ignore[index]
    killed = sorted(instances, key=lambda i: i["id"])[0]
    os.kill(pid_of(killed["id"]), signal.SIGKILL)
    wait_for("the dead replica's output kept", lambda: gitorch(
        "logs", "api", *server, "--previous", cwd=cluster.root).code == 0, 60,
        describe=daemon.log_tail)  # fmt: skip
    remote = gitorch("logs", "api", *server, "--previous", "--format", "json", cwd=cluster.root)
    here = gitorch("logs", "api", *cluster.state_args, "--previous", "--format", "json",
                   cwd=cluster.root)  # fmt: skip
    assert remote.json() == here.json()
    assert remote.json()[0]["exitReason"] == "signal 9"
    text = gitorch("logs", "api", *server, "--previous", cwd=cluster.root)
    assert text.stdout == gitorch("logs", "api", *cluster.state_args, "--previous",
                                  cwd=cluster.root).stdout  # fmt: skip
    assert text.stdout.startswith("--- api-") and ": signal 9, ended " in text.stdout

    # Nothing to show, and what the API cannot do, are one line each.
    unknown = gitorch("logs", "nope", *server, cwd=cluster.root)
    assert unknown.code == 1
    assert unknown.stderr.startswith("error: the daemon at http://127.0.0.1:")
    assert "answered 404: no service nope (services: api)" in unknown.stderr
    follow = gitorch("logs", "nope", *server, "--follow", cwd=cluster.root)
    assert follow.code == 1 and "answered 404: no service nope" in follow.stderr


class Follower:
    """``gitorch logs ... --follow`` as a subprocess, its lines read on a thread."""

    def __init__(self, *args: str, cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gitorch", "logs", *args, "--follow"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
            cwd=cwd,
            preexec_fn=ctrl_c_reaches_it,  # the test's SIGINT is a Ctrl-C, even in CI
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def line_with(self, text: str, timeout: float = 30.0) -> str:
        """The first line from now on that holds ``text``."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} in {timeout:g} s ({self.stderr()})")

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "still running"
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_logs_followed_through_a_daemon(cluster: Cluster) -> None:
    applied = commit(
        cluster.repo, {"api.yaml": process_service("api", port=cluster.port, replicas=2)}, "v1"
    )
    daemon, server = serving(cluster, applied, 2)
    follower = Follower("api", *server, "--tail", "1", cwd=cluster.root)
    last: Follower | None = None
    try:
        # Each replica's last line first, each prefixed with its replica's name (two are
        # followed), then a request's line, from whichever replica answered it, as it
        # is written.
        firsts = sorted(follower.line_with("")[:8] for _ in range(2))
        assert firsts == ["api-1 | ", "api-2 | "], firsts
        mark = f"mark-{os.getpid()}"
        wait_for(
            "the request through the proxy", lambda: get_body(cluster.port, f"/items?{mark}"), 30
        )
        line = follower.line_with(f"GET /items?{mark}")
        assert re.match(r"^api-[12] \| \S+ api 127\.0\.0\.1 \"GET /items\?mark-", line), line

        # A replica killed: its replacement is followed from its first line.
        instances = daemon.service("api")["instances"]  # type: ignore[index]
        killed = sorted(instances, key=lambda i: i["id"])[0]
        os.kill(pid_of(killed["id"]), signal.SIGKILL)
        started = follower.line_with("version 1 listening on", timeout=60)
        assert started.startswith(f"{killed['replica']} | "), started

        # Ctrl-C ends it quietly.
        follower.proc.send_signal(signal.SIGINT)
        assert follower.proc.wait(timeout=10) == 0
        assert follower.stderr() == ""

        # The daemon stopping ends a follow with one line, not a hang.
        last = Follower("api", *server, cwd=cluster.root)
        last.line_with(" api ")
        daemon.stop()
        assert last.proc.wait(timeout=15) == 1
        assert last.stderr() == f"error: the daemon at {server[1]} ended the stream\n"
    finally:
        for one in (follower, last):
            if one is not None:
                one.close()


def test_a_node_drained_and_taken_back_through_a_daemon(cluster: Cluster) -> None:
    applied = commit(
        cluster.repo, {"api.yaml": process_service("api", port=cluster.port, replicas=1)}, "v1"
    )
    daemon, server = serving(cluster, applied, 1)
    [node] = [n["name"] for n in daemon.status()["nodes"]]

    def row() -> dict[str, Any]:
        [found] = gitorch("nodes", *server, "--format", "json", cwd=cluster.root).json()["nodes"]
        return found

    drained = gitorch("drain", node, *server, cwd=cluster.root)
    assert drained.code == 0, drained.stderr
    assert drained.stdout == f"node {node} draining\n"
    wait_for("the node shown draining", lambda: row()["draining"], 30)
    back = gitorch("drain", "--undo", node, *server, cwd=cluster.root)
    assert (back.code, back.stdout) == (0, f"node {node} schedulable again\n"), back.stderr
    assert not row()["draining"] and not row()["unschedulable"]
    audit = gitorch("audit", *server, "--format", "json", cwd=cluster.root).json()
    marks = [(e["kind"], e["actor"]) for e in audit if e["kind"].startswith("node.")]
    assert marks == [("node.drain", "api"), ("node.uncordon", "api")], marks
    unknown = gitorch("drain", "nowhere", *server, cwd=cluster.root)
    assert unknown.code == 1 and "answered 404: no node named nowhere" in unknown.stderr
