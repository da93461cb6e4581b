"""Process-driver limits against the real kernel's cgroups (v1 on the test machines).

Each test runs real replicas in real groups under ``/sys/fs/cgroup/*/gitorch/``: a replica
over its memory limit is OOM-killed and says so, a cpu-limited busy loop gets its quota
and no more, and a Python program starts many threads under 64 MiB (what RLIMIT_AS, the
previous "limit", made fail). A machine where gitorch cannot create groups fails these
tests: that is a missing part, not something to skip.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from runtime_helpers import alive, create_from_another_process, process_spec, wait_until

from gitorch.errors import InstanceNotFound
from gitorch.runtime import _proc
from gitorch.runtime._cgroups import PARENT, CgroupTree
from gitorch.runtime.base import InstanceState
from gitorch.runtime.process import ProcessRuntime, detect_cgroups

REPO = Path(__file__).resolve().parents[2]
MI = 2**20


@pytest.fixture(scope="module")
def tree() -> CgroupTree:
    found = detect_cgroups()
    if found.tree is None:
        pytest.fail(f"cgroups are needed for these tests: {found.limits}")
    return found.tree


@pytest.fixture
def cluster() -> str:
    return f"g{uuid.uuid4().hex[:10]}"


@pytest.fixture
def runtime(tmp_path: Path, cluster: str, tree: CgroupTree) -> Iterator[ProcessRuntime]:
    (tmp_path / "work").mkdir()
    rt = ProcessRuntime("node-g", tmp_path / "state", workdir=tmp_path / "work")
    yield rt
    for instance in rt.list_instances(cluster):
        with contextlib.suppress(InstanceNotFound):
            rt.remove(instance.id)
    # Whatever a test made by hand under the cluster's parent goes too.
    for folder in tree._dirs(f"{PARENT}/{cluster}"):  # noqa: SLF001 (test cleanup)
        if folder.exists():
            for group in sorted(folder.rglob("*"), key=lambda p: -len(p.parts)):
                if group.is_dir():
                    tree.kill(str(group.relative_to(folder.parent.parent)))
                    group.rmdir()
            folder.rmdir()


spec = process_spec


def group_dirs(tree: CgroupTree, group: str) -> list[Path]:
    return tree._dirs(group)  # noqa: SLF001 (the test checks the kernel's files)


def wait_exit(runtime: ProcessRuntime, instance_id: str, timeout: float = 15.0) -> None:
    wait_until(
        "the replica to exit",
        lambda: runtime.inspect(instance_id).state is InstanceState.EXITED,
        timeout,
    )


def test_node_info_says_limits_are_enforced_by_cgroups(runtime: ProcessRuntime) -> None:
    assert runtime.node_info().limits == "cgroup v1 (memory, cpu)"


def test_a_replica_runs_in_its_group_from_its_first_instruction(
    runtime: ProcessRuntime, tree: CgroupTree, cluster: str
) -> None:
    # `cat` reads its own /proc/self/cgroup: the replica's very program, not the launcher.
    instance = runtime.create(
        spec(f"{cluster}-cat", "cat", "/proc/self/cgroup", memory_limit=64 * MI, cpu_limit=0.5),
        cluster,
    )
    wait_exit(runtime, instance.id)
    group = f"{PARENT}/{cluster}/node-g/{cluster}-cat"
    assert runtime.cgroup_of(instance.id) == group
    memberships = dict(
        line.split(":", 2)[1:]
        for line in runtime.logs(instance.id).splitlines()  # type: ignore[misc]
    )
    assert memberships["memory"] == f"/{group}"
    assert memberships["cpu"] == f"/{group}"
    memory, cpu = group_dirs(tree, group)
    assert (memory / "memory.limit_in_bytes").read_text().strip() == str(64 * MI)
    assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "50000"
    assert (cpu / "cpu.cfs_period_us").read_text().strip() == "100000"
    # No RLIMIT_AS anywhere: the cgroup is the limit.
    assert runtime.inspect(instance.id).exit_reason == "exit 0"


def test_over_its_memory_limit_a_replica_is_oom_killed_and_says_so(
    runtime: ProcessRuntime, tree: CgroupTree, cluster: str
) -> None:
    hog = "b = b'x' * (200 * 1024 * 1024)\nprint('survived', flush=True)"
    instance = runtime.create(
        spec(f"{cluster}-hog", sys.executable, "-c", hog, memory_limit=64 * MI), cluster
    )
    wait_exit(runtime, instance.id)
    exited = runtime.inspect(instance.id)
    assert (exited.exit_code, exited.exit_reason) == (128 + signal.SIGKILL, "OOMKilled")
    assert "survived" not in runtime.logs(instance.id)
    group = runtime.cgroup_of(instance.id)
    assert group is not None
    assert tree.oom_kills(group) == 1
    # The same program with room to spare is not killed: the limit is what killed it.
    roomy = runtime.create(
        spec(f"{cluster}-roomy", sys.executable, "-c", hog, memory_limit=400 * MI), cluster
    )
    wait_exit(runtime, roomy.id)
    assert runtime.inspect(roomy.id).exit_reason == "exit 0"
    # What is kept after removal says why it died.
    runtime.remove(instance.id)
    (kept,) = runtime.retained_logs(cluster, "svc")
    assert kept.exit_reason == "OOMKilled"


def test_a_cpu_limited_busy_loop_gets_about_its_quota(
    runtime: ProcessRuntime, tree: CgroupTree, cluster: str
) -> None:
    # 0.05 cores: 5 ms per 100 ms period. Small on purpose: even on this shared machine
    # under heavy load (a load average of 18 leaves one task ~0.1 core) the loop can reach
    # its quota, so the kernel must throttle it, every period or nearly.
    instance = runtime.create(
        spec(f"{cluster}-busy", "sh", "-c", "while :; do :; done", cpu_limit=0.05), cluster
    )
    pid = int(instance.id.split("-")[0])
    cpu_dir = group_dirs(tree, f"{PARENT}/{cluster}/node-g/{cluster}-busy")[1]
    before = _proc.read_stat(pid)
    started = time.monotonic()
    time.sleep(4.0)
    after = _proc.read_stat(pid)
    elapsed = time.monotonic() - started
    assert before is not None and after is not None
    used = (after.utime + after.stime - before.utime - before.stime) / _proc.CLOCK_TICKS
    share = used / elapsed
    # An unlimited busy loop takes a whole core (see test_process.py's usage test).
    assert 0.025 <= share <= 0.07, f"a 0.05-core quota used {share:.3f} cores"
    stat = dict(line.split() for line in (cpu_dir / "cpu.stat").read_text().splitlines())
    assert int(stat["nr_throttled"]) >= 20, stat


def test_a_python_program_starts_many_threads_under_64mi(
    runtime: ProcessRuntime, cluster: str
) -> None:
    """Under RLIMIT_AS=64Mi this failed: each thread reserves an 8 MiB stack of address
    space ("can't start new thread"), though it uses a few KiB of memory."""
    threads = (
        "import threading, time\n"
        "ts = [threading.Thread(target=time.sleep, args=(0.5,)) for _ in range(100)]\n"
        "[t.start() for t in ts]\n"
        "print('started', len(ts), flush=True)\n"
        "[t.join() for t in ts]\n"
    )
    instance = runtime.create(
        spec(f"{cluster}-threads", sys.executable, "-c", threads, memory_limit=64 * MI), cluster
    )
    wait_exit(runtime, instance.id)
    assert runtime.logs(instance.id) == "started 100\n"
    assert runtime.inspect(instance.id).exit_reason == "exit 0"


def test_the_group_goes_with_the_replica_and_takes_escaped_processes_along(
    runtime: ProcessRuntime, tree: CgroupTree, cluster: str, tmp_path: Path
) -> None:
    # A grandchild in a session of its own is out of the replica's process group: before
    # cgroups, stopping the replica left it running.
    script = "setsid sleep 60 & echo $! > escaped.pid; wait"
    instance = runtime.create(spec(f"{cluster}-esc", "sh", "-c", script), cluster)
    pid_file = tmp_path / "work" / "escaped.pid"
    wait_until("the escaped grandchild", lambda: pid_file.exists() and pid_file.read_text() != "")
    escaped = int(pid_file.read_text())
    group = f"{PARENT}/{cluster}/node-g/{cluster}-esc"
    assert escaped in tree.pids(group)
    other = runtime.create(spec(f"{cluster}-other", "sleep", "60"), cluster)

    runtime.stop(instance.id, 2.0)
    wait_until("the escaped grandchild to die", lambda: not alive(escaped), timeout=5)
    runtime.remove(instance.id)

    assert not any(d.exists() for d in group_dirs(tree, group))
    node_parent = group_dirs(tree, f"{PARENT}/{cluster}/node-g")
    assert all(d.exists() for d in node_parent)  # another replica still lives there
    runtime.remove(other.id)
    assert not any(d.exists() for d in group_dirs(tree, f"{PARENT}/{cluster}"))
    assert all(d.exists() for d in group_dirs(tree, PARENT))


def test_an_oom_kill_is_known_after_a_daemon_restart(
    tmp_path: Path, tree: CgroupTree, cluster: str, runtime: ProcessRuntime
) -> None:
    """The replica is OOM-killed while no daemon is its parent: its exit code is lost,
    the group still knows why it died."""
    hog = "import time; time.sleep(1); b = b'x' * (200 * 1024 * 1024)"
    instance_id = create_from_another_process(
        "node-g",
        tmp_path / "state",
        tmp_path / "work",
        cluster,
        f"ReplicaSpec(name='{cluster}-late', image=None, "
        f"command=(sys.executable, '-c', {hog!r}), memory_limit=64 * 2**20)",
    )
    wait_exit(runtime, instance_id)
    after = runtime.inspect(instance_id)
    assert (after.exit_code, after.exit_reason) == (None, "OOMKilled")


def test_orphaned_groups_are_cleaned_up(
    runtime: ProcessRuntime, tree: CgroupTree, cluster: str
) -> None:
    kept = runtime.create(spec(f"{cluster}-kept", "sleep", "60"), cluster)
    # 1. A daemon killed between announcing a replica's group and writing its record:
    #    a folder with the group's name but no record, and a process already in it.
    pending = f"{cluster}-pending"
    pending_group = f"{PARENT}/{cluster}/node-g/{pending}"
    folder = runtime.state_dir / "replicas" / pending
    folder.mkdir()
    (folder / "cgroup").write_text(pending_group + "\n")
    # 2. A group nobody claims at all (its folder deleted by hand).
    stray_group = f"{PARENT}/{cluster}/node-g/{cluster}-stray"
    sleepers = []
    for group in (pending_group, stray_group):
        files = tree.create(group, memory_bytes=32 * MI)
        joined = ";".join(f"echo $$ > {f}" for f in files)
        sleepers.append(subprocess.Popen(["sh", "-c", f"{joined}; exec sleep 60"]))
    try:
        wait_until(
            "both sleepers in their groups",
            lambda: all(tree.pids(g) for g in (pending_group, stray_group)),
        )
        fresh = ProcessRuntime("node-g", runtime.state_dir, workdir=runtime.workdir)
        assert fresh.reap_orphans() == 2
        for sleeper in sleepers:
            assert sleeper.wait(timeout=5) == -signal.SIGKILL
        for group in (pending_group, stray_group):
            assert not any(d.exists() for d in group_dirs(tree, group))
        assert not folder.exists()
        assert fresh.inspect(kept.id).state is InstanceState.RUNNING  # recorded: untouched
        assert tree.pids(f"{PARENT}/{cluster}/node-g/{cluster}-kept")
        assert fresh.reap_orphans() == 0
    finally:
        for sleeper in sleepers:
            if sleeper.poll() is None:
                sleeper.kill()
                sleeper.wait()


def test_without_cgroups_limits_are_recorded_not_enforced(tmp_path: Path, cluster: str) -> None:
    (tmp_path / "free").mkdir()
    runtime = ProcessRuntime(
        "node-g", tmp_path / "free-state", workdir=tmp_path / "free", cgroups=None
    )
    assert runtime.node_info().limits == "not enforced: cgroups turned off"
    hog = "b = b'x' * (200 * 1024 * 1024)\nprint('survived', flush=True)"
    instance = runtime.create(
        spec(f"{cluster}-free", sys.executable, "-c", hog, memory_limit=64 * MI), cluster
    )
    try:
        wait_exit(runtime, instance.id)
        # Not killed, and no RLIMIT_AS made the allocation fail instead.
        assert runtime.logs(instance.id) == "survived\n"
        assert runtime.inspect(instance.id).exit_reason == "exit 0"
        assert runtime.cgroup_of(instance.id) is None
    finally:
        runtime.remove(instance.id)
