"""A simulated cluster and reconciler for driving the rollout step functions.

Named ``strategy_sim`` (not conftest) so test modules can import it under a name no other
test folder uses. The cluster executes Decisions the way the reconciler will (Stops first,
then Creates), refusing what the executor refuses (a Create for a live (slot, template),
a Stop of an unknown id); replicas start, become ready after a chosen number of passes (or
never), crash and lose their node when a test says so. ``check_pass`` asserts the
invariants every pass of a rolling update must keep.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from gitorch.strategies.machine import (
    Create,
    Decision,
    Phase,
    ReplicaView,
    RolloutInput,
    Stop,
)
from gitorch.strategies.rolling import resolve_limits, rolling_step

PASS_SECONDS = 5.0


def is_available(replica: ReplicaView, inp: RolloutInput) -> bool:
    """Available, written again here rather than imported, so the checks do not share a bug
    with the code they check: running, ready, for ``min_ready_seconds``."""
    return (
        replica.state == "running"
        and replica.ready
        and replica.ready_since is not None
        and inp.now - replica.ready_since >= inp.min_ready_seconds
    )


@dataclass
class SimReplica:
    id: str
    slot: int
    template: str
    state: str = "created"  # created | running | exited | unknown
    ready_since: float | None = None
    ready_in: int | None = 0  # passes of running before it becomes ready; None: never
    unknown_for: int = 0  # passes its node stays silent
    state_before_unknown: str = ""

    def view(self) -> ReplicaView:
        ready = self.state == "running" and self.ready_since is not None
        return ReplicaView(
            id=self.id,
            slot=self.slot,
            template=self.template,
            state=self.state,
            ready=ready or (self.state == "unknown" and self.ready_since is not None),
            ready_since=self.ready_since,
        )


@dataclass
class Cluster:
    """The world: replicas of one service, and a clock."""

    now: float = 1000.0
    replicas: dict[str, SimReplica] = field(default_factory=dict)
    next_id: int = 0
    # How many passes a new replica runs before it is ready (None: never); called per Create.
    readiness: Callable[[Create], int | None] = lambda create: 0

    def add(self, slot: int, template: str, *, ready: bool = True) -> SimReplica:
        self.next_id += 1
        replica = SimReplica(f"r{self.next_id}", slot, template)
        if ready:
            replica.state = "running"
            replica.ready_since = self.now - 3600
        self.replicas[replica.id] = replica
        return replica

    def live(self) -> list[SimReplica]:
        return [r for r in self.replicas.values() if r.state != "exited"]

    def views(self) -> tuple[ReplicaView, ...]:
        return tuple(r.view() for r in self.replicas.values())

    def execute(self, decision: Decision) -> None:
        """Run the actions in order, refusing what the executor refuses."""
        for action in decision.actions:
            if isinstance(action, Stop):
                replica = self.replicas.get(action.replica_id)
                assert replica is not None, f"Stop of an unknown id {action.replica_id}"
                if replica.state == "unknown":
                    continue  # its node does not answer: the stop fails, it stays
                del self.replicas[action.replica_id]
            else:
                taken = {(r.slot, r.template) for r in self.live()}
                assert (action.slot, action.template) not in taken, f"duplicate {action}"
                self.next_id += 1
                replica = SimReplica(
                    f"r{self.next_id}",
                    action.slot,
                    action.template,
                    ready_in=self.readiness(action),
                )
                self.replicas[replica.id] = replica

    def tick(self, seconds: float = PASS_SECONDS) -> None:
        """Time passes: created replicas start, running ones may become ready, silent nodes
        may answer again."""
        self.now += seconds
        for replica in self.replicas.values():
            if replica.state == "unknown":
                replica.unknown_for -= 1
                if replica.unknown_for <= 0:
                    replica.state = replica.state_before_unknown
                continue
            if replica.state == "created":
                replica.state = "running"
            waiting = replica.state == "running" and replica.ready_since is None
            if waiting and replica.ready_in is not None:
                if replica.ready_in <= 0:
                    replica.ready_since = self.now
                else:
                    replica.ready_in -= 1

    def crash(self, replica_id: str) -> None:
        self.replicas[replica_id].state = "exited"
        self.replicas[replica_id].ready_since = None

    def lose_node(self, replica_id: str, passes: int) -> None:
        replica = self.replicas[replica_id]
        if replica.state in ("created", "running"):
            replica.state_before_unknown = replica.state
            replica.state = "unknown"
            replica.unknown_for = passes


@dataclass
class Reconciler:
    """Stands in for the reconciler: builds each pass's input and keeps the rollout timing
    (``last_progress_at`` moves whenever the count of available target replicas grows)."""

    cluster: Cluster
    template: RolloutInput
    last_available: int = 0

    def begin(self, target: str) -> None:
        """Start a rollout to ``target`` now (a new commit, or a rollback)."""
        now = self.cluster.now
        self.template = replace(self.template, target=target, started_at=now, last_progress_at=now)
        self.last_available = 0

    def observe(self, blocked: frozenset[int] = frozenset()) -> RolloutInput:
        inp = replace(
            self.template,
            replicas=self.cluster.views(),
            now=self.cluster.now,
            blocked_slots=blocked,
        )
        count = sum(1 for r in inp.replicas if r.template == inp.target and is_available(r, inp))
        if count > self.last_available:
            self.template = replace(self.template, last_progress_at=self.cluster.now)
            inp = replace(inp, last_progress_at=self.cluster.now)
        self.last_available = count
        return inp


def rollout_input(desired: int, target: str = "B", **kwargs: object) -> RolloutInput:
    base = RolloutInput(
        service="web",
        desired=desired,
        target=target,
        replicas=(),
        now=1000.0,
        started_at=1000.0,
        last_progress_at=1000.0,
    )
    return replace(base, **kwargs)  # type: ignore[arg-type]


def check_pass(inp: RolloutInput, decision: Decision) -> None:
    """The invariants of one rolling pass (raises AssertionError)."""
    surge, unavailable = resolve_limits(inp.desired, inp.max_surge, inp.max_unavailable)
    ceiling = inp.desired + surge
    floor = max(0, inp.desired - unavailable)
    by_id = {r.id: r for r in inp.replicas}
    live = [r for r in inp.replicas if r.state != "exited"]
    stops = [a for a in decision.actions if isinstance(a, Stop)]
    creates = [a for a in decision.actions if isinstance(a, Create)]
    stopped = [by_id[s.replica_id] for s in stops]
    assert len({s.replica_id for s in stops}) == len(stops), "a replica stopped twice"
    # Stops come before Creates, so the executor never overshoots while running them.
    kinds = [isinstance(a, Create) for a in decision.actions]
    assert kinds == sorted(kinds), "a Create before a Stop"
    occupied = {r.slot for r in live if r.template == inp.target}
    # A slot in back-off after its target replica failed (not one done for good) holds
    # its place under the ceiling as that replica did.
    held = {s for s in inp.blocked_slots - inp.completed_slots if 1 <= s <= inp.desired} - occupied
    for create in creates:
        assert create.template == inp.target
        assert 1 <= create.slot <= inp.desired, f"{create} outside 1..{inp.desired}"
        assert create.slot not in occupied, f"{create}: the slot has a live target replica"
        assert create.slot not in inp.blocked_slots, f"{create}: the slot is in back-off"
        occupied.add(create.slot)
    after = len(live) - sum(1 for r in stopped if r.state != "exited") + len(creates) + len(held)
    assert after <= max(ceiling, len(live) + len(held)), f"{after} replicas above {ceiling}"
    if creates:
        assert after <= ceiling, f"created up to {after} replicas, ceiling {ceiling}"
    # Kubernetes' surge semantics: a replica stopped to make room is terminating from the
    # pass's publication on, and its room is the Creates' at once. Only available replicas
    # do so (the rest are removed before anything starts), so in service after the pass
    # at most the ceiling, and while the pass runs at most its terminating ones more.
    terminating = [s for s in stops if s.terminating_frees_room]
    assert all(is_available(by_id[s.replica_id], inp) for s in terminating), (
        "a replica that is not available makes room beside its stop"
    )
    if creates:
        assert len(terminating) <= surge + unavailable, f"{len(terminating)} terminating"
        assert after + len(terminating) <= ceiling + surge + unavailable
    available = [r for r in live if is_available(r, inp)]
    lost = sum(1 for r in stopped if is_available(r, inp))
    assert lost <= max(0, len(available) - floor), (
        f"stopped {lost} available of {len(available)}, floor {floor}"
    )
    if decision.phase is Phase.FAILED:
        assert decision.failure
    assert decision.message


def floor_of(inp: RolloutInput) -> int:
    _, unavailable = resolve_limits(inp.desired, inp.max_surge, inp.max_unavailable)
    return max(0, inp.desired - unavailable)


def available(cluster: Cluster, inp: RolloutInput, template: str | None = None) -> int:
    return sum(
        1
        for r in cluster.views()
        if is_available(r, inp) and (template is None or r.template == template)
    )


def run_to_healthy(
    reconciler: Reconciler, step: Callable[[RolloutInput], Decision], passes: int = 150
) -> RolloutInput:
    """Calm passes until a HEALTHY pass with no action; returns that pass's input."""
    cluster = reconciler.cluster
    reached = False
    for _ in range(passes):
        inp = reconciler.observe()
        decision = step(inp)
        if step is rolling_step:
            check_pass(inp, decision)
        assert decision.phase is not Phase.FAILED, decision.message
        if decision.phase is Phase.HEALTHY and not decision.actions:
            return inp
        before = available(cluster, inp)
        cluster.execute(decision)
        check_cluster(cluster)
        if step is rolling_step:
            # Without crashes, once the floor is reached the rollout never drops below it.
            reached = reached or before >= floor_of(inp)
            if reached:
                assert available(cluster, inp) >= floor_of(inp)
        cluster.tick()
    raise AssertionError("no fixed point: " + decision.message)


