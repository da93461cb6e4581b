"""Scheduler throughput, modelled on kube-scheduler's scheduler_perf.

    python3 bench/bench_scheduler.py            # options: --nodes 5000 --rounds 3 --no-oracle

Four workloads on 5,000 nodes (4 cpu, 32Gi each), each timed as one ``schedule()`` call
(the median of ``--rounds``): basic (10,000 replicas with requests, 100 services),
required anti-affinity per node (2,000 replicas of one service), topology spread over 10
zones with maxSkew 1 DoNotSchedule (5,000 replicas), and tainted nodes (1,000 of the
5,000 NoSchedule, 4,000 replicas that do not tolerate them). Prints placements per
second against scheduler_perf's thresholds and the 3x goal, then time per placement of
the basic workload on 500, 1,000 and 5,000 nodes (replicas = 2 x nodes), and the slow
reference scheduler (tests/scheduler/sched_oracle.py, the first version's algorithm) on a
few replicas of the basic workload, for scale.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import MappingProxyType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "scheduler"))

from verdicts import emit  # noqa: E402

from gitorch.manifests.model import Placement, ServiceAffinityTerm, SpreadConstraint  # noqa: E402
from gitorch.scheduler import Decision, NodeView, Request, schedule  # noqa: E402

MI = 1024**2
GI = 1024**3
#: scheduler_perf's minimum pods/s for the same workloads.
REFERENCE = {"basic": 680, "anti-affinity": 60, "spread": 460, "taints": 270}

Workload = tuple[list[NodeView], list[Request]]


def make_nodes(count: int, tainted: int = 0) -> list[NodeView]:
    return [
        NodeView(
            f"node-{i:05d}",
            4000,
            32 * GI,
            MappingProxyType({"zone": f"zone-{i % 10}"}),
            taints=(("dedicated", "batch", "NoSchedule"),) if i < tainted else (),
        )
        for i in range(count)
    ]


def basic(nodes: int, replicas: int) -> Workload:
    per_service = max(1, replicas // 100)
    reqs = []
    for s in range(100):
        placement = Placement()
        reqs.extend(
            Request(f"svc-{s}", f"svc-{s}-{r}", 100, 500 * MI, placement)
            for r in range(per_service)
        )
    return make_nodes(nodes), reqs[:replicas]


def anti_affinity(nodes: int, replicas: int) -> Workload:
    placement = Placement(service_anti_affinity=(ServiceAffinityTerm("anti", "node", True),))
    return make_nodes(nodes), [
        Request("anti", f"anti-{r}", 100, 500 * MI, placement) for r in range(replicas)
    ]


def spread(nodes: int, replicas: int) -> Workload:
    placement = Placement(spread=(SpreadConstraint("zone", 1, "DoNotSchedule"),))
    return make_nodes(nodes), [
        Request("spread", f"spread-{r}", 100, 500 * MI, placement) for r in range(replicas)
    ]


def taints(nodes: int, replicas: int) -> Workload:
    placement = Placement()
    return make_nodes(nodes, tainted=nodes // 5), [
        Request("plain", f"plain-{r}", 100, 500 * MI, placement) for r in range(replicas)
    ]


WORKLOADS: dict[str, tuple[Callable[[int, int], Workload], int]] = {
    "basic": (basic, 10_000),
    "anti-affinity": (anti_affinity, 2_000),
    "spread": (spread, 5_000),
    "taints": (taints, 4_000),
}


def timed(
    run: Callable[..., list[Decision]], workload: Workload, rounds: int
) -> tuple[float, list[Decision]]:
    nodes, reqs = workload
    times, decisions = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        decisions = run(nodes, [], reqs)
        times.append(time.perf_counter() - start)
    return statistics.median(times), decisions


def check(name: str, nodes: Sequence[NodeView], decisions: list[Decision]) -> None:
    """A fast wrong answer is no answer: every replica placed, the rules kept."""
    unplaced = [d for d in decisions if d.node is None]
    assert not unplaced, f"{name}: {len(unplaced)} unplaced, e.g. {unplaced[0].reasons[:3]}"
    if name == "anti-affinity":
        assert len({d.node for d in decisions}) == len(decisions)
    if name == "spread":
        zone = {n.name: n.labels["zone"] for n in nodes}
        per_zone: dict[str, int] = {}
        for d in decisions:
            per_zone[zone[d.node or ""]] = per_zone.get(zone[d.node or ""], 0) + 1
        assert max(per_zone.values()) - min(per_zone.values()) <= 1, per_zone
    if name == "taints":
        tainted = {n.name for n in nodes if n.taints}
        assert not any(d.node in tainted for d in decisions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-oracle", action="store_true", help="skip the slow reference")
    args = parser.parse_args()

    print(
        f"{'workload':<14}{'nodes':>7}{'replicas':>10}{'seconds':>9}{'placements/s':>14}"
        f"{'reference':>11}{'ratio':>8}  3x goal"
    )
    for name, (make, replicas) in WORKLOADS.items():
        workload = make(args.nodes, replicas)
        seconds, decisions = timed(schedule, workload, args.rounds)
        check(name, workload[0], decisions)
        rate = replicas / seconds
        ratio = rate / REFERENCE[name]
        print(
            f"{name:<14}{args.nodes:>7}{replicas:>10}{seconds:>9.3f}{rate:>14,.0f}"
            f"{REFERENCE[name]:>11}{ratio:>7.1f}x  {'met' if ratio >= 3 else 'MISSED'}"
        )
        emit(
            f"{name}: {replicas:,} replicas on {args.nodes:,} nodes",
            f"{rate:,.0f} placements/s",
            against=f"kube-scheduler_perf's threshold ({REFERENCE[name]:,}/s)",
            ratio=f"{ratio:.1f}x",
            goal=">= 3x the threshold",
            met=ratio >= 3,
        )

    print("\nbasic workload, replicas = 2 x nodes: time per placement")
    print(f"{'nodes':>7}{'replicas':>10}{'seconds':>9}{'us/placement':>14}{'vs 500 nodes':>14}")
    first = None
    for count in (500, 1000, 5000):
        seconds, decisions = timed(schedule, basic(count, 2 * count), args.rounds)
        check("basic", [], decisions)
        per = seconds / (2 * count) * 1e6
        first = first or per
        print(f"{count:>7}{2 * count:>10}{seconds:>9.3f}{per:>14.1f}{per / first:>13.2f}x")

    if not args.no_oracle:
        from sched_oracle import schedule as oracle

        print("\nslow reference (the first version's algorithm), same basic workload")
        for count, replicas in ((5000, 200),):
            workload = basic(count, replicas)
            slow, slow_decisions = timed(oracle, workload, 1)
            fast, fast_decisions = timed(schedule, workload, 1)
            assert slow_decisions == fast_decisions, "the fast scheduler disagrees"
            print(
                f"{count} nodes, {replicas} replicas: reference {replicas / slow:,.0f}/s, "
                f"gitorch {replicas / fast:,.0f}/s ({slow / fast:.0f}x), same decisions"
            )


if __name__ == "__main__":
    main()
