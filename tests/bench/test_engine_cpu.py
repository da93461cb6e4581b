"""``bench_rollout.py --engine-cpu``'s accounting (bench/engine_cpu.py) against the real
engine: a container's start and removal count as the engine's CPU, and the engine's
processes are back in their own cgroups afterwards, the bench's group gone."""

from __future__ import annotations

import subprocess
from pathlib import Path

from engine_cpu import EngineCpu, engine_pids, machine_busy
from reconciler_helpers import build_example_images, require_docker_engine

IMAGE = "gitorch-example/api:1"


def _engine_cgroups() -> dict[int, str]:
    return {pid: Path(f"/proc/{pid}/cgroup").read_text() for pid in engine_pids()}


def test_a_start_and_a_removal_count_and_the_engine_goes_back_where_it_was() -> None:
    require_docker_engine()
    build_example_images()
    before = _engine_cgroups()
    with EngineCpu() as engine:
        assert engine.group.is_dir()
        moved = _engine_cgroups()
        assert moved != before  # accounting needs them in the bench's group
        idle = engine.seconds()
        busy_before = machine_busy()
        done = subprocess.run(
            ["docker", "run", "--rm", IMAGE, "/bin/sh", "-c", "exit 0"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        used = engine.seconds() - idle
        busy_after = machine_busy()
    # A start and a removal cost the engine tens of milliseconds at the least.
    assert used > 0.01, used
    assert busy_after[0] > busy_before[0] and busy_after[1] > busy_before[1]
    assert _engine_cgroups() == before
    assert not engine.group.exists()
