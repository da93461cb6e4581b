"""Observe-live-state benchmark: ``gitorch.live.observe()`` over many running replicas.

    python3 bench/bench_observe.py [--count 500] [--runs 9] [--docker-count 50] [--no-docker]

Starts ``--count`` idle replicas (``/bin/sleep 600``) on the process driver, spread over
10 services that each have a rollout record in a real state store, then times
``observe()`` exactly as ``gitorch status`` calls it (fresh ``ProcessRuntime`` objects,
one read-only ``StateStore``), ``--runs`` times, and reports the median next to
the floor: the same run's cost of just reading the driver's bookkeeping, i.e. listing
``replicas/``, ``json.load`` of every ``instance.json`` and one ``/proc/<pid>/stat`` read per
replica (what any observer of these processes has to do). Goal: observe() < 200 ms.

When a Docker engine answers, ``--docker-count`` containers (the contract suite's
``graceful`` busybox image) are started too and observe() on that node is timed (printed
only, no goal). Everything started is removed at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from verdicts import emit  # noqa: E402

from gitorch.live import NodeTarget, cluster_name, observe  # noqa: E402
from gitorch.live.inventory import runtime_dir  # noqa: E402 (the repo path is set above)
from gitorch.manifests import ManifestLoader, Service  # noqa: E402
from gitorch.runtime.base import (  # noqa: E402
    LABEL_REPLICA,
    LABEL_REVISION,
    LABEL_SERVICE,
    LABEL_SPEC_DIGEST,
    ReplicaSpec,
    Runtime,
)
from gitorch.state import RolloutPhase, RolloutRecord, StateStore  # noqa: E402

GOAL_MS = 200.0
SERVICES = 10
REVISION = "b" * 40
DOCKER_ENDPOINT = "unix:///var/run/docker.sock"


class _File:
    """A manifest file as ManifestLoader reads it."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.data = text.encode()
        self.blob_id = path


def services(count: int, driver: str, image: str | None = None) -> list[Service]:
    """``SERVICES`` services sharing ``count`` replicas, loaded through the real loader."""
    files = []
    for i in range(SERVICES):
        replicas = count // SERVICES + (1 if i < count % SERVICES else 0)
        run = f"image: {image}" if driver == "docker" else 'command: ["/bin/sleep", "600"]'
        files.append(
            _File(
                f"svc{i}.yaml",
                "apiVersion: gitorch.dev/v1\nkind: Service\n"
                f"metadata: {{name: svc{i}}}\nspec:\n  {run}\n  replicas: {replicas}\n"
                "  resources: {requests: {cpu: 10m, memory: 8Mi}}\n",
            )
        )
    loaded = ManifestLoader().load(files, revision=REVISION)
    assert loaded.state is not None, loaded.diagnostics
    return list(loaded.state.services.values())


def start_all(runtime: Runtime, cluster: str, wanted: list[Service], store: StateStore) -> int:
    """Create every replica of ``wanted`` and record each service's rollout."""
    started = 0
    for service in wanted:
        store.upsert_rollout(
            RolloutRecord(
                service=service.name,
                revision=REVISION,
                spec_digest=service.template_digest,
                strategy="RollingUpdate",
                phase=RolloutPhase.HEALTHY,
                spec=dict(service.canonical),
            )
        )
        for number in range(1, service.replicas + 1):
            spec = ReplicaSpec(
                name=f"{cluster}-{service.name}-{number}",
                image=service.image,
                command=service.command,
                labels={
                    LABEL_SERVICE: service.name,
                    LABEL_REPLICA: str(number),
                    LABEL_REVISION: REVISION,
                    LABEL_SPEC_DIGEST: service.template_digest,
                },
                stop_grace_seconds=1.0,
            )
            runtime.create(spec, cluster)
            started += 1
    return started


def remove_all(runtime: Runtime, cluster: str) -> int:
    removed = 0
    for instance in runtime.list_instances(cluster):
        with contextlib.suppress(Exception):  # cleanup goes on whatever one removal says
            runtime.remove(instance.id)
            removed += 1
    return removed


def timed(fns: list[Callable[[], object]], runs: int) -> list[list[float]]:
    """Milliseconds of ``runs`` calls of each of ``fns``, interleaved call by call so that
    load changes on a shared machine hit all of them alike (one uncounted warm-up each)."""
    for fn in fns:
        fn()
    out: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for fn, times in zip(fns, out, strict=True):
            started = time.perf_counter()
            fn()
            times.append((time.perf_counter() - started) * 1000)
    return out


def floor_read(replicas_dir: Path) -> int:
    """The floor: list the records, load each, read each process's /proc stat."""
    alive = 0
    for name in os.listdir(replicas_dir):
        try:
            with open(replicas_dir / name / "instance.json", encoding="utf-8") as file:
                record = json.load(file)
            with open(f"/proc/{record['pid']}/stat", encoding="ascii") as stat:
                stat.read()
            alive += 1
        except (OSError, ValueError, KeyError):
            continue
    return alive


