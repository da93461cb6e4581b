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

``--commits N``: then N rounds of a commit changing one Service (its env): the first
pass of each new revision, alternately the focused pass over the changed service (what
the daemon runs first) and the whole pass, CPU time each, and the focused/whole ratio.
Each round commits to the rig's repo (the replicas roll as in the daemon).
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
    parser.add_argument(
        "--commits", type=int, default=0, help="rounds of focused vs whole first pass"
    )
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
        if args.commits:
            first_passes(session, source, rig, desired, args.commits)
    verdict = "met" if cpu < 1.0 else "NOT met"
    print(f"no-op pass: {cpu * 1000:.0f} ms of CPU (goal < 1 s): {verdict}")
    return 0


def first_passes(session: object, source: object, rig: Path, desired: object, rounds: int) -> None:
    """The first pass of a new revision that changes one Service: focused vs whole."""
    import re
    import subprocess

    from gitorch.decide.cluster import changed_services
    from gitorch.manifests.loader import load_desired

    work = rig / "work"
    reconciler = session.reconciler_for(desired)  # type: ignore[attr-defined]
    spent: dict[str, list[float]] = {"focused": [], "whole": []}
    for n in range(2 * rounds):
        for _ in range(3):  # the previous round's rollout settles (no-op passes after)
            reconciler.reconcile(desired, None)
        team = work / "apps" / "team-000.yaml"
        value = f"pass{time.time_ns()}"
        team.write_text(re.sub(r'ROUND: "[^"]*"', f'ROUND: "{value}"', team.read_text(), count=1))
        subprocess.run(  # noqa: S603
            ["git", "-C", str(work), "-c", "user.name=b", "-c", "user.email=b@x"]  # noqa: S607
            + ["commit", "-qam", value],
            check=True,
        )
        source.fetch()  # type: ignore[attr-defined]
        snapshot = source.snapshot(source.resolve("main"), "apps")  # type: ignore[attr-defined]
        after = session.secrets.resolve(load_desired(snapshot))  # type: ignore[attr-defined]
        kind = "focused" if n % 2 == 0 else "whole"
        started = time.process_time()
        if kind == "focused":
            reconciler.reconcile_focused(after, None, changed_services(desired, after))
        else:
            reconciler.reconcile(after, None)
        spent[kind].append(time.process_time() - started)
        desired = after
    for kind, values in spent.items():
        shown = ", ".join(f"{v * 1000:.0f}" for v in values)
        print(f"first pass of a new revision, {kind:7}: {min(values) * 1000:6.0f} ms CPU ({shown})")
    ratio = min(spent["focused"]) / min(spent["whole"])
    print(f"focused / whole: {ratio:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
