"""Planning benchmark: 2,000 Services live, 1% of them changed in Git, how long is the plan?

    python3 bench/bench_plan.py [--services 2000] [--files 200] [--nodes 50] [--rounds 5]

The desired state is bench_load.py's synthetic repo (imported, not copied); 1% of its
Services get a new image tag. The live state is built as data, no runtime involved: every
Service of the old revision in the inventory with its canonical object, and each with its
``replicas`` running replicas (labelled with the applied template digest) spread over
``--nodes`` nodes. Prints, in one run (medians of --rounds, floor and plan interleaved round by round):

  floor        gitorch load + validate of the changed desired state, cold loader
               (what bench_load.py calls "load": every plan pays it first)
  plan         compute_plan(desired, live): field diffs, drift, placements, rollout steps
  ratio        plan / floor                       (goal: planning adds < 50% to loading)
  peak memory  of one compute_plan, by tracemalloc (a separate, untimed run: tracing
               slows Python down), and the growth of the process's max RSS (goal < 300 MB)
"""

from __future__ import annotations

import argparse
import resource
import sys
import tracemalloc
from pathlib import Path
from types import MappingProxyType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_load import interleaved, make_files, service_text  # noqa: E402
from verdicts import emit  # noqa: E402

from gitorch.diff import Plan, compute_plan  # noqa: E402
from gitorch.live.model import (  # noqa: E402
    AppliedObject,
    AppliedSpec,
    LiveNode,
    LiveReplica,
    LiveService,
    LiveState,
)
from gitorch.manifests import DesiredState, ManifestLoader  # noqa: E402
from gitorch.sources import ManifestFile  # noqa: E402
from gitorch.sources._paths import git_blob_id  # noqa: E402

OLD_REVISION = "a" * 40
NEW_REVISION = "b" * 40
NODE_CPU_MILLIS = 64_000
NODE_MEMORY = 256 * 2**30


def manifest_files(contents: dict[str, bytes]) -> list[ManifestFile]:
    return [ManifestFile(path, git_blob_id(data), data) for path, data in sorted(contents.items())]


def changed_contents(
    contents: dict[str, bytes], services: int, files: int, every: int
) -> tuple[dict[str, bytes], set[str]]:
    """The repo with every ``every``-th Service's image at version 2."""
    per_file = services // files
    out = dict(contents)
    changed: set[str] = set()
    for f in range(files):
        texts = []
        for k in range(per_file):
            i = f * per_file + k
            bump = i % every == every // 2
            texts.append(service_text(i, version=2 if bump else 1))
            if bump:
                changed.add(f"svc-{i}")
        out[f"apps/team-{f:03d}.yaml"] = "".join(texts).encode()
    return out, changed


def load(contents: dict[str, bytes], revision: str) -> DesiredState:
    result = ManifestLoader().load(manifest_files(contents), revision=revision)
    assert result.state is not None, result.diagnostics[:3]
    return result.state


def live_state(desired: DesiredState, nodes: int) -> LiveState:
    """What is live after ``desired`` was applied and converged: inventory and replicas."""
    node_names = [f"node-{n:03d}" for n in range(nodes)]
    live_nodes = {
        name: LiveNode(
            name=name,
            driver="docker",
            ready=True,
            address="127.0.0.1",
            cpu_millis=NODE_CPU_MILLIS,
            memory_bytes=NODE_MEMORY,
            labels=MappingProxyType({"node": name, "zone": f"zone-{n % 3}"}),
        )
        for n, name in enumerate(node_names)
    }
    services: dict[str, LiveService] = {}
    inventory: dict[tuple[str, str], AppliedObject] = {}
    slot = 0
    for name, service in desired.services.items():
        replicas = []
        for index in range(1, service.replicas + 1):
            node = node_names[slot % nodes]
            slot += 1
            replicas.append(
                LiveReplica(
                    id=f"{name}-{index}-id",
                    name=f"bench-{name}-{index}",
                    service=name,
                    replica=f"{name}-{index}",
                    node=node,
                    revision=desired.revision,
                    template_digest=service.template_digest,
                    state="running",
                    image=service.image,
                    address=f"127.0.0.1:{20000 + slot}",
                    started_at=1.0,
                )
            )
        services[name] = LiveService(
            name,
            AppliedSpec(
                revision=desired.revision,
                digest=service.template_digest,
                canonical=service.canonical,
                phase="Healthy",
            ),
            tuple(replicas),
        )
        inventory[("Service", name)] = AppliedObject(
            "Service", name, desired.revision, service.digest, service.canonical
        )
    return LiveState(
        cluster="bench",
        observed_at=0.0,
        nodes=MappingProxyType(live_nodes),
        services=MappingProxyType(services),
        last_applied_revision=desired.revision,
        inventory=MappingProxyType(inventory),
    )


