"""Process-driver specifics the shared contract suite cannot express.

PID reuse, re-adoption of replicas whose parent is gone, the working-dir root, rlimits,
log files, the clean environment, whole-group stops and zombie hygiene. Workloads are
``sleep``/``sh`` (busybox or coreutils) and tiny python scripts: no Docker needed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from runtime_helpers import alive, create_from_another_process, process_spec, wait_until

from gitorch.errors import InstanceNotFound, ReplicaStartFailed
from gitorch.runtime import _proc
from gitorch.runtime._proc_store import RecordStore, ReplicaRecord
from gitorch.runtime.base import (
    LABEL_CLUSTER,
    InstanceState,
    PortRequest,
    Probe,
    ReplicaSpec,
    Runtime,
)
from gitorch.runtime.process import ProcessRuntime, WorkingDirOutsideRoot

REPO = Path(__file__).resolve().parents[2]


def exited(runtime: Runtime, instance_id: str) -> bool:
    return runtime.inspect(instance_id).state is InstanceState.EXITED


def zombie_children() -> list[int]:
    """Pids of zombies whose parent is this test process."""
    me = str(os.getpid())
    zombies = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = text.rpartition(")")[2].split()
        if fields[0] == "Z" and fields[1] == me:
            zombies.append(int(entry.name))
    return zombies


@pytest.fixture
def cluster() -> str:
    return f"p{uuid.uuid4().hex[:10]}"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def runtime(state_dir: Path, workdir: Path, cluster: str) -> Iterator[ProcessRuntime]:
    rt = ProcessRuntime("node-p", state_dir, workdir=workdir)
    yield rt
    for instance in ProcessRuntime("node-p", state_dir, workdir=workdir).list_instances(cluster):
        with contextlib.suppress(InstanceNotFound):
            rt.remove(instance.id)


spec = process_spec


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """A process that is NOT a replica, leader of its own group like a replica would be."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def test_a_recycled_pid_is_exited_and_never_signalled(
    runtime: ProcessRuntime, state_dir: Path, cluster: str, stranger: subprocess.Popen[bytes]
) -> None:
    store = RecordStore(state_dir)
    real_ticks = _proc.read_stat(stranger.pid)
    assert real_ticks is not None
    for name, pid in (("recycled-stranger", stranger.pid), ("recycled-me", os.getpid())):
        stat = _proc.read_stat(pid)
        assert stat is not None
        store.claim(name)
        # Same pid, same boot, but a start time from before: the pid was recycled.
        store.write(
            ReplicaRecord(
                name=name,
                pid=pid,
                start_ticks=stat.start_ticks - 1,
                boot_id=_proc.boot_id(),
                argv=["sleep", "60"],
                cmdline=["sleep", "60"],
                cwd="/",
                env={},
                labels={LABEL_CLUSTER: cluster},
            )
        )
    listed = {i.name: i for i in runtime.list_instances(cluster)}
    assert set(listed) == {"recycled-stranger", "recycled-me"}
    for instance in listed.values():
        assert instance.state is InstanceState.EXITED
        assert instance.exit_code is None
        assert runtime.usage(instance.id).memory_bytes == 0
    runtime.stop(listed["recycled-stranger"].id, 0.1)
    runtime.remove(listed["recycled-stranger"].id)
    runtime.stop(listed["recycled-me"].id, 0.1)
    runtime.remove(listed["recycled-me"].id)
    assert stranger.poll() is None, "a process that merely reuses the pid was signalled"
    assert alive(stranger.pid)
    assert runtime.list_instances(cluster) == []


def test_a_replica_outlives_its_creator_and_is_adopted(
    state_dir: Path, workdir: Path, cluster: str
) -> None:
    instance_id = create_from_another_process(
        "node-p",
        state_dir,
        workdir,
        cluster,
        f'ReplicaSpec(name="{cluster}-adopted", image=None, command=("sleep", "60"))',
    )
    pid = int(instance_id.split("-")[0])
    try:
        runtime = ProcessRuntime("node-p", state_dir, workdir=workdir)
        (instance,) = runtime.list_instances(cluster)
        assert instance.id == instance_id
        assert instance.state is InstanceState.RUNNING
        assert alive(pid)
        started = time.monotonic()
        runtime.stop(instance_id, 5.0)
        assert time.monotonic() - started < 2.0  # sleep dies on SIGTERM: no grace wasted
        assert not alive(pid)
        after = runtime.inspect(instance_id)
        # Not our child: the kernel re-parented it, so its exit code cannot be known.
        assert after.state is InstanceState.EXITED
        assert after.exit_code is None
        runtime.remove(instance_id)
        assert runtime.list_instances(cluster) == []
    finally:
        if alive(pid):
            os.killpg(pid, signal.SIGKILL)


