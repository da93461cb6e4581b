"""The cgroup layer's logic: mountinfo parsing, layout detection, and the files written
for each layout, on fake trees in tmp_path.

cgroup v2 is only ever exercised here, on a fake tree: the machines this project is built
and tested on run cgroup v1 (``tests/runtime/test_process_cgroups.py`` runs v1 against the
real kernel). A fake tree is plain files: it checks which files are written with what,
not what a kernel does with them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gitorch.runtime._cgroups import (
    PARENT,
    CgroupV1,
    CgroupV2,
    cpu_quota_us,
    detect,
    parse_mountinfo,
    tree_from_mounts,
)

#: /proc/self/mountinfo of the test machines (cgroup v1, plus an empty v2 tree: "hybrid").
HYBRID = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
#: A systemd machine with co-mounted cpu,cpuacct (Debian 10, CentOS 7).
COMOUNTED = """\
30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:12 - cgroup cgroup rw,cpu,cpuacct
31 25 0:27 / /sys/fs/cgroup/memory rw,nosuid shared:13 - cgroup cgroup rw,memory
"""


def fake_v2(root: Path, controllers: str = "cpuset cpu io memory pids") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cgroup.subtree_control").write_text("")
    return root


def mountinfo(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mountinfo"
    path.write_text(text)
    return path


def test_mountinfo_lists_cgroup_mounts_with_their_controllers() -> None:
    mounts = parse_mountinfo(HYBRID)
    assert [(str(m.path), m.version) for m in mounts] == [
        ("/sys/fs/cgroup/cpu", 1),
        ("/sys/fs/cgroup/cpuacct", 1),
        ("/sys/fs/cgroup/memory", 1),
        ("/sys/fs/cgroup/systemd", 1),
        ("/sys/fs/cgroup/unified", 2),
    ]
    assert mounts[0].options == {"rw", "cpu"}
    # Optional fields ("shared:12") before the separator, and escaped mount points.
    (cpu, memory) = parse_mountinfo(COMOUNTED)
    assert str(cpu.path) == "/sys/fs/cgroup/cpu,cpuacct" and {"cpu", "cpuacct"} <= cpu.options
    (spaced,) = parse_mountinfo("1 2 0:1 / /mnt/my\\040cgroups rw - cgroup2 none rw\n")
    assert str(spaced.path) == "/mnt/my cgroups"


def test_v1_wins_when_it_has_the_memory_controller() -> None:
    tree = tree_from_mounts(parse_mountinfo(HYBRID))
    assert isinstance(tree, CgroupV1)
    assert tree.controllers == ("memory", "cpu")
    assert tree.describe() == "cgroup v1 (memory, cpu)"
    assert tree.procs_files("gitorch/c/n/r") == [
        Path("/sys/fs/cgroup/memory/gitorch/c/n/r/cgroup.procs"),
        Path("/sys/fs/cgroup/cpu/gitorch/c/n/r/cgroup.procs"),
    ]


def test_v2_is_used_when_the_unified_tree_has_the_controllers(tmp_path: Path) -> None:
    root = fake_v2(tmp_path / "unified")
    tree = tree_from_mounts(parse_mountinfo(f"1 2 0:1 / {root} rw - cgroup2 cgroup2 rw\n"))
    assert isinstance(tree, CgroupV2) and tree.controllers == ("memory", "cpu")
    assert tree.describe() == "cgroup v2 (memory, cpu)"
    # A unified tree without the memory controller (hybrid machines) offers nothing.
    bare = fake_v2(tmp_path / "bare", controllers="")
    assert tree_from_mounts(parse_mountinfo(f"1 2 0:1 / {bare} rw - cgroup2 x rw\n")) is None


def test_v2_group_path_and_files(tmp_path: Path) -> None:
    root = fake_v2(tmp_path / "cg")
    tree = CgroupV2(root, ("memory", "cpu"))
    group = f"{PARENT}/clu/node-a/clu-web-1"
    # Files the kernel would create in the leaf; the fake tree needs them made by hand.
    leaf = root / group
    leaf.mkdir(parents=True)
    for name in ("memory.swap.max", "memory.oom.group"):
        (leaf / name).write_text("max\n")

    files = tree.create(group, memory_bytes=64 * 2**20, cpu_cores=0.5)

    assert files == [leaf / "cgroup.procs"]
    assert (leaf / "memory.max").read_text() == str(64 * 2**20)
    assert (leaf / "memory.swap.max").read_text() == "0"
    assert (leaf / "memory.oom.group").read_text() == "1"
    assert (leaf / "cpu.max").read_text() == "50000 100000"
    # Every ancestor lets its children use both controllers; the leaf enables nothing.
    for ancestor in ("", PARENT, f"{PARENT}/clu", f"{PARENT}/clu/node-a"):
        assert (root / ancestor / "cgroup.subtree_control").read_text() == "+memory +cpu"
    assert not (leaf / "cgroup.subtree_control").exists()
    # No limit asked: no limit file written.
    tree.create(f"{PARENT}/clu/node-a/free")
    assert not (root / PARENT / "clu/node-a/free/memory.max").exists()
    assert not (root / PARENT / "clu/node-a/free/cpu.max").exists()


def test_v2_oom_kills_are_read_from_memory_events(tmp_path: Path) -> None:
    tree = CgroupV2(fake_v2(tmp_path / "cg"), ("memory",))
    tree.create("gitorch/c/n/r")
    assert tree.oom_kills("gitorch/c/n/r") is None  # no memory.events: unknown
    (tmp_path / "cg/gitorch/c/n/r/memory.events").write_text(
        "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n"
    )
    assert tree.oom_kills("gitorch/c/n/r") == 1


def test_v2_kill_uses_cgroup_kill(tmp_path: Path) -> None:
    root = fake_v2(tmp_path / "cg")
    tree = CgroupV2(root, ("memory", "cpu"))
    tree.create("gitorch/c/n/a")
    (root / "gitorch/c/n/a/cgroup.kill").write_text("")
    assert tree.kill("gitorch/c/n/a")  # cgroup.procs is empty: done at once
    assert (root / "gitorch/c/n/a/cgroup.kill").read_text() == "1"


def test_remove_prunes_emptied_ancestors_but_not_the_parent(tmp_path: Path) -> None:
    root = fake_v2(tmp_path / "cg")
    tree = CgroupV2(root, ("memory", "cpu"))
    for name in ("a", "b"):
        tree.create(f"gitorch/c/n/{name}")

    def empty(folder: str) -> None:
        # A kernel group is removed with its files; fake folders must be emptied first.
        for file in (root / folder).iterdir():
            if file.is_file():
                file.unlink()

    empty("gitorch/c/n/a")
    tree.remove("gitorch/c/n/a")
    assert not (root / "gitorch/c/n/a").exists() and (root / "gitorch/c/n/b").exists()
    for folder in ("gitorch/c/n/b", "gitorch/c/n", "gitorch/c"):
        empty(folder)
    tree.remove("gitorch/c/n/b")
    # Emptied ancestors go, the top-level group stays (as Docker keeps "docker").
    assert not (root / "gitorch/c").exists() and (root / PARENT).is_dir()
    tree.remove("gitorch/c/n/gone")  # nothing there: fine


def test_detect_creates_the_parent_group_and_reports_the_layout(tmp_path: Path) -> None:
    root = fake_v2(tmp_path / "cg")
    found = detect(mountinfo(tmp_path, f"1 2 0:1 / {root} rw - cgroup2 cgroup2 rw\n"))
    assert found.limits == "cgroup v2 (memory, cpu)" and isinstance(found.tree, CgroupV2)
    assert (root / PARENT).is_dir()
    assert (root / "cgroup.subtree_control").read_text() == "+memory +cpu"
    assert (root / PARENT / "cgroup.subtree_control").read_text() == "+memory +cpu"


def test_detect_without_a_usable_cgroup_says_why(tmp_path: Path) -> None:
    none = detect(mountinfo(tmp_path, "22 27 0:21 / /proc rw - proc proc rw\n"))
    assert none.tree is None
    assert none.limits == "not enforced: no cgroup memory controller is mounted"
    # A memory hierarchy where no group can be made (here: /proc/self, where mkdir fails).
    readonly = detect(mountinfo(tmp_path, "1 2 0:1 / /proc/self rw - cgroup cgroup rw,memory\n"))
    assert readonly.tree is None
    assert readonly.limits.startswith("not enforced: no writable cgroup (cgroup v1: /proc/self/")
    missing = detect(tmp_path / "no-mountinfo")
    assert missing.tree is None and missing.limits.startswith("not enforced: cannot read")


@pytest.mark.parametrize(
    ("cores", "quota"), [(0.5, 50_000), (2, 200_000), (0.001, 1_000), (0.0001, 1_000)]
)
def test_cpu_quota(cores: float, quota: int) -> None:
    assert cpu_quota_us(cores) == quota
