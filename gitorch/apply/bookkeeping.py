"""Bookkeeping of a pass: what was decided and what happened, written to the store.

Rules that keep history truthful:

* **Every commit the reconciler reaches gets a history entry.** One that changes nothing
  is ``no-changes`` at once (and becomes the applied revision); one replaced before it
  converged is ``superseded``; one refused by a policy is ``refused``.
* **A revision that changes only Nodes, NodePools or Volumes** is ``succeeded`` once
  their inventory follows Git (its reason names them), never ``no-changes``.
* **A revision's result is its own.** It covers the services it changed; it is
  ``succeeded`` only when each of them runs its new template, Healthy; ``rolled-back``
  only for a template that failed in this revision (a service still rolled back from an
  earlier commit is named in the reason, not blamed here); ``failed`` when a service of it
  is Degraded or cannot serve its endpoint.
* **One transaction per service** for its record, its inventory entry, its back-off and its
  events: a reader (or a crash) never sees one without the others.
* **Every audit entry names its actor** (:func:`actor_of`): what a commit brought (its
  revision's entries, rollouts, prunes) names the commit's verified signer, else its
  author; what gitorch did on its own (a restart, drift, a failure) names ``gitorch``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from gitorch.apply.autoscaler import record_bounds_scale
from gitorch.apply.execute import Execution
from gitorch.decide import PassDecision, ServiceDecision
from gitorch.decide.backoff import CrashLoop, describe, listen_retry, remaining
from gitorch.decide.service import took_all_traffic
from gitorch.decide.volumes import VolumeDecision
from gitorch.diff.compute import revision_plan
from gitorch.diff.fields import FieldChange
from gitorch.live.model import LiveState
from gitorch.manifests.model import DesiredState, Node, NodePool, Volume
from gitorch.state import BackoffRecord, RevisionResult, RolloutPhase, RolloutRecord, StateStore
from gitorch.state.audit_chain import SYSTEM_ACTOR
from gitorch.state.records import NO_BACKOFF, SERVICE_SLOT, START_FAILED, ServiceBackoff

log = logging.getLogger("gitorch.reconciler")


#: Field paths a revision's summary names at most, over all its changes (each change is
#: listed whatever the budget): a commit creating 2,000 services would otherwise record
#: 100,000 paths, several megabytes, more than etcd takes in one request (1.5 MiB).
SUMMARY_FIELD_PATHS = 2000


@dataclass(frozen=True)
class CommitMeta:
    """What the revision record keeps of the commit being applied."""

    sha: str
    author: str = ""
    committed_at: str | None = None
    signer: str | None = None
    message: str = ""
    # What made gitorch read this commit: "poll", "local commit", "webhook push ... (delivery
    # ID)", "api request", "cli apply"... (recorded with the revision, shown by history).
    trigger: str = ""


def first_problem(diagnostics: Sequence[str]) -> str:
    """An invalid revision in one line: its first problem (PATH:LINE:COLUMN) and how many
    more (status, the daemon's error and the history entry say the same)."""
    first = diagnostics[0] if diagnostics else "no details"
    more = f" (and {len(diagnostics) - 1} more)" if len(diagnostics) > 1 else ""
    return f"{first}{more}"


def actor_of(commit: CommitMeta | None) -> str:
    """The audit actor of what ``commit`` brought: ``signer:IDENTITY`` when its signature
    was verified, else ``author:NAME <EMAIL>`` (as the commit claims it)."""
    if commit is None:
        return SYSTEM_ACTOR
    if commit.signer and not commit.signer.startswith("unverified"):
        return f"signer:{commit.signer}"
    if commit.author:
        return f"author:{commit.author}"
    return SYSTEM_ACTOR


#: Audit entries of these kinds carry out a commit: their actor is the commit's.
_COMMIT_EVENT_PREFIXES = ("revision.", "rollout.")


@dataclass(frozen=True)
class Started:
    """The revision being applied: its record id, the services it changes and the other
    objects it changes (``ACTION Kind/name``: Nodes, NodePools, Volumes, applied at its
    start)."""

    id: int
    services: frozenset[str]
    objects: tuple[str, ...] = ()


def superseded_reason(by: str, services: Iterable[str], rollouts: Iterable[RolloutRecord]) -> str:
    """The history's reason for a revision finished before it converged because ``by``
    came: it names the ``services`` of that revision whose new version had already been
    given all the traffic (a canary promoted, a blue-green switched, an A/B test
    concluded). Those versions went live, and the next rollout keeps them as its stable
    one (``decide.service.took_all_traffic``): "superseded" alone read as if they had not.
    """
    changed = set(services)
    live = sorted(r.service for r in rollouts if r.service in changed and took_all_traffic(r))
    reason = f"superseded by {by[:12]} before it converged"
    if live:
        reason += (
            f"; {', '.join(live)}: its new version already had all the traffic and stays as"
            " the stable one"
        )
    return reason


def _other_objects(changes: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """``ACTION Kind/name`` of a revision summary's changes that are not Services."""
    return tuple(
        f"{c.get('action', 'update')} {c.get('kind')}/{c.get('name')}"
        for c in changes
        if c.get("kind") != "Service"
    )


#: How many of the newest history entries are searched for a rejected commit's entry
#: before it is recorded (again).
REJECTED_LOOKBACK = 20


class Bookkeeper:
    """Writes decisions, failures and revisions to the store."""

    def __init__(self, store: StateStore, crash_loop: CrashLoop) -> None:
        self.store = store
        self.crash_loop = crash_loop
        self._started: Started | None = None
        self.actor = SYSTEM_ACTOR  # of the commit being applied (acting_for)

    def acting_for(self, commit: CommitMeta | None) -> None:
        """The commit this pass applies: its actor signs what the pass carries out."""
        self.actor = actor_of(commit)

    # ------------------------------------------------------------------ revisions

    def revision_started(
        self,
        desired: DesiredState,
        live: LiveState,
        commit: CommitMeta | None,
        decision: PassDecision,
    ) -> Started | None:
        """The revision in progress (recorded the first time it is seen), or None when it
        has finished (or changed nothing). ``decision``: the pass that records it (the
        replicas it could not place are the revision's unschedulable count)."""
        # Rejected commits (invalid, refused) are entries of their own, never the one in
        # progress: a refused revision allowed since is applied now, as a new entry.
        last = self.store.last_admitted_revision()
        if last is not None and last.sha == desired.revision:
            if last.result is not RevisionResult.IN_PROGRESS:
                return None
            if self._started is None or self._started.id != last.id:
                self._started = Started(
                    last.id,
                    frozenset(last.service_results),
                    _other_objects(last.summary.get("changes") or ()),
                )
            return self._started
        plan = revision_plan(desired, live)
        if last is not None and last.result is RevisionResult.IN_PROGRESS:
            self.store.finish_revision(
                last.id,
                RevisionResult.SUPERSEDED,
                reason=superseded_reason(
                    desired.revision, last.service_results, self.store.list_rollouts()
                ),
            )
        changes = []
        budget = SUMMARY_FIELD_PATHS  # etcd takes 1.5 MiB per request: a summary is bounded
        for c in plan.changes:
            kept = c.diff[: min(50, budget)]
            budget -= len(kept)
            changes.append(
                {
                    "kind": c.kind,
                    "name": c.name,
                    "action": c.action,
                    "fields": [d.path for d in kept],
                    # Values as the plan shows them: secrets already redacted by the diff.
                    "diff": [_recorded_change(d) for d in kept],
                }
            )
        services = sorted({c.name for c in plan.changes if c.kind == "Service"})
        result = RevisionResult.IN_PROGRESS if plan.changes else RevisionResult.NO_CHANGES
        with self.store.transaction():  # the revision and its event, or neither
            record = self.store.record_revision(
                desired.revision,
                author=commit.author if commit else "",
                committed_at=commit.committed_at if commit else None,
                signer=commit.signer if commit else None,
                trigger=commit.trigger if commit else "",
                services=services,
                result=result,
                reason="" if plan.changes else "nothing to change",
                summary={
                    "changes": changes,
                    "counts": {**plan.summary, "unschedulable": len(decision.unplaced)},
                    "message": (commit.message if commit else "")[:500],
                },
            )
            if result is RevisionResult.NO_CHANGES:
                self.store.append_event(
                    "revision.no-changes",
                    f"{desired.revision[:12]} changes nothing that is applied",
                    revision=desired.revision,
                    actor=actor_of(commit),
                )
            else:
                self.store.append_event(
                    "revision.started",
                    f"applying {desired.revision[:12]}: {plan.summary['create']} to create, "
                    f"{plan.summary['update']} to update, {plan.summary['delete']} to delete",
                    revision=desired.revision,
                    actor=actor_of(commit),
                )
        if result is RevisionResult.NO_CHANGES:
            log.info("revision %s changes nothing", desired.revision[:12])
            self._started = None
            return None
        self._started = Started(record.id, frozenset(services), _other_objects(changes))
        return self._started

    def record_refused(
        self,
        revision: str,
        commit: CommitMeta | None,
        reason: str,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        """A revision a policy kept out (once per revision); ``data`` goes with its audit
        entry."""
        self._record_rejected(
            revision, commit, RevisionResult.REFUSED, reason, f"refused: {reason}", data
        )

    def record_invalid(
        self,
        revision: str,
        commit: CommitMeta | None,
        diagnostics: Sequence[str],
    ) -> None:
        """A revision whose manifests did not validate (once per revision): its entry's
        reason is the first problem (PATH:LINE:COLUMN), its audit entry lists them all."""
        first = diagnostics[0] if diagnostics else "no details"
        self._record_rejected(
            revision,
            commit,
            RevisionResult.INVALID,
            first_problem(diagnostics),
            f"invalid: {len(diagnostics)} problem(s), the first {first}",
            {"diagnostics": list(diagnostics[:100])},
        )

    def _record_rejected(
        self,
        revision: str,
        commit: CommitMeta | None,
        result: RevisionResult,
        reason: str,
        event_text: str,
        data: Mapping[str, Any] | None,
    ) -> None:
        """A history entry and an audit entry for a commit that was not applied, unless a
        recent entry already says the same of it (a restarted daemon, or a new leader,
        meets it again; entries of the revision it runs on may have come since)."""
        recent = self.store.list_revisions(limit=REJECTED_LOOKBACK)
        if any(r.sha == revision and r.result is result for r in recent):
            return
        with self.store.transaction():
            self.store.record_revision(
                revision,
                author=commit.author if commit else "",
                committed_at=commit.committed_at if commit else None,
                signer=commit.signer if commit else None,
                trigger=commit.trigger if commit else "",
                result=result,
                reason=reason,
                summary={"message": (commit.message if commit else "")[:500]},
            )
            self.store.append_event(
                f"revision.{result.value}",
                f"{revision[:12]} {event_text}",
                revision=revision,
                data=data,
                actor=actor_of(commit),
            )

    def revision_finished(
        self,
        started: Started,
        desired: DesiredState,
        decision: PassDecision,
        failures: Mapping[str, BackoffRecord],
    ) -> bool:
        """Finish ``started`` when its services have settled; True when finished."""
        if decision.prune.pending:
            return False
        mine = [n for n in started.services if n in decision.services]
        if any(decision.services[n].record.phase not in _SETTLED for n in mine):
            return False
        held = {n: decision.services[n].held_by for n in mine if decision.services[n].held_by}
        for deps in held.values():
            # Held back by a dependency that is still moving: this revision is not done.
            if any(
                d in decision.services and decision.services[d].record.phase not in _SETTLED
                for d in deps
            ):
                return False
        results: dict[str, RevisionResult] = {}
        reasons: list[str] = []
        notes: list[str] = []
        staying: list[str] = []  # rolled back from an earlier revision: not this one's result
        for name in sorted(mine):
            service = decision.services[name]
            record = service.record
            template = desired.services[name].template_digest
            failure = failures.get(name)
            if name in held:
                results[name] = RevisionResult.FAILED
                holders = ", ".join(
                    f"{d} ({decision.services[d].record.phase})"
                    if d in decision.services
                    else f"{d} (missing)"
                    for d in held[name]
                )
                reasons.append(f"{name}: rollout held back by {holders}")
            elif record.failed_digest == template:
                note = _stays_rolled_back(name, record, desired)
                if note is None:
                    results[name] = RevisionResult.ROLLED_BACK
                    reasons.append(f"{name}: {record.last_error or 'rolled back'}")
                else:
                    notes.append(note)
                    staying.append(name)
            elif record.phase is RolloutPhase.DEGRADED:
                results[name] = RevisionResult.FAILED
                reasons.append(f"{name}: {record.last_error or record.message}")
            elif failure is not None:
                results[name] = RevisionResult.FAILED
                reasons.append(f"{name}: {failure.reason}")
            else:
                results[name] = RevisionResult.SUCCEEDED
        for name in started.services - set(mine):
            results[name] = RevisionResult.SUCCEEDED  # pruned: it left Git, as asked
        if any(r is RevisionResult.ROLLED_BACK for r in results.values()):
            result = RevisionResult.ROLLED_BACK
        elif any(r is RevisionResult.FAILED for r in results.values()):
            result = RevisionResult.FAILED
        elif results or started.objects:
            # Nodes, NodePools and Volumes are applied when the revision starts (their
            # inventory follows Git): a revision of them alone changed something.
            result = RevisionResult.SUCCEEDED
        else:
            result = RevisionResult.NO_CHANGES
        if started.objects and not results:
            notes.append("applied " + ", ".join(started.objects))
        reason = "; ".join([*reasons, *notes])
        # Recorded as what they are (unnamed, a service would take the revision's result).
        results.update(dict.fromkeys(staying, RevisionResult.ROLLED_BACK))
        # One transaction: a reader (or a crash) never sees the result without its event.
        with self.store.transaction():
            self.store.finish_revision(started.id, result, reason=reason, service_results=results)
            self.store.append_event(
                f"revision.{result.value}",
                f"{desired.revision[:12]} {result.value}" + (f": {reason}" if reason else ""),
                revision=desired.revision,
                actor=self.actor,
            )
        log.info(
            "revision %s %s",
            desired.revision[:12],
            result.value,
            extra={"revision": desired.revision},
        )
        self._started = None
        return True

    def revision_recovered(
        self,
        desired: DesiredState,
        decision: PassDecision,
        failures: Mapping[str, BackoffRecord],
    ) -> bool:
        """Record that the revision whose application failed has since converged: every
        service it failed on is Healthy on it, nothing fails, nothing is pending. True
        when recorded.

        As Flux's ``lastAppliedRevision`` moves once a retry of a failed revision
        succeeds: the failed application stays in the history as it was, and a new one
        of the same commit (``trigger: recovered``) says when the cluster got there, so
        status shows the revision the cluster runs instead of the stale failure. A
        rolled-back service never counts as recovered: its template stays rolled back.
        """
        # The pass's own facts first: the store is read only when all is Healthy (but a
        # service that stays rolled back from an earlier revision, which this one's own
        # application did not count against it either).
        if failures or not decision.settled:  # settled: nothing left to prune either
            return False
        staying: dict[str, str] = {}
        for name, d in decision.services.items():
            note = (
                _stays_rolled_back(name, d.record, desired)
                if d.record.phase is RolloutPhase.ROLLED_BACK and not d.held_by
                else None
            )
            if note is not None:
                staying[name] = note
            elif d.record.phase is not RolloutPhase.HEALTHY or d.held_by:
                return False
        last = self.store.last_admitted_revision()
        if last is None or last.sha != desired.revision or last.result is not RevisionResult.FAILED:
            return False
        failed = sorted(
            name
            for name, r in last.service_results.items()
            if r is RevisionResult.FAILED and name not in staying
        )
        reason = "converged after the failed application: " + (
            ", ".join(f"{name} Healthy" for name in failed) or "every service Healthy"
        )
        reason = "; ".join([reason, *(staying[n] for n in sorted(staying))])
        with self.store.transaction():
            record = self.store.record_revision(
                desired.revision,
                author=last.author,
                committed_at=last.committed_at,
                signer=last.signer,
                trigger="recovered",
                services=last.services,
                summary={"changes": [], "message": last.summary.get("message", "")},
            )
            self.store.finish_revision(
                record.id,
                RevisionResult.SUCCEEDED,
                reason=reason,
                service_results={
                    n: RevisionResult.ROLLED_BACK if n in staying else RevisionResult.SUCCEEDED
                    for n in last.services
                },
            )
            self.store.append_event(
                "revision.recovered",
                f"{desired.revision[:12]} recovered: {reason}",
                revision=desired.revision,
                actor=SYSTEM_ACTOR,
            )
        log.info(
            "revision %s recovered: %s",
            desired.revision[:12],
            reason,
            extra={"revision": desired.revision},
        )
        return True

    # ------------------------------------------------------------------ per service

    def save(self, decision: ServiceDecision) -> ServiceDecision:
        """Write what the pass decided for one service, in one transaction; the decision
        with the record as stored (request flags as the store holds them)."""
        if not (
            decision.save
            or decision.applied
            or decision.events
            or decision.backoff
            or decision.forgiven
            or decision.bounds_scale
        ):
            return decision

        scaled: list[bool] = []  # whether the bounds' change of count was recorded here

        def write() -> RolloutRecord:
            scaled.clear()  # atomic may run it again
            record = decision.record
            for what in decision.consume:
                self.store.consume_request(decision.name, what)
            if decision.save:
                record = self.store.upsert_rollout(
                    decision.record, reset_requests=decision.reset_requests
                )
            for entry in decision.applied:
                self.store.record_applied(
                    entry.kind, entry.name, entry.revision, entry.digest, entry.canonical
                )
            for state in decision.backoff:
                self.store.record_backoff(state)
            for slot, template in decision.forgiven:
                self.store.clear_backoff(decision.name, slot, template)
            if decision.bounds_scale is not None:
                scaled.append(record_bounds_scale(self.store, decision.bounds_scale))
            for event in decision.events:
                self.store.append_event(
                    event.kind,
                    event.message,
                    service=event.service,
                    revision=event.revision,
                    data=dict(event.data) if event.data is not None else None,
                    actor=self.actor
                    if event.kind.startswith(_COMMIT_EVENT_PREFIXES)
                    else SYSTEM_ACTOR,
                )
            return record

        # One transaction; on etcd tried again if an operator's request (or another
        # writer) changed what it read meanwhile, rather than failing the pass.
        record = self.store.atomic(write)
        scale = decision.bounds_scale if any(scaled) else None
        if scale is not None:
            log.info(
                "autoscaled %s: %d -> %d (%s)",
                scale.service,
                scale.from_count,
                scale.to_count,
                scale.reason,
                extra={"service": scale.service},
            )
        for event in decision.events:
            if event.kind in ("rollout.rolled-back", "rollout.failed", "service.degraded"):
                log.error("%s", event.message, extra={"service": decision.name})
            elif event.kind == "replica.restarted":
                log.warning("%s", event.message, extra={"service": decision.name})
        return replace(decision, record=record, bounds_scale=scale)

    def nodes_and_volumes(self, desired: DesiredState, live: LiveState) -> None:
        """The inventory of Nodes, NodePools and Volumes follows Git (they roll nothing
        out; a NodePool's nodes are its sync's, :mod:`gitorch.apply.nodepools`). A Node
        that left Git is forgotten once no replica is seen on it: until then the pass
        drains it (:func:`gitorch.live.inventory.leaving_targets`)."""
        occupied = {r.node for service in live.services.values() for r in service.replicas}
        applied = {(a.kind, a.name): a.digest for a in self.store.list_applied()}
        objects: list[Node | Volume | NodePool] = [
            *desired.nodes.values(),
            *desired.volumes.values(),
            *desired.node_pools.values(),
        ]
        for obj in objects:
            if applied.get((obj.kind, obj.name)) != obj.digest:
                self.store.record_applied(
                    obj.kind, obj.name, desired.revision, obj.digest, obj.canonical
                )
        for kind, name in applied:
            if kind == "Node" and name not in desired.nodes:
                if name in occupied:
                    continue
                log.info("node %s left Git and runs no replica: forgotten", name)
                self.store.forget_applied(kind, name)
                self.store.remove_node(name)
            elif (kind == "Volume" and name not in desired.volumes) or (
                kind == "NodePool" and name not in desired.node_pools
            ):
                self.store.forget_applied(kind, name)
        for record in self.store.list_volumes():
            # The records keep the Volume as Git says now: its reclaimPolicy rules once it
            # has left Git. A released record is bound again by the pass, not here.
            volume = desired.volumes.get(record.name)
            if (
                volume is not None
                and record.released_at is None
                and record.spec != volume.canonical
            ):
                self.store.bind_volume(record.name, record.node, volume.canonical)

    # ------------------------------------------------------------------ volumes

    def volumes_decided(
        self, decision: VolumeDecision, desired: DesiredState, live: LiveState
    ) -> None:
        """What a pass decided about volumes, written before anything is executed: the
        nodes volumes are bound to (a daemon killed next binds them the same), releases,
        and volumes found missing (once) or back."""
        known = {(r.name, r.node): r for records in live.volume_records.values() for r in records}
        newly = [
            m
            for m in decision.missing
            if (record := known.get((m.volume, m.node))) is not None and record.missing_at is None
        ]

        def write() -> None:
            for bind in decision.binds:
                volume = desired.volumes.get(bind.volume)
                spec = volume.canonical if volume is not None else {}
                self.store.bind_volume(bind.volume, bind.node, spec)
                self.store.append_event(
                    "volume.bound", f"volume {bind.volume} bound to {bind.node}: {bind.reason}"
                )
            for release in decision.releases:
                self.store.release_volume(release.volume)
                self.store.append_event(
                    "volume.released",
                    f"volume {release.volume} released, kept on {release.node}: {release.reason}",
                )
            for missing in newly:
                self.store.volume_missing(missing.volume, missing.node)
                self.store.append_event(
                    "volume.missing",
                    f"volume {missing.volume} is missing on {missing.node}: {missing.reason}",
                )
            for name, node in decision.found:
                self.store.volume_created(name, node)
                self.store.append_event("volume.found", f"volume {name} is on {node} again")

        self.store.atomic(write)  # tried again if a concurrent writer (the CLI) interferes
        for missing in newly:
            log.error(
                "volume %s is missing on %s: %s", missing.volume, missing.node, missing.reason
            )

    def volumes_executed(self, execution: Execution, desired: DesiredState) -> None:
        """Volumes made (recorded where they are) and deleted (forgotten)."""

        def write() -> None:
            for create in execution.volumes_created:
                volume = desired.volumes.get(create.volume)
                spec = volume.canonical if volume is not None else {}
                self.store.bind_volume(create.volume, create.node, spec)
                self.store.volume_created(create.volume, create.node)
                self.store.append_event(
                    "volume.created", f"volume {create.volume} on {create.node}: {create.reason}"
                )
            for delete in execution.volumes_deleted:
                self.store.forget_volume(delete.volume, delete.node)
                self.store.append_event(
                    "volume.deleted",
                    f"volume {delete.volume} and its data deleted on {delete.node}: {delete.reason}",
                )

        self.store.atomic(write)

    def forget(self, service: str) -> None:
        """A pruned service whose replicas are all gone."""
        with self.store.transaction():
            self.store.forget_applied("Service", service)
            self.store.delete_rollout(service)
            self.store.clear_backoff(service)
            self.store.append_event(
                "service.pruned", f"{service} left Git: removed", service=service, actor=self.actor
            )
        log.info("pruned service %s", service, extra={"service": service})

    # ------------------------------------------------------------------ failures

    def failures(
        self,
        decision: PassDecision,
        execution: Execution,
        backoff: Mapping[str, ServiceBackoff],
        now: float,
    ) -> None:
        """Back-off for what failed this pass; forgive a service whose failure is over."""
        for failure in execution.start_failures:
            known = backoff.get(failure.service, NO_BACKOFF).get(failure.slot, failure.template)
            restarts = 1
            if known is not None and known.of(failure.template):
                restarts = known.restarts + 1
            state = BackoffRecord(
                failure.service,
                failure.slot,
                restarts,
                now,
                None,
                template=failure.template,
                replica_id=None,
                reason=f"{START_FAILED}{failure.message}",
            )
            with self.store.transaction():
                self.store.record_backoff(state)
                self.store.append_event(
                    "replica.start-failed",
                    f"{failure.service}-{failure.slot}: {failure.message}; "
                    f"{describe(state, now, self.crash_loop, 'failed start')}",
                    service=failure.service,
                    data={"slot": failure.slot, "message": failure.message},
                )
        for service, message in execution.service_failures.items():
            known = backoff.get(service, NO_BACKOFF).failure
            state = BackoffRecord(
                service,
                SERVICE_SLOT,
                (known.restarts if known is not None else 0) + 1,
                now,
                None,
                reason=message,
            )
            changed = known is None or known.reason != message
            with self.store.transaction():
                self.store.record_backoff(state)
                if changed:
                    self.store.append_event(
                        "service.failed", f"{service}: {message}", service=service
                    )
            # Once per cause: it is tried again every few seconds while the port is taken
            # (status and the audit log say it meanwhile).
            log.log(
                logging.ERROR if changed else logging.DEBUG,
                "service %s failed: %s; retry in %.0fs",
                service,
                message,
                remaining(state, now, listen_retry(self.crash_loop)),
                extra={"service": service},
            )
        published = execution.published
        for service, states in backoff.items():
            known = states.failure
            if known is None or service in execution.service_failures:
                continue
            if published is None or not _serves(published, service, decision):
                continue
            with self.store.transaction():
                self.store.clear_backoff(service, SERVICE_SLOT)
                self.store.append_event(
                    "service.recovered", f"{service}: {known.reason}: resolved", service=service
                )
            log.info("service %s recovered", service, extra={"service": service})


_SETTLED = (RolloutPhase.HEALTHY, RolloutPhase.ROLLED_BACK, RolloutPhase.DEGRADED)


def _stays_rolled_back(name: str, record: RolloutRecord, desired: DesiredState) -> str | None:
    """What a revision's entry says of ``name`` when it stays rolled back from an earlier
    revision (Git still holds the template that failed there, so it is not retried), or
    None when it is not that: it rolled back in this revision, or runs what Git says."""
    template = desired.services[name].template_digest if name in desired.services else None
    if record.failed_digest is None or record.failed_digest != template:
        return None
    if record.failed_revision in (None, desired.revision):
        return None
    # Why it rolled back there (a failure, or `gitorch abort`), as recorded.
    why = record.last_error or "its template failed there"
    return f"{name} stays rolled back from {record.failed_revision[:12]} ({why})"


def _serves(table: Any, service: str, decision: PassDecision) -> bool:
    """Whether ``service``'s routes (if it has any) are all in the published table."""
    wanted = [n for n in decision.table.routes if n.split(".", 1)[0] == service]
    return all(n in table.routes for n in wanted)


def service_failures(backoff: Sequence[BackoffRecord]) -> dict[str, BackoffRecord]:
    """Services with a failure of their own (back-off slot 0)."""
    return {b.service: b for b in backoff if b.slot == SERVICE_SLOT}


#: Longest value a history entry keeps of one field (a whole script is not history).
_RECORDED_VALUE_CHARS = 500


def _recorded_change(change: FieldChange) -> dict[str, Any]:
    """One field change as history keeps it (long values cut, sensitive ones redacted)."""
    entry = change.to_json()
    for side in ("before", "after"):
        value = entry.get(side)
        text = json.dumps(value, ensure_ascii=False, default=str)
        if len(text) > _RECORDED_VALUE_CHARS:
            entry[side] = text[:_RECORDED_VALUE_CHARS] + "…"
    return entry