def assert_converged(cluster: Cluster, inp: RolloutInput) -> None:
    live = sorted((r.slot, r.template) for r in cluster.live())
    assert live == [(slot, inp.target) for slot in range(1, inp.desired + 1)]
    assert available(cluster, inp) == inp.desired


def check_cluster(cluster: Cluster) -> None:
    keys = [(r.slot, r.template) for r in cluster.live()]
    assert len(keys) == len(set(keys)), f"two replicas of one (slot, template): {keys}"


# --- Progressive strategies (canary, blue-green, A/B): weights, steps, analyses ---------


def needed_for(desired: int, weight: int) -> int:
    """New replicas a weight needs (written again here, like ``is_available``):
    ceil(desired * weight / 100), at least 1 above 0."""
    if weight <= 0:
        return 0
    return max(1, -(-desired * weight // 100))


@dataclass
class ProgressiveReconciler(Reconciler):
    """Also keeps what the store keeps for stepped strategies: the step, when it began,
    promote/abort requests and the analysis runs the decisions asked for. ``verdict`` says
    how a newly requested analysis key ends: (phase, passes it stays running first)."""

    step: int | None = None
    step_started_at: float | None = None
    promote: bool = False
    abort: bool = False
    runs: dict[str, tuple[str, int]] = field(default_factory=dict)
    verdict: Callable[[str], tuple[str, int]] = lambda key: ("successful", 0)

    def observe(self, blocked: frozenset[int] = frozenset()) -> RolloutInput:
        from gitorch.strategies.machine import AnalysisStatus

        inp = super().observe(blocked)
        statuses = {
            key: AnalysisStatus(phase if wait <= 0 else "running", f"{key} {phase}")
            for key, (phase, wait) in self.runs.items()
        }
        return replace(
            inp,
            step=self.step,
            step_started_at=self.step_started_at,
            promote_requested=self.promote,
            abort_requested=self.abort,
            analyses=statuses,
        )

    def record(self, decision: Decision) -> None:
        """What the reconciler keeps after a decision: step moves reset the step clock and
        consume a promote; analysis runs start, advance one pass, or are forgotten."""
        if decision.step != self.step:
            self.step = decision.step
            self.step_started_at = self.cluster.now
            self.promote = False
        wanted = {request.key for request in decision.analyses}
        runs: dict[str, tuple[str, int]] = {}
        for key in wanted:
            if key in self.runs:
                phase, wait = self.runs[key]
                runs[key] = (phase, wait - 1)
            else:
                runs[key] = self.verdict(key)
        self.runs = runs


def new_weight(inp: RolloutInput, decision: Decision) -> int:
    return decision.weights.get(inp.target, 0)


def check_progressive_pass(inp: RolloutInput, decision: Decision, *, capacity: bool = True) -> None:
    """The invariants every progressive pass keeps (raises AssertionError). ``capacity``:
    check that the new version's weight is one its available replicas carry (blue-green
    after the switch keeps 100% through a crash: it is all or nothing by design)."""
    by_id = {r.id: r for r in inp.replicas}
    stops = [a for a in decision.actions if isinstance(a, Stop)]
    creates = [a for a in decision.actions if isinstance(a, Create)]
    assert len({s.replica_id for s in stops}) == len(stops), "a replica stopped twice"
    assert all(s.replica_id in by_id for s in stops)
    kinds = [isinstance(a, Create) for a in decision.actions]
    assert kinds == sorted(kinds), "a Create before a Stop"
    for create in creates:
        assert create.template in (inp.target, inp.stable), create
        assert 1 <= create.slot <= inp.desired, create
        assert create.slot not in inp.blocked_slots, create
    assert decision.message
    weight = new_weight(inp, decision)
    others = {t: w for t, w in decision.weights.items() if t != inp.target}
    assert 0 <= weight <= 100
    if others:
        assert sum(decision.weights.values()) == 100, decision.weights
    if others and capacity:
        ready = sum(
            1
            for r in inp.replicas
            if r.template == inp.target and 1 <= r.slot <= inp.desired and is_available(r, inp)
        )
        assert needed_for(inp.desired, weight) <= ready, (
            f"weight {weight}% needs {needed_for(inp.desired, weight)} ready, {ready} are"
        )
    if decision.phase is Phase.FAILED:
        assert decision.failure
        assert weight == 0, "a failed rollout still sends traffic to the new version"
        assert not decision.match
        assert not creates
    if inp.abort_requested and decision.phase is not Phase.HEALTHY:
        assert decision.phase is Phase.FAILED and weight == 0
    for request in decision.analyses:
        status = inp.analyses.get(request.key)
        if status is None:
            continue
        if status.phase == "failed":
            assert decision.phase is Phase.FAILED, f"{request.key} failed but {decision.phase}"
        if status.phase == "inconclusive" and not inp.promote_requested:
            assert decision.step == inp.step or (inp.step is None and decision.step == 0), (
                f"moved on from step {inp.step} with {request.key} inconclusive"
            )
            assert decision.phase in (Phase.PAUSED, Phase.FAILED)
