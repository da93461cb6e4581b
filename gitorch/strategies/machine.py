"""The contract every rollout strategy implements: a pure step function.

A strategy never touches the world. Each reconcile pass gives it what is observed now
(:class:`RolloutInput`) and it answers with the actions that move the service one step
closer to its target (:class:`Decision`). Because the input is the *observed* state (the
replicas that exist, with their template digest, slot and health), a daemon killed at any
point and restarted computes the same next step: nothing is remembered that the runtime
cannot show, except the rollout's timing (``started_at``, ``last_progress_at``: the
reconciler moves it whenever the count of available target replicas grows) and, for
stepped strategies, the step index, which the store keeps.

Exited replicas count as gone: the strategy removes them (``Stop``) and recreates their
slot unless the slot is in crash-loop back-off (``blocked_slots``). A slot in back-off
after its target replica failed to start or crashed still counts against a RollingUpdate's
``maxSurge`` (the replica is in progress, only not running now). Replicas in state
``unknown`` (their node does not answer) hold their slot: never duplicated here.

Slots: a service with ``desired`` replicas has slots 1..desired. A replica is identified
by (slot, template): during a rolling update slot 2 may have an old and a new replica at
once; never two of the same template. Creating the replica for (slot, template) when one
exists is a bug the executor refuses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from gitorch.manifests.model import Analysis, MatchRule


class Phase(StrEnum):
    HEALTHY = "Healthy"  # target reached: desired replicas of the target template, available
    PROGRESSING = "Progressing"
    PAUSED = "Paused"  # waiting for `gitorch promote` or a timed pause
    DEGRADED = "Degraded"  # failed and not rolled back (autoRollback off), or cannot place
    FAILED = "Failed"  # the rollout failed this pass: the reconciler rolls back if allowed
    ROLLED_BACK = "RolledBack"


@dataclass(frozen=True)
class ReplicaView:
    """One observed replica of the service."""

    id: str  # runtime instance id
    slot: int
    template: str  # template digest it runs
    state: str  # created | running | exited | unknown
    ready: bool = False  # readiness probe passing now (or no probe and running)
    ready_since: float | None = None  # when it last became ready
    node: str = ""

    def available(self, now: float, min_ready_seconds: float) -> bool:
        """Ready for at least ``min_ready_seconds`` (Kubernetes' "available")."""
        return (
            self.ready
            and self.ready_since is not None
            and now - self.ready_since >= min_ready_seconds
        )


@dataclass(frozen=True)
class AnalysisStatus:
    """Where one analysis run asked for by a :class:`Decision` stands (the reconciler runs
    it with :mod:`gitorch.analysis` and reports it back under the request's key).

    ``phase`` is ``running`` | ``successful`` | ``failed`` | ``inconclusive`` (the values of
    ``gitorch.analysis.RunPhase``); a requested key with no status yet counts as running.
    """

    phase: str
    message: str = ""


@dataclass(frozen=True)
class AnalysisRequest:
    """Run ``analysis`` on ``version`` (a template) now, under ``key``.

    Level-triggered like everything here: the reconciler starts a run for a key the first
    time a decision requests it, keeps advancing it while decisions keep requesting it and
    forgets it once they stop (or the rollout ends). A new key is a fresh run: strategies
    put the step index in the key (``step-3``), so a step entered again measures again.
    ``baseline`` is the version to compare with (the stable one), or None.
    """

    key: str
    analysis: Analysis
    version: str
    baseline: str | None = None


@dataclass(frozen=True)
class RolloutInput:
    """Everything a strategy may look at."""

    service: str
    desired: int  # replicas wanted of the target template
    target: str  # template digest the service should run
    replicas: tuple[ReplicaView, ...]
    now: float
    started_at: float  # when this rollout (to ``target``) began
    last_progress_at: float  # when the available count of target replicas last grew
    progress_deadline_seconds: float = 600.0
    #: When the deciding daemon began watching (its term's start): the deadline is
    #: judged over time it watched. A rollout found stalled after the daemon was down
    #: (replicas whose readiness no probe has seen yet) gets a window from then, never an
    #: instant rollback for time nobody watched.
    watching_since: float = 0.0
    min_ready_seconds: float = 0.0
    max_surge: int | str = "25%"
    max_unavailable: int | str = 0
    step: int | None = None  # for stepped strategies (canary): the current step index
    blocked_slots: frozenset[int] = frozenset()  # in crash-loop back-off: no Create there now
    #: Of ``blocked_slots``, those whose replica completed for good (restartPolicy Never,
    #: or OnFailure and exit 0): never recreated. The others wait after a target replica
    #: failed to start or crashed: a new replica in progress, which holds its place under
    #: ``maxSurge`` as a crash-looping pod counts against a Deployment's.
    completed_slots: frozenset[int] = frozenset()
    #: Slots whose *stable* replica (a progressive rollout's) is in crash-loop back-off:
    #: no stable Create there now. The stable and the new replica of a slot back off
    #: each on its own.
    blocked_stable_slots: frozenset[int] = frozenset()
    # Progressive strategies (canary, blue-green, A/B). ``stable``: the template of the last
    # good revision, which they keep at full size and give the rest of the traffic; None:
    # the most common template among the live old replicas (never recreated then).
    stable: str | None = None
    # When the current ``step`` began: the reconciler sets it to ``now`` whenever a Decision's
    # ``step`` differs from the input's (None: ``started_at``).
    step_started_at: float | None = None
    # `gitorch promote` / `gitorch abort` for this rollout. The reconciler clears
    # ``promote_requested`` once a Decision's ``step`` moved on (one promote, one step).
    promote_requested: bool = False
    abort_requested: bool = False
    # Status of the analysis runs the previous decisions requested, by request key.
    analyses: Mapping[str, AnalysisStatus] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Create:
    """Start a new replica of ``template`` in ``slot``."""

    slot: int
    template: str


@dataclass(frozen=True)
class Stop:
    """Take ``replica_id`` out of traffic, drain it, stop it and remove it.

    ``terminating_frees_room``: the pass's Creates need not wait for this replica's exit.
    Kubernetes does not count a terminating pod (withdrawn from its Service's endpoints,
    draining, stopping) against a Deployment's ``maxSurge``, so a RollingUpdate's pass
    that replaces available old replicas starts the new ones as the old ones leave the
    rotation, not after they have exited. False (the default): the executor waits for
    the exit first (Recreate, a preemption: the new replica needs what the old one holds).
    """

    replica_id: str
    reason: str = ""
    terminating_frees_room: bool = False


Action = Create | Stop


@dataclass(frozen=True)
class Decision:
    """What to do now, and where the rollout stands."""

    phase: Phase
    actions: tuple[Action, ...] = ()
    message: str = ""  # for status and logs: "2/3 updated and available, waiting for web-3 ready"
    step: int | None = None
    failure: str | None = None  # set with Phase.FAILED: why (deadline passed, ...)
    weights: dict[str, int] = field(
        default_factory=dict
    )  # template -> percent (traffic strategies)
    # Blue-green: the template served at ``blueGreen.previewPort`` (None: no preview route).
    preview: str | None = None
    # A/B: requests matching any rule go to ``RolloutInput.target`` whatever the weights.
    match: tuple[MatchRule, ...] = ()
    # Analysis runs wanted now (see AnalysisRequest); their status comes back in the input.
    analyses: tuple[AnalysisRequest, ...] = ()