def check(plan: Plan, changed: set[str]) -> None:
    """The plan is the one expected: exactly the changed Services, image only, no drift."""
    assert {c.name for c in plan.changes} == changed, sorted(c.name for c in plan.changes)[:5]
    assert all([d.path for d in c.diff] == ["spec.image"] for c in plan.changes)
    assert not plan.drift and not plan.unschedulable, (plan.drift[:2], plan.unschedulable[:2])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", type=int, default=2000)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--changed-every", type=int, default=100, help="1 in N changed (1%%)")
    args = parser.parse_args()

    old_contents = make_files(args.services, args.files)
    new_contents, changed = changed_contents(
        old_contents, args.services, args.files, args.changed_every
    )
    live = live_state(load(old_contents, OLD_REVISION), args.nodes)
    desired = load(new_contents, NEW_REVISION)
    check(compute_plan(desired, live), changed)

    # Interleaved round by round, so that load from other work hits both sides alike.
    times = interleaved(
        {
            "floor": lambda: load(new_contents, NEW_REVISION),
            "plan": lambda: compute_plan(desired, live),
        },
        args.rounds,
    )
    floor_s, plan_s = times["floor"], times["plan"]

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    tracemalloc.start()
    plan = compute_plan(desired, live)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before

    replicas = sum(len(s.replicas) for s in live.services.values())
    print(
        f"live: {len(live.services)} Services, {replicas} running replicas on {args.nodes} nodes; "
        f"desired: {len(changed)} Services changed ({len(changed) / args.services:.0%}), "
        f"{len(plan.placements)} replicas to place"
    )
    print(f"{'measure':48} {'seconds':>9} {'ratio':>8}")
    print(f"{'floor: gitorch load + validate, cold':48} {floor_s:9.3f} {'1.00x':>8}")
    print(
        f"{'compute_plan (diff, drift, placement, rollout)':48} {plan_s:9.3f} "
        f"{plan_s / floor_s:7.1%}  of floor (goal < 50%)"
    )
    print(
        f"{'peak memory of compute_plan (tracemalloc)':48} {peak / 2**20:8.1f} MB"
        f"  (goal < 300 MB; max RSS grew {rss_growth / 1024:.1f} MB during it)"
    )
    emit(
        "compute_plan (diff, drift, placement, rollout)",
        f"{plan_s:.3f} s",
        against=f"gitorch load + validate, cold ({floor_s:.3f} s)",
        ratio=f"{plan_s / floor_s:.1%}",
        goal="< 50% of the floor",
        met=plan_s / floor_s < 0.5,
    )
    emit(
        "peak memory of compute_plan (tracemalloc)",
        f"{peak / 2**20:.1f} MB",
        goal="< 300 MB",
        met=peak / 2**20 < 300,
    )
    total_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"max RSS of this whole run (two repos, live state, loads): {total_rss:.0f} MB")
    print(f"plan digest {plan.digest[:12]}, summary {plan.summary}")


if __name__ == "__main__":
    main()
