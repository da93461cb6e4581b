"""Reconcile pass time with many services: the state in SQLite vs in etcd, in the same run.

    python3 bench/bench_store.py [--services 2000] [--passes 9]

Starts a three-member etcd cluster on loopback (Debian's etcd-server, as the tests do) and
runs the same desired state, ``--services`` Services of the process driver with
``replicas: 0`` (so the pass is the store, the decision and the bookkeeping, not thousands
of processes), through a real :class:`~gitorch.apply.session.Session` and its reconciler:

1. the **first pass**, which records every service (a rollout record, an inventory entry
   and events per service, one transaction each: 2,000 etcd transactions, fenced by the
   session's leadership);
2. **steady passes** (``--passes``): nothing to change, every record read once (rollouts,
   inventory, back-off, nodes, revisions, analysis runs).

Prints the median and the slowest of each, for SQLite and etcd, and etcd's ratio to
SQLite (SQLite, in the same process on a local file, is the floor).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "rigs"))  # free ports (etcd_helpers uses them)
sys.path.insert(0, str(REPO / "tests" / "shared"))  # etcd_helpers: the tests' etcd cluster

from etcd_helpers import EtcdCluster, new_namespace  # noqa: E402
from verdicts import emit  # noqa: E402

from gitorch.apply.reconciler import CommitMeta  # noqa: E402
from gitorch.apply.session import Session, SessionOptions  # noqa: E402
from gitorch.manifests import ManifestLoader  # noqa: E402
from gitorch.manifests.model import DesiredState  # noqa: E402
from gitorch.sources.base import ManifestFile  # noqa: E402
from gitorch.state.location import parse_location  # noqa: E402

REVISION = "c" * 40


def desired_state(services: int) -> DesiredState:
    files = []
    per_file = 100
    for f in range(0, services, per_file):
        text = "".join(
            f"""---
apiVersion: gitorch.dev/v1
kind: Service
metadata: {{name: svc-{i}}}
spec:
  command: ["/bin/sleep", "600"]
  replicas: 0
  env: {{INDEX: "{i}"}}
"""
            for i in range(f, min(services, f + per_file))
        ).encode()
        files.append(ManifestFile(f"apps/team-{f // per_file:03d}.yaml", f"blob{f}", text))
    result = ManifestLoader().load(files, revision=REVISION)
    assert result.state is not None, result.diagnostics[:3]
    return result.state


def run(options: SessionOptions, desired: DesiredState, passes: int) -> tuple[float, list[float]]:
    commit = CommitMeta(sha=REVISION, author="bench <bench@example.com>")
    with Session(options) as session:
        reconciler = session.reconciler_for(desired)
        started = time.perf_counter()
        result = reconciler.reconcile(desired, commit)
        first = time.perf_counter() - started
        assert not result.errors, result.errors[:3]
        steady = []
        for _ in range(passes):
            started = time.perf_counter()
            reconciler.reconcile(desired, commit)
            steady.append(time.perf_counter() - started)
        applied = len(session.store.list_applied())
        assert applied >= len(desired.services), applied
    return first, steady


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=2000)
    parser.add_argument("--passes", type=int, default=9)
    args = parser.parse_args()
    desired = desired_state(args.services)
    with tempfile.TemporaryDirectory(prefix="gitorch-bench-store-") as tmp:
        root = Path(tmp)
        etcd = EtcdCluster(root / "etcd").start()
        try:
            results: dict[str, tuple[float, list[float]]] = {}
            for backend in ("sqlite", "etcd"):
                local = root / backend
                state = None
                if backend == "etcd":
                    location = parse_location(etcd.url(new_namespace("bench")))
                    state = location
                options = SessionOptions(
                    state_dir=local, runtime="process", state=state, name="bench"
                )
                results[backend] = run(options, desired, args.passes)
        finally:
            etcd.close()
    print(f"{args.services} services (replicas: 0), {args.passes} steady passes each")
    print(f"{'store':8} {'first pass':>12} {'steady median':>14} {'steady max':>11}")
    for backend, (first, steady) in results.items():
        print(
            f"{backend:8} {first:11.2f}s {statistics.median(steady) * 1000:12.0f}ms "
            f"{max(steady) * 1000:9.0f}ms"
        )
    sqlite_first, sqlite_steady = results["sqlite"]
    etcd_first, etcd_steady = results["etcd"]
    print(
        f"etcd / sqlite: first pass {etcd_first / sqlite_first:.1f}x, steady pass "
        f"{statistics.median(etcd_steady) / statistics.median(sqlite_steady):.1f}x"
    )
    for label, ours, peer in (
        ("first pass", etcd_first, sqlite_first),
        ("steady pass, median", statistics.median(etcd_steady), statistics.median(sqlite_steady)),
    ):
        emit(
            f"etcd store, {args.services} services: {label}",
            f"{ours * 1000:,.0f} ms",
            against=f"the SQLite store ({peer * 1000:,.0f} ms)",
            ratio=f"{ours / peer:.1f}x",
        )


if __name__ == "__main__":
    main()