def summary(label: str, values: list[float]) -> str:
    return (
        f"  {label:<34} median {statistics.median(values):7.1f} ms   "
        f"min {min(values):6.1f}   max {max(values):6.1f}   n={len(values)}"
    )


@contextlib.contextmanager
def cleanup_on_exit(runtime: Runtime, cluster: str, what: str) -> Iterator[None]:
    try:
        yield
    finally:
        started = time.perf_counter()
        removed = remove_all(runtime, cluster)
        seconds = time.perf_counter() - started
        print(f"  cleanup: removed {removed} {what} in {seconds:.1f} s")


def bench_process(count: int, runs: int, scratch: Path) -> bool:
    from gitorch.runtime.process import ProcessRuntime

    state = scratch / "state"
    node = "bench-node"
    cluster = cluster_name(state)
    folder = runtime_dir(state, node)
    runtime = ProcessRuntime(node, folder)
    target = NodeTarget(name=node, driver="process")
    print(f"process driver, {count} running replicas (/bin/sleep 600) in {SERVICES} services:")
    with cleanup_on_exit(runtime, cluster, "replicas"):
        started = time.perf_counter()
        with StateStore(state) as store:
            made = start_all(runtime, cluster, services(count, "process"), store)
        print(f"  started {made} replicas in {time.perf_counter() - started:.1f} s")
        with StateStore(state, readonly=True) as store:

            def once() -> None:
                # as `gitorch status` does: a fresh runtime object per observation
                live = observe([target], {node: ProcessRuntime(node, folder)}, cluster, store)
                running = sum(len(s.running) for s in live.services.values())
                assert running == made, f"observed {running} running of {made}"

            observed, listed, floor = timed(
                [
                    once,
                    lambda: ProcessRuntime(node, folder).list_instances(cluster),
                    lambda: floor_read(folder / "replicas"),
                ],
                runs,
            )
        assert floor_read(folder / "replicas") == made
        median = statistics.median(observed)
        ratio = median / statistics.median(floor)
        print(summary("observe()", observed))
        print(summary("of which list_instances() alone", listed))
        print(summary("floor: listdir + json + /proc", floor))
        verdict = "OK" if median < GOAL_MS else "OVER GOAL"
        print(f"  ratio of medians {ratio:.2f}x; goal observe() < {GOAL_MS:.0f} ms: {verdict}")
        emit(
            f"observe(), process driver, {count} running replicas, median",
            f"{median:.1f} ms",
            against=f"listdir + json + /proc ({statistics.median(floor):.1f} ms)",
            ratio=f"{ratio:.2f}x",
            goal=f"< {GOAL_MS:.0f} ms",
            met=median < GOAL_MS,
        )
    return median < GOAL_MS


def docker_image(scratch: Path) -> str:
    """The contract suite's ``graceful`` image, built by that suite's own builder."""
    import docker

    path = REPO / "tests" / "runtime" / "runtime_helpers.py"
    module_spec = importlib.util.spec_from_file_location("_runtime_test_images", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module  # dataclasses look their module up there
    module_spec.loader.exec_module(module)
    client = docker.DockerClient(base_url=DOCKER_ENDPOINT, timeout=60)
    try:
        return str(module.build_test_images(client, scratch)["graceful"])
    finally:
        client.close()


def bench_docker(count: int, runs: int, scratch: Path) -> None:
    from gitorch.runtime import docker_available
    from gitorch.runtime.docker import DockerRuntime

    if not docker_available(timeout=2.0):
        print(f"docker driver: skipped (no engine answers at {DOCKER_ENDPOINT})")
        return
    image = docker_image(scratch)
    state = scratch / "docker-state"
    node = "bench-docker"
    cluster = cluster_name(state)
    runtime = DockerRuntime(node, DOCKER_ENDPOINT, timeout=30.0)
    target = NodeTarget(name=node, driver="docker", endpoint=DOCKER_ENDPOINT)
    print(f"docker driver, {count} running containers ({image}) in {SERVICES} services:")
    with cleanup_on_exit(runtime, cluster, "containers"):
        started = time.perf_counter()
        with StateStore(state) as store:
            made = start_all(runtime, cluster, services(count, "docker", image), store)
        print(f"  started {made} containers in {time.perf_counter() - started:.1f} s")
        with StateStore(state, readonly=True) as store:

            def once() -> None:
                live = observe(
                    [target], {node: DockerRuntime(node, DOCKER_ENDPOINT)}, cluster, store
                )
                running = sum(len(s.running) for s in live.services.values())
                assert running == made, f"observed {running} running of {made}"

            (observed,) = timed([once], runs)
            print(summary("observe() (print only)", observed))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=500, help="process replicas (500)")
    parser.add_argument("--runs", type=int, default=9, help="timed observations (9)")
    parser.add_argument("--docker-count", type=int, default=50, help="containers (50)")
    parser.add_argument("--no-docker", action="store_true", help="skip the docker part")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gitorch-bench-observe-") as tmp:
        scratch = Path(tmp)
        ok = bench_process(args.count, args.runs, scratch)
        if args.no_docker:
            print("docker driver: skipped (--no-docker)")
        else:
            bench_docker(args.docker_count, args.runs, scratch)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
