"""`gitorch logs` as a user runs it, on real replicas (process driver and Docker engine).

Replicas are started with the runtime the CLI opens for the implicit local node (process
bookkeeping and kept output in ``<state>/nodes/<node>``); the command runs as
``python3 -m gitorch`` without a daemon.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ctrl_c_helpers import ctrl_c_reaches_it
from live_helpers import (
    docker_client,  # noqa: F401 (fixture)
    eventually,
    example_images,  # noqa: F401 (fixture)
    remove_cluster,
)

from gitorch.commands.logs import print_events
from gitorch.live import cluster_name
from gitorch.live.inventory import local_node_name, runtime_dir
from gitorch.runtime.base import (
    LABEL_REPLICA,
    LABEL_SERVICE,
    Instance,
    InstanceState,
    ReplicaSpec,
    Runtime,
)
from gitorch.runtime.docker import DockerRuntime
from gitorch.runtime.process import ProcessRuntime

SECRET = "s3cr3t-token-value"
HEADER = re.compile(
    r"^--- (?P<replica>\S+) on (?P<node>\S+): (?P<reason>[^,]+), "
    r"ended \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC(, ran \S+)? \[(?P<name>\S+), revision \S+\] ---$"
)


def gitorch(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gitorch", *args],
        cwd=cwd,
        env=plain_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def plain_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITORCH_")}
    env.update({"NO_COLOR": "1", "COLUMNS": "200", "TERM": "dumb"})
    return env


class Local:
    """A state dir and the local node's runtime, as the CLI opens them."""

    def __init__(self, state: Path, runtime: Runtime, driver: str) -> None:
        self.state = state
        self.runtime = runtime
        self.driver = driver
        self.name = cluster_name(state)

    def start(self, service: str, slot: int, script: str, image: str | None = None) -> Instance:
        spec = ReplicaSpec(
            name=f"{self.name}-{service}-{slot}",
            image=image,
            command=("sh", "-c", script),
            env={"API_TOKEN": SECRET},
            labels={LABEL_SERVICE: service, LABEL_REPLICA: f"{service}-{slot}"},
            stop_grace_seconds=1.0,
        )
        return self.runtime.create(spec, self.name)

    def wait_exited(self, instance: Instance) -> None:
        eventually(lambda: self.runtime.inspect(instance.id).state is InstanceState.EXITED)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return gitorch(
            *args, "--state", str(self.state), "--runtime", self.driver, cwd=self.state.parent
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gitorch",
                *args,
                "--state",
                str(self.state),
                "--runtime",
                self.driver,
            ],
            cwd=self.state.parent,
            env=plain_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=ctrl_c_reaches_it,
        )


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Local]:
    state = tmp_path / "state"
    node = local_node_name()
    cluster = Local(
        state, ProcessRuntime(node, runtime_dir(state, node), workdir=tmp_path), "process"
    )
    try:
        yield cluster
    finally:
        remove_cluster(cluster.runtime, cluster.name)


def test_live_output_of_every_replica_named_when_there_are_several(local: Local) -> None:
    for slot in (1, 2):
        local.start("web", slot, f"echo web {slot} up; echo web {slot} ready >&2; exec sleep 60")
    local.start("api", 1, "echo not web; exec sleep 60")
    eventually(lambda: local.run("logs", "web").stdout.count("\n") == 4)

    both = local.run("logs", "web")
    one = local.run("logs", "web", "--replica", "web-2", "--tail", "1")

    assert (both.returncode, both.stderr) == (0, "")
    assert both.stdout == (
        "web-1 | web 1 up\nweb-1 | web 1 ready\nweb-2 | web 2 up\nweb-2 | web 2 ready\n"
    )
    assert (one.returncode, one.stdout) == (0, "web 2 ready\n")
    data = json.loads(local.run("logs", "web", "--format", "json").stdout)
    assert [(d["replica"], d["state"], d["output"]) for d in data] == [
        ("web-1", "running", "web 1 up\nweb 1 ready\n"),
        ("web-2", "running", "web 2 up\nweb 2 ready\n"),
    ]
    assert SECRET not in both.stdout + json.dumps(data)