@pytest.mark.parametrize("escape", ["..", "../..", "/etc", "sub/../../x", "link-out"])
def test_working_dir_outside_the_root_is_refused(
    runtime: ProcessRuntime, workdir: Path, cluster: str, escape: str
) -> None:
    (workdir / "link-out").symlink_to("/tmp")
    with pytest.raises(WorkingDirOutsideRoot, match="outside the allowed root"):
        runtime.create(spec(f"{cluster}-esc", "sleep", "60", working_dir=escape), cluster)
    assert runtime.list_instances(cluster) == []
    # The refused name was not left claimed.
    assert not (runtime.state_dir / "replicas" / f"{cluster}-esc").exists()


def test_working_dir_inside_the_root_is_the_cwd(
    runtime: ProcessRuntime, workdir: Path, cluster: str
) -> None:
    (workdir / "app" / "data").mkdir(parents=True)
    default = runtime.create(spec(f"{cluster}-root", "sleep", "60"), cluster)
    sub = runtime.create(spec(f"{cluster}-sub", "sleep", "60", working_dir="app/data"), cluster)
    absolute = runtime.create(
        spec(f"{cluster}-abs", "sleep", "60", working_dir=str(workdir / "app")), cluster
    )
    cwd = {i.name: os.readlink(f"/proc/{i.id.split('-')[0]}/cwd") for i in (default, sub, absolute)}
    assert cwd == {
        f"{cluster}-root": str(workdir.resolve()),
        f"{cluster}-sub": str((workdir / "app" / "data").resolve()),
        f"{cluster}-abs": str((workdir / "app").resolve()),
    }


def _limit(pid: int, label: str) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith(label):
            return line[len(label) :].split()[0]
    raise AssertionError(f"{label} not in /proc/{pid}/limits")


def test_a_memory_limit_is_no_rlimit(runtime: ProcessRuntime, cluster: str) -> None:
    """RLIMIT_AS caps address space, not memory: a Python program under a small one cannot
    start threads. Limits are cgroups' (tests/runtime/test_process_cgroups.py)."""
    limited = runtime.create(
        spec(f"{cluster}-lim", "sleep", "60", memory_limit=64 * 1024 * 1024), cluster
    )
    assert _limit(int(limited.id.split("-")[0]), "Max address space") == "unlimited"


def test_an_exited_replica_says_when_it_ended(runtime: ProcessRuntime, cluster: str) -> None:
    """The back-off counts from the exit (decide/service.py): the driver says when."""
    before = time.time()
    instance = runtime.create(spec(f"{cluster}-ends", "sh", "-c", "sleep 0.2; exit 4"), cluster)
    assert instance.finished_at is None  # running
    wait_until("exit", lambda: runtime.inspect(instance.id).state is InstanceState.EXITED)
    time.sleep(0.3)
    (listed,) = [i for i in runtime.list_instances(cluster) if i.id == instance.id]
    assert listed.finished_at is not None
    assert before + 0.2 <= listed.finished_at <= time.time() - 0.3
    assert listed.started_at is not None and listed.started_at <= listed.finished_at


