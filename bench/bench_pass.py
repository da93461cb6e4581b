"""The steps of one no-op reconcile pass, in process, on bench_daemon.py's rig.

    python3 bench/bench_daemon.py --keep DIR --leave-replicas   # once: 2,000 services, 4,000 replicas
    python3 bench/bench_pass.py DIR [--rounds 3]

Opens the rig's state directory as the daemon does (no daemon may run on it), loads the
repo's head and times each step of a pass that changes nothing: the observation (the
runtimes, the store, the health monitor's tracking), the decision, the plan, the whole
pass, and what `GET /api/v1/status` does when it observes again. CPU time of the whole
process (best of --rounds): wall times on a shared 2-core machine say more about the
neighbours. For an A/B, run it with PYTHONPATH set to each checkout in turn.
Goal (issue 20): a no-op pass < 1 s at this size.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def timed(label: str, step: Callable[[], T], rounds: int) -> tuple[T, float]:
    best, out = float("inf"), None
    for _ in range(rounds):
        started = time.process_time()
        out = step()
        best = min(best, time.process_time() - started)
    print(f"{label:34} {best * 1000:8.1f} ms CPU")
    return out, best  # type: ignore[return-value]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("rig", type=Path, help="bench_daemon.py's --keep folder")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from gitorch.apply.reconciler import _with_health
    from gitorch.apply.session import Session, SessionOptions
    from gitorch.decide.vertical import with_vertical
    from gitorch.diff import compute_plan
    from gitorch.live import observe
    from gitorch.manifests.loader import load_desired
    from gitorch.readmodel.cluster import ClusterView
    from gitorch.readmodel.status import status_json
    from gitorch.sources.factory import open_source

    rig: Path = args.rig
    source = open_source(str(rig / "work"), cache_root=rig / "bench-pass-cache", ref="main")
    source.fetch()
    desired = load_desired(source.snapshot(source.resolve("main"), "apps"))
    options = SessionOptions(state_dir=rig / "state", runtime="process", data_plane_outlives=True)
    rounds = args.rounds
    with Session(options) as session:
        desired = session.secrets.resolve(desired)
        reconciler = session.reconciler_for(desired)
        print(f"{len(desired.services)} services; {sys.version.split()[0]}")
        (live, lost), _ = timed("observe (the pass's)", lambda: reconciler.observe(desired), rounds)
        targets, runtimes = reconciler.targets, reconciler.runtimes
        timed("  the store's inventory", session.store.list_applied, rounds)
        timed(
            "  list_instances",
            lambda: [r.list_instances(session.cluster) for r in runtimes.values()],
            rounds,
        )
        wanted = with_vertical(desired, live.autoscalers)
        decision, _ = timed(
            "decide", lambda: reconciler.decide(wanted, live, lost, time.time()), rounds
        )
        timed("plan", lambda: compute_plan(wanted, live, decision=decision), rounds)
        _, cpu = timed("the whole no-op pass", lambda: reconciler.reconcile(desired, None), rounds)
        fresh, _ = timed(
            "status: observe again",
            lambda: observe(targets, runtimes, session.cluster, session.store),
            rounds,
        )
        view = ClusterView(session.store, targets, runtimes, _with_health(fresh, reconciler.health))
        timed("status: the document", lambda: status_json(view, None, traffic={}), rounds)
    verdict = "met" if cpu < 1.0 else "NOT met"
    print(f"no-op pass: {cpu * 1000:.0f} ms of CPU (goal < 1 s): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