def test_previous_shows_dead_replicas_newest_first_with_how_they_ended(local: Local) -> None:
    first = local.start("api", 1, "echo starting; echo 'boom: no database' >&2; exit 3")
    local.wait_exited(first)
    local.runtime.remove(first.id)
    time.sleep(0.01)
    second = local.start("api", 2, "echo starting again; exec sleep 60")
    eventually(lambda: "again" in local.runtime.logs(second.id))
    local.runtime.remove(second.id)  # removed while running: killed

    done = local.run("logs", "api", "--previous")

    assert (done.returncode, done.stderr) == (0, "")
    blocks = done.stdout.split("\n\n")
    assert len(blocks) == 2
    newest, oldest = (block.splitlines() for block in blocks)
    head = HEADER.match(newest[0])
    assert head, newest[0]
    assert (head["replica"], head["reason"], head["name"]) == ("api-2", "signal 9", second.name)
    assert head["node"] == local_node_name()
    assert newest[1:] == ["starting again"]
    head = HEADER.match(oldest[0])
    assert head and (head["replica"], head["reason"]) == ("api-1", "exit 3"), oldest[0]
    assert oldest[1:] == ["starting", "boom: no database"]

    only = local.run("logs", "api", "--previous", "--replica", "api-1", "--tail", "1")
    assert only.stdout.splitlines()[1:] == ["boom: no database"]
    data = json.loads(local.run("logs", "api", "--previous", "--format", "json").stdout)
    assert [(d["replica"], d["exitCode"], d["exitReason"]) for d in data] == [
        ("api-2", 137, "signal 9"),
        ("api-1", 3, "exit 3"),
    ]
    assert data[1]["output"] == "starting\nboom: no database\n"
    assert data[1]["finishedAt"] is not None and data[1]["removedAt"] >= data[1]["finishedAt"]
    assert SECRET not in done.stdout + json.dumps(data)


def test_nothing_to_show_is_one_clear_line_and_exit_1(local: Local) -> None:
    local.start("web", 1, "exec sleep 60")

    unknown = local.run("logs", "nope")
    no_dead = local.run("logs", "web", "--previous")
    no_replica = local.run("logs", "web", "--replica", "web-9")
    both = local.run("logs", "web", "--follow", "--previous")

    assert (unknown.returncode, unknown.stdout) == (1, "")
    assert unknown.stderr == "error: no service nope (services: web)\n"
    assert no_dead.returncode == 1
    assert no_dead.stderr == "error: no removed replica of web has left output here\n"
    assert no_replica.returncode == 1
    assert no_replica.stderr == (
        "error: no replica web-9 of web exists now (gitorch logs web --previous shows the "
        "last dead ones)\n"
    )
    assert both.returncode == 1 and "--follow and --previous do not go together" in both.stderr
    for done in (unknown, no_dead, no_replica, both):
        assert "Traceback" not in done.stderr


def test_follow_streams_new_lines_and_replicas_that_start_until_ctrl_c(
    local: Local, tmp_path: Path
) -> None:
    # Each replica prints a line whenever a file named "ping-<slot>-<n>" appears.
    loop = "i=0; echo '{slot} hello'; while :; do i=$((i+1)); while [ ! -e ping-{slot}-$i ]; do sleep 0.05; done; echo \"{slot} ping $i\"; done"
    local.start("web", 1, loop.format(slot=1))
    eventually(lambda: "hello" in local.run("logs", "web").stdout)
    follower = local.popen("logs", "web", "--follow")
    assert follower.stdout is not None
    try:
        assert follower.stdout.readline() == "1 hello\n"
        (tmp_path / "ping-1-1").touch()
        assert follower.stdout.readline() == "1 ping 1\n"
        # A replica that starts while following is picked up, from its first line.
        local.start("web", 2, loop.format(slot=2))
        seen = {follower.stdout.readline() for _ in range(1)}
        assert seen == {"web-2 | 2 hello\n"}
        (tmp_path / "ping-1-2").touch()
        (tmp_path / "ping-2-1").touch()
        seen = {follower.stdout.readline() for _ in range(2)}
        assert seen == {"web-1 | 1 ping 2\n", "web-2 | 2 ping 1\n"}
        follower.send_signal(signal.SIGINT)
        try:
            assert follower.wait(timeout=10) == 0
        except subprocess.TimeoutExpired:
            follower.send_signal(signal.SIGQUIT)  # its threads' stacks, to say where
            time.sleep(1.0)
            follower.kill()
            follower.wait()
            assert follower.stderr is not None
            pytest.fail(f"logs --follow ignored Ctrl-C for 10 s:\n{follower.stderr.read()}")
        assert follower.stderr is not None and follower.stderr.read() == ""
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()