def test_logs_are_one_file_in_order_and_remove_keeps_their_end(
    runtime: ProcessRuntime, state_dir: Path, cluster: str
) -> None:
    script = "echo out-1; echo err-1 >&2; echo out-2; echo err-2 >&2; exit 3"
    instance = runtime.create(spec(f"{cluster}-logs", "sh", "-c", script), cluster)
    wait_until("exit", lambda: runtime.inspect(instance.id).state is InstanceState.EXITED)
    folder = state_dir / "replicas" / instance.name
    assert (folder / "output.log").read_text() == "out-1\nerr-1\nout-2\nerr-2\n"
    assert runtime.logs(instance.id) == "out-1\nerr-1\nout-2\nerr-2\n"
    assert runtime.logs(instance.id, tail=3) == "err-1\nout-2\nerr-2\n"
    assert runtime.logs(instance.id, tail=0) == ""
    record = json.loads((folder / "instance.json").read_text())
    assert record["exit_code"] == 3 and record["exit_reason"] == "exit 3"
    assert (folder / "instance.json").stat().st_mode & 0o077 == 0  # it holds the env
    assert runtime.retained_logs(cluster, "svc") == []
    runtime.remove(instance.id)
    assert not folder.exists()
    (kept,) = runtime.retained_logs(cluster, "svc")
    assert kept.name == instance.name and kept.service == "svc" and kept.node == "node-p"
    assert kept.output == "out-1\nerr-1\nout-2\nerr-2\n" and not kept.truncated
    assert (kept.exit_code, kept.exit_reason) == (3, "exit 3")
    assert kept.started_at is not None and kept.finished_at is not None
    assert kept.started_at <= kept.finished_at <= kept.removed_at
    # Never the env: the facts file holds no value of it.
    (entry,) = (state_dir / "retained" / cluster / "svc").iterdir()
    assert "GITORCH_REPLICA" not in (entry / "facts.json").read_text()


def test_logs_of_a_replica_from_an_earlier_version_are_read(
    runtime: ProcessRuntime, state_dir: Path, cluster: str
) -> None:
    """Replicas started before output.log wrote stdout.log and stderr.log apart."""
    instance = runtime.create(spec(f"{cluster}-old", "sleep", "60"), cluster)
    folder = state_dir / "replicas" / instance.name
    (folder / "output.log").unlink()
    (folder / "stdout.log").write_text("out-1\nout-2\n")
    (folder / "stderr.log").write_text("err-1\n")
    assert runtime.logs(instance.id) == "out-1\nout-2\nerr-1\n"
    runtime.remove(instance.id)
    (kept,) = runtime.retained_logs(cluster, "svc")
    assert kept.output == "out-1\nout-2\nerr-1\n"
    assert kept.exit_reason == "signal 9"  # removed while it ran: killed


def test_only_the_last_five_removed_replicas_of_a_service_are_kept(
    runtime: ProcessRuntime, cluster: str
) -> None:
    big = "import sys\nfor i in range(20000): print(f'line {i:05d} ' + 'x' * 40)\n"
    for number in range(7):
        argv = (sys.executable, "-c", big) if number == 6 else ("sh", "-c", f"echo run-{number}")
        instance = runtime.create(spec(f"{cluster}-r{number}", *argv), cluster)
        wait_until("exit", functools.partial(exited, runtime, instance.id))
        runtime.remove(instance.id)
    kept = runtime.retained_logs(cluster, "svc")
    assert [k.name for k in kept] == [f"{cluster}-r{n}" for n in (6, 5, 4, 3, 2)]
    assert kept[1].output == "run-5\n"
    newest = kept[0]
    assert newest.truncated and 60_000 < len(newest.output.encode()) <= 64 * 1024
    assert newest.output.startswith("line ") and newest.output.endswith(
        "line 19999 " + "x" * 40 + "\n"
    )
    assert runtime.retained_logs(cluster, "other") == []
    assert runtime.retained_logs("another-cluster", "svc") == []


def test_follow_gives_the_tail_then_new_lines_until_the_replica_exits(
    runtime: ProcessRuntime, workdir: Path, cluster: str
) -> None:
    script = "echo a; echo b; echo c; while [ ! -e go ]; do sleep 0.05; done; echo d >&2; printf e"
    instance = runtime.create(spec(f"{cluster}-follow", "sh", "-c", script), cluster)
    wait_until("first lines", lambda: runtime.logs(instance.id).count("\n") == 3)
    lines = runtime.follow_logs(instance.id, tail=2)
    assert [next(lines), next(lines)] == ["b", "c"]
    (workdir / "go").touch()
    started = time.monotonic()
    assert list(lines) == ["d", "e"]  # ends by itself once the replica exited
    assert time.monotonic() - started < 5.0
    with pytest.raises(InstanceNotFound):
        runtime.follow_logs("1-2")


