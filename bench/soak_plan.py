"""The soak's schedule: every commit and every fault of a run, decided by the seed alone.

The plan is made before anything starts, as a list of :class:`Planned` entries (when,
what, and the uniform draws the run uses to choose among live candidates, e.g. which
replica to kill), so one seed gives the same sequence of actions at the same moments
whatever the cluster does: a break reproduces by running the same seed again. Commits
and faults come from two streams of their own, so enabling or disabling a fault kind does
not change the commits.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from soak_shop import COMMIT_KINDS

#: Every fault kind, and the ones that need a part not built yet or another runtime.
FAULT_KINDS: tuple[str, ...] = (
    "daemon-kill",
    "daemon-stop",
    "proxy-kill",
    "proxy-worker-kill",
    "proxy-stop",
    "replica-kill",
    "replica-stop",
    "port-taken",
    "git-unreachable",
    "disk-full",
    "docker-restart",
    "etcd-member-kill",
)
DOCKER_ONLY = ("docker-restart",)
#: Only with ``--state etcd://`` (the soak's own three members).
ETCD_ONLY = ("etcd-member-kill",)

#: Seconds between commits, and between the end of one fault and the next one.
COMMIT_GAP = (5.0, 18.0)
FAULT_GAP = (6.0, 20.0)
#: How long each fault lasts (stop/hold durations, restart delays), in seconds.
DURATIONS: dict[str, tuple[float, float]] = {
    "daemon-kill": (0.5, 4.0),  # until the supervisor starts it again
    "daemon-stop": (1.0, 12.0),
    "proxy-kill": (0.0, 0.0),  # the daemon starts a new proxy: measured, not chosen
    "proxy-worker-kill": (0.0, 0.0),
    "proxy-stop": (1.0, 8.0),  # below every client and proxy timeout
    "replica-kill": (0.0, 0.0),
    "replica-stop": (1.0, 6.0),  # below the liveness probes' patience
    "port-taken": (8.0, 30.0),
    "git-unreachable": (5.0, 45.0),
    "disk-full": (5.0, 30.0),
    "docker-restart": (0.0, 0.0),
    "etcd-member-kill": (3.0, 25.0),  # then it is started again and rejoins
}
#: Soaks shorter than this (seconds) compress the fault plan.
SHORT = 900.0
#: Share of the faults injected at a chosen moment of a rollout (just after a commit
#: that starts one, once a service is progressing) rather than at a random one.
ALIGNED_SHARE = 0.35


@dataclass(frozen=True)
class Planned:
    """One action of the plan, ``at`` seconds after the chaos phase began."""

    at: float
    what: str  # commit | fault
    kind: str
    draws: tuple[float, float, float]
    duration: float = 0.0
    aligned: bool = False

    def describe(self) -> str:
        extra = f" for {self.duration:.1f}s" if self.duration else ""
        moment = " (during a rollout)" if self.aligned else ""
        return f"{self.what} {self.kind}{extra}{moment}"


def fault_kinds(runtime: str, exclude: Iterable[str] = (), etcd: bool = False) -> tuple[str, ...]:
    """The fault kinds a run on ``runtime`` injects (``etcd``: with the soak's own etcd)."""
    skip = set(exclude)
    if runtime != "docker":
        skip |= set(DOCKER_ONLY)
    if not etcd:
        skip |= set(ETCD_ONLY)
    return tuple(k for k in FAULT_KINDS if k not in skip)


def make_plan(seed: int, seconds: float, faults: tuple[str, ...]) -> list[Planned]:
    """Commits and faults of a chaos phase of ``seconds`` (see the module docstring)."""
    commits = random.Random(f"{seed}/commits")
    chaos = random.Random(f"{seed}/faults")
    plan: list[Planned] = []
    kinds = list(COMMIT_KINDS)
    weights = [COMMIT_KINDS[k] for k in kinds]
    at = commits.uniform(3.0, 8.0)
    while at < seconds:
        kind = commits.choices(kinds, weights)[0]
        draws = (commits.random(), commits.random(), commits.random())
        plan.append(Planned(round(at, 2), "commit", kind, draws))
        at += commits.uniform(*COMMIT_GAP)
    if faults:
        # Every kind once first (in a seeded order), so even a short soak sees them all;
        # then at random. A soak shorter than SHORT compresses gaps and durations (never
        # below a third), so that a few minutes still hold every kind.
        first = list(faults)
        chaos.shuffle(first)
        scale = min(1.0, max(1 / 3, seconds / SHORT))
        at = chaos.uniform(5.0, 12.0) * scale
        n = 0
        while at < seconds:
            kind = first[n] if n < len(first) else chaos.choice(faults)
            low, high = DURATIONS[kind]
            duration = round(max(low, chaos.uniform(low, high) * scale), 2) if high else 0.0
            aligned = chaos.random() < ALIGNED_SHARE
            draws = (chaos.random(), chaos.random(), chaos.random())
            plan.append(Planned(round(at, 2), "fault", kind, draws, duration, aligned))
            at += duration + chaos.uniform(*FAULT_GAP) * scale
            n += 1
    plan.sort(key=lambda p: (p.at, p.what))
    return plan