def test_follow_with_format_json_writes_one_event_a_line(local: Local, tmp_path: Path) -> None:
    """JSON Lines, as the API's stream sends them (it was refused: "--follow prints text
    only"): a program reading the pipe gets each event as it comes."""
    loop = "echo 'hello \"you\"'; while [ ! -e ping ]; do sleep 0.05; done; echo pong; sleep 60"
    local.start("web", 1, loop)
    eventually(lambda: "hello" in local.run("logs", "web").stdout)
    follower = local.popen("logs", "web", "--follow", "--format", "json")
    assert follower.stdout is not None
    try:
        follows = json.loads(follower.stdout.readline())
        assert follows.pop("follow") == "web-1"  # and the commit it runs, if it has one
        said = json.loads(follower.stdout.readline())
        assert (said["replica"], said["line"]) == ("web-1", 'hello "you"')
        (tmp_path / "ping").touch()
        said = json.loads(follower.stdout.readline())
        assert (said["replica"], said["line"]) == ("web-1", "pong")
        follower.send_signal(signal.SIGINT)
        assert follower.wait(timeout=10) == 0
        assert follower.stderr is not None and follower.stderr.read() == ""
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()


def test_followed_lines_name_the_commit_when_a_slot_runs_two_replicas(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A canary's slot has a stable and a new replica under one name: text lines say
    which (by commit); other replicas keep the plain name."""
    events = [
        {"follow": "web-1", "revision": "a" * 40},
        {"follow": "web-1", "revision": "b" * 40},
        {"follow": "web-2", "revision": "a" * 40},
        None,  # a keep-alive
        {"replica": "web-1", "line": "old", "revision": "a" * 40},
        {"replica": "web-1", "line": "new", "revision": "b" * 40},
        {"replica": "web-2", "line": "two", "revision": "a" * 40},
    ]
    print_events(events)
    assert capsys.readouterr().out == (
        "web-1 (aaaaaaaa) | old\nweb-1 (bbbbbbbb) | new\nweb-2 | two\n"
    )
    print_events(events, as_json=True)
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == [
        e for e in events if e is not None
    ]


@pytest.mark.docker
def test_docker_live_and_previous(tmp_path: Path, example_images: str) -> None:  # noqa: F811
    state = tmp_path / "state"
    node = local_node_name()
    runtime = DockerRuntime(node, state_dir=runtime_dir(state, node))
    cluster = Local(state, runtime, "docker")
    try:
        running = cluster.start("web", 1, "echo hello from docker; exec sleep 60", example_images)
        dying = cluster.start("web", 2, "echo bye from docker >&2; exit 3", example_images)
        cluster.wait_exited(dying)
        eventually(lambda: "hello" in runtime.logs(running.id))

        live = cluster.run("logs", "web")
        assert (live.returncode, live.stderr) == (0, "")
        assert live.stdout == "web-1 | hello from docker\nweb-2 | bye from docker\n"

        runtime.remove(dying.id)
        previous = cluster.run("logs", "web", "--previous")
        assert (previous.returncode, previous.stderr) == (0, "")
        head, *lines = previous.stdout.splitlines()
        match = HEADER.match(head)
        assert match and (match["replica"], match["reason"]) == ("web-2", "exit 3"), head
        assert lines == ["bye from docker"]
        data: list[dict[str, Any]] = json.loads(
            cluster.run("logs", "web", "--previous", "--format", "json").stdout
        )
        assert SECRET not in json.dumps(data)
    finally:
        remove_cluster(runtime, cluster.name)


def test_a_reader_that_stops_early_ends_the_output_quietly(local: Local) -> None:
    """`gitorch logs web --tail all | head -1`: no BrokenPipeError traceback."""
    replica = local.start("web", 1, "seq 1 20000; exec sleep 60")
    eventually(lambda: "20000" in local.runtime.logs(replica.id, tail=1))
    reader = local.popen("logs", "web", "--tail", "all")
    assert reader.stdout is not None and reader.stderr is not None
    assert reader.stdout.readline() == "1\n"
    reader.stdout.close()
    assert reader.wait(timeout=30) == 0
    assert reader.stderr.read() == ""