def test_environment_is_clean_plus_spec_plus_ports(
    runtime: ProcessRuntime, cluster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITORCH_DAEMON_SECRET", "must-not-leak")
    instance = runtime.create(
        spec(
            f"{cluster}-env",
            "env",
            env={"APP_MODE": "blue", "PORT": "1"},
            ports=(PortRequest("http", 8080), PortRequest("admin-ui", 9090)),
        ),
        cluster,
    )
    wait_until("exit", lambda: runtime.inspect(instance.id).state is InstanceState.EXITED)
    env = dict(line.split("=", 1) for line in runtime.logs(instance.id).splitlines())
    ports = {p.name: p.host_port for p in instance.ports}
    assert env == {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "APP_MODE": "blue",
        "PORT": str(ports["http"]),  # gitorch's port wins over the spec's
        "PORT_HTTP": str(ports["http"]),
        "PORT_ADMIN_UI": str(ports["admin-ui"]),
        "GITORCH_REPLICA": f"{cluster}-env",  # lets a restarted daemon find it unrecorded
    }
    assert ports["http"] != ports["admin-ui"]


def test_reap_orphans_kills_an_unrecorded_replica_and_keeps_recorded_ones(
    runtime: ProcessRuntime, workdir: Path, cluster: str
) -> None:
    """A daemon killed between spawning a replica and writing its record left a process
    with the replica's marker and a folder without a record: a new runtime kills it."""
    kept = runtime.create(spec(f"{cluster}-kept", "sleep", "60"), cluster)
    name = f"{cluster}-orphan"
    (runtime.state_dir / "replicas" / name).mkdir(parents=True)
    orphan = subprocess.Popen(
        ["sleep", "60"],
        env={**os.environ, "GITORCH_REPLICA": name},
        start_new_session=True,
    )
    marker = f"GITORCH_REPLICA={name}".encode()

    def marked() -> bool:
        try:
            return marker in Path(f"/proc/{orphan.pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return False

    try:
        wait_until("the orphan's environment is visible", marked)
        fresh = ProcessRuntime("node-p", runtime.state_dir, workdir=runtime.workdir)
        assert fresh.reap_orphans() == 1
        assert orphan.wait(timeout=5) == -signal.SIGKILL
        assert not (runtime.state_dir / "replicas" / name).exists()
        assert fresh.inspect(kept.id).state is InstanceState.RUNNING  # recorded: untouched
        assert fresh.reap_orphans() == 0
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()


def test_stop_reaches_the_whole_process_group(
    runtime: ProcessRuntime, workdir: Path, cluster: str
) -> None:
    script = "sleep 60 & echo $! > grandchild.pid; wait"
    instance = runtime.create(spec(f"{cluster}-tree", "sh", "-c", script), cluster)
    pid_file = workdir / "grandchild.pid"
    wait_until("the grandchild", lambda: pid_file.exists() and pid_file.read_text().strip() != "")
    grandchild = int(pid_file.read_text())
    assert alive(grandchild)
    runtime.stop(instance.id, 2.0)
    wait_until("the grandchild to die", lambda: not alive(grandchild), timeout=2.0)
    assert runtime.inspect(instance.id).state is InstanceState.EXITED


def test_exit_codes_are_recorded_and_no_zombie_is_left(
    runtime: ProcessRuntime, cluster: str
) -> None:
    quick = runtime.create(spec(f"{cluster}-exit5", "sh", "-c", "exit 5"), cluster)
    stubborn = runtime.create(
        spec(
            f"{cluster}-stubborn",
            "sh",
            "-c",
            "trap '' TERM; echo trapped; while :; do sleep 0.1; done",
        ),
        cluster,
    )
    wait_until("exit 5", lambda: runtime.inspect(quick.id).state is InstanceState.EXITED)
    # SIGTERM before the shell has installed its trap would end it with 143, not 137.
    wait_until("trap installed", lambda: "trapped" in runtime.logs(stubborn.id))
    runtime.stop(stubborn.id, 0.3)
    # Read back through a brand-new runtime object: the codes are on disk.
    fresh = ProcessRuntime("node-p", runtime.state_dir, workdir=runtime.workdir)
    assert fresh.inspect(quick.id).exit_code == 5
    assert fresh.inspect(stubborn.id).exit_code == 128 + signal.SIGKILL
    wait_until("no zombie children", lambda: zombie_children() == [], timeout=2.0)


def test_a_name_cannot_be_created_twice(runtime: ProcessRuntime, cluster: str) -> None:
    runtime.create(spec(f"{cluster}-dup", "sleep", "60"), cluster)
    with pytest.raises(ReplicaStartFailed, match="already exists"):
        runtime.create(spec(f"{cluster}-dup", "sleep", "60"), cluster)
    assert len(runtime.list_instances(cluster)) == 1


def test_a_command_that_cannot_start_says_why_and_leaves_nothing(
    runtime: ProcessRuntime, workdir: Path, cluster: str
) -> None:
    (workdir / "notes.txt").write_text("hello\n")
    (workdir / "data.bin").write_bytes(b"\x00\x01\x02\x03")
    (workdir / "data.bin").chmod(0o755)
    (workdir / "bin").mkdir()
    cases = {
        "/nonexistent/bin/x": "command /nonexistent/bin/x does not exist",
        "./notes.txt": r"command ./notes.txt is not executable \(mode 0644\)",
        "./data.bin": "command ./data.bin is not a program",
        "./bin": "command ./bin is a folder",
        "no-such-program-anywhere": "command no-such-program-anywhere not found in PATH",
    }
    for number, (command, message) in enumerate(cases.items()):
        (workdir / "notes.txt").chmod(0o644)
        with pytest.raises(ReplicaStartFailed, match=f"^replica {cluster}-c{number}: {message}"):
            runtime.create(spec(f"{cluster}-c{number}", command), cluster)
    with pytest.raises(ReplicaStartFailed, match="working_dir .*/missing does not exist"):
        runtime.create(spec(f"{cluster}-wd", "sleep", "1", working_dir="missing"), cluster)
    with pytest.raises(ReplicaStartFailed, match="working_dir .*/notes.txt is not a folder"):
        runtime.create(spec(f"{cluster}-wf", "sleep", "1", working_dir="notes.txt"), cluster)
    with pytest.raises(
        ReplicaStartFailed,
        match=r"the process driver runs a command, and this service has only an image "
        r"\(busybox:1\): give it a command, or place it on a docker node",
    ):
        runtime.create(ReplicaSpec(name=f"{cluster}-noc", image="busybox:1"), cluster)
    with pytest.raises(ReplicaStartFailed, match="needs a command"):
        runtime.create(ReplicaSpec(name=f"{cluster}-none", image=None), cluster)
    assert runtime.list_instances(cluster) == []
    assert not any((runtime.state_dir / "replicas").glob("*"))
    # A command found through PATH (the replica's own, else the daemon's) still runs.
    ok = runtime.create(spec(f"{cluster}-ok", "true"), cluster)
    wait_until("exit", functools.partial(exited, runtime, ok.id))
    assert runtime.inspect(ok.id).exit_code == 0


def test_usage_counts_a_busy_group(runtime: ProcessRuntime, cluster: str) -> None:
    busy = runtime.create(spec(f"{cluster}-busy", "sh", "-c", "while :; do :; done"), cluster)
    runtime.usage(busy.id)  # first sample
    time.sleep(1.0)
    usage = runtime.usage(busy.id)
    # A busy loop gets a full core on an idle machine, a share of one on a busy one.
    assert usage.cpu_percent > 10.0
    assert usage.memory_bytes > 0


def test_exec_probe_times_out_and_uses_the_replica_cwd(
    runtime: ProcessRuntime, workdir: Path, cluster: str
) -> None:
    (workdir / "marker").write_text("x")
    instance = runtime.create(spec(f"{cluster}-probe", "sleep", "60"), cluster)
    assert runtime.probe(instance, Probe(exec_command=("test", "-f", "marker"))).ok
    slow = runtime.probe(instance, Probe(exec_command=("sleep", "5"), timeout_seconds=0.2))
    assert not slow.ok and "timed out" in slow.message
    assert slow.duration_seconds < 1.0
    missing = runtime.probe(instance, Probe(http_path="/", port=1234))
    assert not missing.ok


def test_is_a_runtime(runtime: ProcessRuntime) -> None:
    assert isinstance(runtime, Runtime)
    info = runtime.node_info()
    assert info.ready and info.driver == "process" and info.memory_bytes > 0


def reaper_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name.startswith("gitorch-reap")}


def test_one_reaper_thread_serves_every_replica(runtime: ProcessRuntime, cluster: str) -> None:
    runtime.create(spec(f"{cluster}-warm", "true"), cluster)  # the reaper thread exists now
    # Counted by name: other tests' threads in this worker may start or end meanwhile.
    before = reaper_threads()
    quick = [
        runtime.create(spec(f"{cluster}-q{i}", "sh", "-c", f"exit {i}"), cluster) for i in range(20)
    ]
    assert reaper_threads() - before == set()
    for i, instance in enumerate(quick):
        wait_until("exit", functools.partial(exited, runtime, instance.id))
        assert runtime.inspect(instance.id).exit_code == i
    wait_until("no zombie children", lambda: zombie_children() == [], timeout=2.0)


def test_an_exit_is_told_to_the_listener_once_its_code_is_recorded(
    runtime: ProcessRuntime, cluster: str
) -> None:
    """The daemon's wake on a replica's death (issue 20): the listener runs after the exit
    code is on disk, so the pass it wakes sees the replica exited."""
    told: list[tuple[str, int | None]] = []
    runtime.on_exit(lambda instance_id: told.append((instance_id, exit_code(instance_id))))

    def exit_code(instance_id: str) -> int | None:
        fresh = ProcessRuntime("node-p", runtime.state_dir, workdir=runtime.workdir)
        return fresh.inspect(instance_id).exit_code

    quick = runtime.create(spec(f"{cluster}-exit3", "sh", "-c", "exit 3"), cluster)
    slow = runtime.create(spec(f"{cluster}-slow", "sleep", "60"), cluster)
    wait_until("the listener told", lambda: told != [])
    assert told == [(quick.id, 3)]
    # An exit gitorch itself asked for is not told: the pass that stops it knows.
    runtime.stop(slow.id, 1.0)
    assert exited(runtime, slow.id)
    time.sleep(0.3)
    assert told == [(quick.id, 3)]


def test_an_adopted_replica_s_exit_is_told_too(
    state_dir: Path, workdir: Path, cluster: str
) -> None:
    """A replica started by an earlier daemon is not our child, but its death wakes the
    daemon all the same (a pidfd), once a pass has listed it; one gitorch stops is not."""
    ids = [
        create_from_another_process(
            "node-p",
            state_dir,
            workdir,
            cluster,
            f'ReplicaSpec(name="{cluster}-adopted{i}", image=None, command=("sleep", "60"))',
        )
        for i in range(2)
    ]
    pids = [int(instance_id.split("-")[0]) for instance_id in ids]
    try:
        runtime = ProcessRuntime("node-p", state_dir, workdir=workdir)
        told: list[str] = []
        runtime.on_exit(told.append)
        assert {i.state for i in runtime.list_instances(cluster)} == {InstanceState.RUNNING}
        runtime.list_instances(cluster)  # a second pass watches nothing twice
        os.kill(pids[0], signal.SIGKILL)
        wait_until("the listener told", lambda: told != [], timeout=5.0)
        assert told == [ids[0]]
        assert runtime.inspect(ids[0]).state is InstanceState.EXITED
        runtime.stop(ids[1], 5.0)
        time.sleep(0.3)
        assert told == [ids[0]]
    finally:
        for pid in pids:
            if alive(pid):
                os.killpg(pid, signal.SIGKILL)


def test_a_listing_hands_out_an_unchanged_replica_s_instance_again(
    runtime: ProcessRuntime, cluster: str
) -> None:
    """The observation of 4,000 replicas reuses what it built of each unchanged one
    (issue 20): the same Instance object while the record and the process are the same;
    a new one once the replica exits, and for a replica listed for the first time."""
    steady = runtime.create(spec(f"{cluster}-steady", "sleep", "60"), cluster)
    ending = runtime.create(spec(f"{cluster}-ending", "sleep", "60"), cluster)
    first = {i.id: i for i in runtime.list_instances(cluster)}
    again = {i.id: i for i in runtime.list_instances(cluster)}
    assert again[steady.id] is first[steady.id]
    assert again[ending.id] is first[ending.id]
    runtime.stop(ending.id, 1.0)
    later = {i.id: i for i in runtime.list_instances(cluster)}
    assert later[steady.id] is first[steady.id]
    assert later[ending.id] is not first[ending.id]
    assert later[ending.id].state is InstanceState.EXITED
    # Another runtime object on the same state builds its own, equal ones.
    other = ProcessRuntime("node-p", runtime.state_dir, workdir=runtime.workdir)
    fresh = {i.id: i for i in other.list_instances(cluster)}
    assert fresh[steady.id] == first[steady.id] and fresh[steady.id] is not first[steady.id]
