"""``gitorch daemon``: the reconciler running forever, driven from Git.

One loop thread (traffic snapshots, autoscaling and node pools have threads of their
own, so none of them holds a pass back). It wakes on a timer (``resync``, quick passes that self-heal), on the
poll interval (fetch the source), at once on a local commit (watchdog) or a verified
webhook, and sooner while a rollout is moving. Each wake-up that fetches reads the newest
commit of the tracked ref; a commit that does not validate is reported (``status``, the
API, the log, with file:line) and the last good desired state keeps being reconciled.

SIGTERM or SIGINT stops the loop between passes: replicas keep running, and the next
daemon re-adopts them from their labels.

With etcd state several daemons run at once and one leads (see
:mod:`gitorch.apply.session`): the loop reconciles only while this daemon leads; a standby
keeps its desired state fresh and serves status, history and plan read-only, and refuses
writes (promote, abort, an audited reconcile request) naming the leader.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import signal
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gitorch.api.auth import TokenSet
from gitorch.api.metrics import ControlPlaneCollector, Metrics
from gitorch.api.server import ApiServer, parse_listen
from gitorch.api.traffic import TrafficMeter, TrafficReading, store_revisions
from gitorch.api.traffic_metrics import TrafficCollector
from gitorch.api.webhook import WebhookSecret
from gitorch.apply.autoscaler import Autoscaler
from gitorch.apply.bookkeeping import Bookkeeper, first_problem
from gitorch.apply.health import ReplicaHealth
from gitorch.apply.nodepools import NodePoolScaler
from gitorch.apply.reconciler import CommitMeta, PassPreempted, PassResult, Reconciler
from gitorch.apply.scale_metrics import ScaleMetrics
from gitorch.apply.session import Session, SessionOptions, commit_meta, verified_commit
from gitorch.dashboard import Dashboard
from gitorch.decide.backoff import DEFAULT_CRASH_LOOP
from gitorch.decide.cluster import changed_services
from gitorch.decide.driver_hint import driver_mismatch
from gitorch.decide.guard import mass_prune
from gitorch.diff import Plan
from gitorch.errors import GitorchError, ManifestInvalid, RefNotFound, StateError
from gitorch.live import observe
from gitorch.live.inventory import open_runtimes
from gitorch.live.model import LiveReplica, LiveState
from gitorch.live.observe import assess_readiness
from gitorch.manifests import ManifestLoader
from gitorch.manifests.loader import load_desired
from gitorch.manifests.model import DesiredState
from gitorch.readmodel.cluster import ClusterView, registered_targets
from gitorch.readmodel.history import history_json, scaling_json
from gitorch.readmodel.logs import LogFollower, live_logs, previous_logs, retained, retained_json
from gitorch.readmodel.nodes import nodes_json
from gitorch.readmodel.status import ServiceEntries, control_plane_json, status_json
from gitorch.readmodel.volumes import check_resettable, reset_message, volumes_json
from gitorch.runtime.base import Runtime
from gitorch.sources import Source, open_source
from gitorch.sources.verify import CommitNotTrusted, SignaturePolicy, Verification
from gitorch.state import RecordNotFound, StateStore
from gitorch.state.audit_chain import ChainEntry
from gitorch.state.errors import NotLeader, StateUnavailable
from gitorch.state.layout import DAEMON_FILE
from gitorch.state.requests import request_action

#: The share of one core that passes changing nothing may take between events (commits,
#: webhooks, readiness changes and rollouts in motion wake the loop at once): the resync
#: stretches to ``pass CPU / IDLE_CPU_SHARE`` when that is longer (issue 20: < 2% idle). The
#: pass CPU is the whole process's during the pass (observe runs on a pool; probes, the API):
#: an upper bound. 1%, not 2%: the rest of an idle daemon (its API, health monitor,
#: traffic snapshots) takes up to ~0.7% besides (2.1% measured with 2%, 2.0-2.2% with
#: 1.5% at 2,000 services). The cost is drift found later: at 2,000 services settled passes
#: come ~45 s apart (Argo CD's resync is 3 minutes); exits, commits and probes wake sooner.
IDLE_CPU_SHARE = 0.01
#: Seconds a status or a scrape waits for a traffic read under way before it takes the
#: last reading (a read takes milliseconds unless a host stopped answering under it).
TRAFFIC_READ_WAIT = 1.0
#: ... but a settled daemon still passes at least this often (seconds): self-heal of a
#: replica without probes is bounded.
IDLE_RESYNC_MAX = 120.0
#: Status serves the last pass's observation up to this old (seconds; it says its age).
STATUS_OBSERVATION_MAX_AGE = 30.0
#: How long the checkout's watcher waits for a burst of writes to end (seconds).
WATCH_DEBOUNCE = 0.05
#: A commit read while the state store could not record it (etcd between raft leaders,
#: or without a quorum) is fetched again after this many seconds, not at the next poll.
STORE_RETRY = 1.0
#: After an iteration of the loop failed on a bug, the loop waits this long (seconds)
#: before the next: the daemon goes on serving, without spinning on the same fault.
LOOP_FAULT_PAUSE = 1.0
#: A pass gives way to a commit, a webhook or a reconcile request at most this many times
#: in a row: a stream of triggers never starves the whole pass (self-heal, prunes).
MAX_PREEMPTIONS_IN_ROW = 3

log = logging.getLogger("gitorch.daemon")


@dataclass(frozen=True)
class DaemonOptions:
    repo: str
    ref: str | None
    path: str
    session: SessionOptions
    interval: float = 30.0  # fetch the source this often
    resync: float = 2.0  # reconcile (self-heal) at least this often
    #: The operator chose ``resync`` (``--resync``): it is kept. The default is stretched
    #: by the idle budget (:data:`IDLE_CPU_SHARE`) when passes are costly.
    resync_fixed: bool = False
    listen: str = "127.0.0.1:7420"
    webhook_secret: WebhookSecret | None = None
    api_tokens: TokenSet | None = None  # bearer auth of the API (None: open, loopback only)
    api_insecure: bool = False  # allow an open (or plain-HTTP) API on a non-loopback address
    api_tls: ssl.SSLContext | None = None  # HTTPS for the API (--tls-cert/--tls-key)
    watch: bool = True  # react at once to commits in a local checkout
    allow_mass_prune: bool = False  # apply a revision that removes most services
    # --verify-commits: only commits signed by these keys are applied (None: any commit).
    signature_policy: SignaturePolicy | None = None
    # Store each route's per-version traffic this often, for `gitorch status` without a
    # daemon (one small transaction: see the measured cost in docs/architecture.md).
    traffic_interval: float = 2.0
    # Read autoscaled services' metrics and decide their counts this often.
    autoscale_sync: float = 15.0


class Daemon:
    """The loop, and the :class:`~gitorch.api.DaemonHandle` its HTTP API serves."""

    def __init__(self, options: DaemonOptions) -> None:
        self.options = options
        self.metrics = Metrics()
        self._wake = threading.Event()
        self._fetch_requested = True
        self._fetch_reason = "daemon start"  # why the requested fetch was asked for
        # Set with a requested fetch: the pass in progress gives way (PassPreempted).
        self._preempt = threading.Event()
        self._preempted_in_row = 0
        # The services the newest revision changed, acted on by a focused pass first.
        self._focus: frozenset[str] = frozenset()
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # guards the fields below, read by API threads
        self._desired: DesiredState | None = None
        self._commit: CommitMeta | None = None
        self._seen_sha: str | None = None
        self._last_error: dict[str, Any] | None = None
        self._last_pass: PassResult | None = None
        self._pass_cpu = 0.0  # CPU seconds the process used in the last pass that changed nothing
        self._loop_error: str | None = None
        # Status documents: counts the health monitor's transitions, so the observation
        # with readiness and the service entries are reused while nothing moved.
        self._health_generation = 0
        self._healthy_live: tuple[LiveState, int, LiveState] | None = None
        self._status_entries = ServiceEntries()
        # The desired state whose settled heap set_apart_long_lived() last set apart.
        self._set_apart: DesiredState | None = None
        self.session: Session | None = None
        self.source: Source | None = None
        # A Service exposed on this daemon's own API port could never be served: such a
        # commit is invalid (file:line), and the last good state keeps running.
        listen_port = parse_listen(options.listen)[1]
        self.loader = ManifestLoader(
            reserved_ports={
                listen_port: f"this gitorch daemon's API and webhook (--listen {options.listen})"
            },
            allowed_host_paths=[str(p) for p in options.session.allowed_host_paths],
        )
        self.api: ApiServer | None = None
        self.dashboard: Dashboard | None = None
        self.traffic: TrafficMeter | None = None
        # One pass at a time: the API's plan observes and decides with the same
        # reconciler (probe state, node tracker) as the loop.
        self._pass_lock = threading.Lock()
        self._passes = 0  # passes started (status's own observation holds until the next)
        self._status_live: tuple[int, LiveState] | None = None
        self._standby_runtimes: tuple[tuple[Any, ...], dict[str, Runtime]] | None = None
        self._autoscaler: Autoscaler | None = None
        self._node_pools: NodePoolScaler | None = None

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> None:
        """Run until :meth:`stop` (or SIGTERM/SIGINT when called from the main thread)."""
        opts = self.options
        self.source = open_source(opts.repo, cache_root=self._cache_root(), ref=opts.ref)
        # The data plane outlives the daemon: a restart or an upgrade drops no request.
        session_options = replace(
            opts.session,
            data_plane_outlives=True,
            member_info={
                "listen": f"http://{_client_address(opts.listen)}",
                # `validate` and `plan` refuse the hostPaths the daemons would refuse.
                "allowHostPaths": [str(p) for p in opts.session.allowed_host_paths],
                "lbHost": opts.session.lb_host,
            },
        )
        with Session(
            session_options,
            on_health_change=self._health_changed,
            on_leadership=lambda _: self._wake.set(),
            # A replica that exits is replaced by a pass now, not at the stretched resync.
            on_replica_exit=lambda _: self._wake.set(),
        ) as session:
            self.session = session
            self.traffic = _traffic_meter(session, opts.session.data_plane)
            self.metrics.add_collector(TrafficCollector(self._traffic_now))
            if session.leadership is not None:
                self.metrics.add_collector(ControlPlaneCollector(self._control_plane_now))
            self._write_daemon_file()
            self.dashboard = Dashboard(
                self, opts.api_tokens, secure_cookie=opts.api_tls is not None, repo=opts.repo
            )
            self.api = ApiServer(
                self,
                opts.listen,
                webhook_secret=opts.webhook_secret,
                tokens=opts.api_tokens,
                insecure=opts.api_insecure,
                tls=opts.api_tls,
                app=self.dashboard,
            )
            self.api.start()
            watcher = self._start_watcher()
            autoscaling = threading.Thread(
                target=self._autoscale_loop, name="gitorch-autoscaler", daemon=True
            )
            autoscaling.start()
            pools = threading.Thread(
                target=self._node_pool_loop, name="gitorch-node-pools", daemon=True
            )
            pools.start()
            traffic = threading.Thread(
                target=self._traffic_loop, name="gitorch-traffic", daemon=True
            )
            traffic.start()
            if threading.current_thread() is threading.main_thread():
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, lambda *_: self.stop())
            log.info("daemon started", extra={"repo": opts.repo, "listen": opts.listen})
            try:
                self._loop()
            finally:
                log.info("daemon stopping: replicas and the data plane keep running")
                traffic.join(timeout=10)
                self._write_traffic()  # status keeps the last figures (and shows their age)
                if watcher is not None:
                    watcher.__exit__(None, None, None)
                self.dashboard.close()
                self.api.stop()
                autoscaling.join(timeout=10)
                pools.join(timeout=10)
                if self._etcd is None:
                    (opts.session.state_dir / DAEMON_FILE).unlink(missing_ok=True)

    @property
    def _etcd(self) -> object:
        return self.options.session.location.etcd

    @property
    def name(self) -> str:
        """This daemon's name among the daemons of one etcd namespace."""
        if self.session is not None and self.session.leadership is not None:
            return self.session.leadership.name
        from gitorch.live.inventory import local_node_name

        return self.options.session.name or local_node_name()

    def _cache_root(self) -> Path:
        """Git's cache: one per daemon with etcd state (daemons of one host share the
        runtime directory, and two fetches into one mirror would collide)."""
        local = self.options.session.state_dir
        return local / "cache" if self._etcd is None else local / "daemons" / self.name / "cache"

    @property
    def acting(self) -> bool:
        """Whether this daemon reconciles now (it leads, or the state is SQLite)."""
        return self.session is not None and self.session.leading

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def _start_watcher(self) -> Any:
        if not self.options.watch or not Path(self.options.repo).is_dir():
            return None
        try:
            from gitorch.sources.watch import RepositoryWatcher

            # Only commits count (the daemon never applies the working tree: an edit
            # there would preempt a pass for nothing), and a ref renamed into place ends
            # a commit: it triggers at once (at_ref_update). A ref written otherwise
            # waits a short debounce (the 200 ms default was a fifth of issue 20's
            # budget from commit to first replica).
            watcher = RepositoryWatcher(
                Path(self.options.repo),
                lambda: self.trigger("local commit"),
                debounce=WATCH_DEBOUNCE,
                commits_only=True,
                at_ref_update=True,
            )
            watcher.__enter__()
            return watcher
        except GitorchError as exc:
            log.warning("not watching %s: %s", self.options.repo, exc.message)
            return None

    # ------------------------------------------------------------------ the loop

    def _loop(self) -> None:
        next_fetch = 0.0
        next_pass = 0.0  # when the last pass asked to come back
        woken = True
        while not self._stopping.is_set():
            try:
                now = time.monotonic()
                if self._fetch_requested or now >= next_fetch:
                    with self._lock:
                        reason = self._fetch_reason if self._fetch_requested else "poll"
                        self._fetch_requested = False
                        self._preempt.clear()  # this fetch is what the trigger asked for
                    next_fetch = now + self.options.interval
                    known = self._desired
                    if self._refresh_desired(reason):
                        next_fetch = min(next_fetch, now + STORE_RETRY)
                    if self._desired is not known and self._desired is not None:
                        woken = True  # a new revision: pass now, its changed services first
                        # With the changes of a revision read but not acted on yet, if any.
                        self._focus |= changed_services(known, self._desired)
                # A pass when one is due or something woke the loop (a commit, a webhook, a
                # readiness change, a request), not when only a fetch is due: at 2,000
                # services a pass costs far more than the fetch.
                if woken or now >= next_pass:
                    self._settle()
                    requeue = self._reconcile_once()
                    if not woken:
                        self._set_apart_settled()
                    # The pass says when to come back (something moving: soon; all settled: the
                    # resync timer); commits, webhooks and readiness changes wake it sooner.
                    timeout = min(requeue, self.options.resync)
                    if requeue >= self.options.resync and not self.options.resync_fixed:
                        # Settled: passes that change nothing take at most IDLE_CPU_SHARE of a
                        # core. A pass of 2,000 services costs ~0.5 s of CPU, so a 2 s resync
                        # would keep a quarter of a core busy for nothing; small clusters keep
                        # the resync.
                        stretched = min(self._pass_cpu / IDLE_CPU_SHARE, IDLE_RESYNC_MAX)
                        timeout = max(timeout, stretched)
                    next_pass = time.monotonic() + timeout
            except Exception:  # a bug must not end the loop: log it, keep serving
                log.exception("daemon loop iteration crashed; going on")
                self._stopping.wait(LOOP_FAULT_PAUSE)
                woken = False
                continue
            # Wake for the next pass or the next fetch, whichever comes first.
            due = min(next_pass, next_fetch)
            woken = self._wake.wait(max(0.05, due - time.monotonic()))
            self._wake.clear()

    def _health_changed(self, replica_id: str, health: ReplicaHealth) -> None:
        """The health monitor's listener: a readiness change wakes the loop."""
        self._health_generation += 1
        self._wake.set()

    def _settle(self) -> None:
        """Before a pass: while the last batch started is partly ready (a rollout's pair,
        one answered, its partner not yet), wait until the rest answered or the batch's
        hold ends (decide.batch: READY_SETTLE after the first answered). The pass would
        hold the answered ones back anyway; waiting here spares a pass that could do
        nothing for the batch (at 2,000 services a pass costs ~0.4 s). A commit, a
        webhook or a stop ends the wait."""
        session = self.session
        reconciler = session.reconciler if session is not None else None
        if reconciler is None:
            return
        while not self._stopping.is_set() and not self._fetch_requested:
            hold = reconciler.executor.batch_hold()
            left = hold.seconds_left(reconciler.health.now())
            if not hold.held or left <= 0:
                return
            # A wake meanwhile (a readiness, an exit) is for the pass about to run.
            self._wake.wait(left)
            self._wake.clear()

    def _refresh_desired(self, trigger: str) -> bool:
        """Fetch and load the newest commit; ``trigger``: why (recorded with its revision).

        True when the commit was read but could not be taken for want of the state store
        (etcd between raft leaders, or without a quorum): it is not marked seen, and the
        loop fetches again soon rather than at the next poll."""
        try:
            self._take_newest(trigger)
        except StoreBusy as busy:
            log.warning(
                "revision %s not taken yet, trying again in %g s: %s",
                busy.sha[:12],
                STORE_RETRY,
                busy.cause.message,
                extra={"revision": busy.sha},
            )
            return True
        return False

    def _take_newest(self, trigger: str) -> None:
        assert self.source is not None
        opts = self.options
        began = time.monotonic()
        try:
            fetched = self.source.fetch()
            if not fetched.reachable:
                self.metrics.source_fetch_errors_total.inc()
                log.warning("source not reachable, using the cached copy: %s", fetched.error)
            if fetched.history_rewritten:
                log.warning(
                    "history rewritten: %s is no longer an ancestor of %s",
                    fetched.old_sha,
                    fetched.new_sha,
                )
                assert self.session is not None
                if self.acting:
                    self.session.store.append_event(
                        "source.history-rewritten",
                        f"the tracked ref moved from {fetched.old_sha} to {fetched.new_sha}, "
                        "not a descendant",
                        revision=fetched.new_sha,
                    )
            sha = self.source.resolve(opts.ref)
            if sha == self._seen_sha:
                return
            verdict = (
                self.source.verify(sha, opts.signature_policy)
                if opts.signature_policy is not None
                else None
            )
            if verdict is not None and not verdict.trusted:
                with _store_needed(sha):
                    self._untrusted(verdict, trigger)
                with self._lock:
                    self._seen_sha = sha
                return
            snapshot = self.source.snapshot(sha, opts.path)
            desired = load_desired(snapshot, self.loader)
        except ManifestInvalid as exc:
            with _store_needed(sha):
                meta = replace(commit_meta(snapshot.revision, snapshot.commit), trigger=trigger)
                self._invalid(sha, exc, verified_commit(meta, verdict))
            with self._lock:
                self._seen_sha = sha
            return
        except StoreBusy:
            raise
        except GitorchError as exc:
            self.metrics.source_fetch_errors_total.inc()
            self._set_error({"message": exc.message, "detail": list(exc.detail)})
            log.error("cannot read the desired state: %s", exc.message)
            return
        commit = verified_commit(
            replace(commit_meta(snapshot.revision, snapshot.commit), trigger=trigger), verdict
        )
        with _store_needed(sha):
            refused = self._refused(desired, commit)
        with self._lock:
            self._seen_sha = sha
        if refused:
            return
        with self._lock:
            self._desired = desired
            self._commit = commit
            self._last_error = None
        self._write_daemon_file()
        log.info(
            "new revision %s (fetched and loaded in %.0f ms)",
            sha[:12],
            (time.monotonic() - began) * 1000,
            extra={"revision": sha, "trigger": trigger},
        )
        if self.session is not None:
            hint = driver_mismatch(
                desired, self.options.session.runtime, self.session.default_driver
            )
            if hint is not None:
                log.warning("%s", hint)

    def _refused(self, desired: DesiredState, commit: CommitMeta) -> bool:
        """The mass-prune guard: True (and said everywhere) when ``desired`` would remove
        every service, or most of them, and the daemon was not told to allow it."""
        if self.options.allow_mass_prune or self.session is None:
            return False
        applied = [a.name for a in self.session.store.list_applied() if a.kind == "Service"]
        why = mass_prune(applied, desired.services)
        if why is None:
            return False
        self._keep_last_good(desired.revision)
        applying = (self._commit.sha if self._commit else "nothing")[:12]
        message = f"revision {desired.revision[:12]} refused: {why}; still applying {applying}"
        self._set_error({"message": message, "revision": desired.revision})
        log.error("%s", message, extra={"revision": desired.revision})
        if not self.acting:
            return True  # the leader records it
        with self._pass_lock:
            self.session.reconciler_for(self._desired or desired).books.record_refused(
                desired.revision, commit, why
            )
        return True

    def _untrusted(self, verdict: Verification, trigger: str) -> None:
        """A commit the signed-commit policy refuses: never applied, said everywhere
        (status, the log, history as ``refused``, the audit log); the last good one runs on."""
        assert self.source is not None and self.session is not None
        info = next(iter(self.source.history(verdict.sha, limit=1)), None)
        commit = verified_commit(replace(commit_meta(verdict.sha, info), trigger=trigger), verdict)
        self._keep_last_good(verdict.sha)
        applying = (self._commit.sha if self._commit else "nothing")[:12]
        message = f"{verdict.refusal}; still applying {applying}"
        self._set_error({"message": message, "revision": verdict.sha})
        log.error("%s", message, extra={"revision": verdict.sha})
        Bookkeeper(self.session.store, DEFAULT_CRASH_LOOP).record_refused(
            verdict.sha, commit, verdict.refusal, data=verdict.to_json()
        )

    def _keep_last_good(self, refused: str) -> None:
        """A daemon that starts on a refused or invalid commit goes on with the revision
        it was applying (the newest attempted that no policy refused: what a daemon that
        was not restarted would still apply; the last one that succeeded would prune the
        services added since), checked by the same policy; nothing when there is none."""
        if self._desired is not None or self.session is None or self.source is None:
            return
        last = self.session.store.last_admitted_revision()
        if last is None or last.sha == refused:
            return
        opts = self.options
        try:
            verdict = (
                self.source.verify(last.sha, opts.signature_policy)
                if opts.signature_policy is not None
                else None
            )
            if verdict is not None and not verdict.trusted:
                log.error("the last applied revision is not trusted either: %s", verdict.refusal)
                return
            snapshot = self.source.snapshot(last.sha, opts.path)
            desired = load_desired(snapshot, self.loader)
        except GitorchError as exc:
            log.error("cannot go on with the last applied revision: %s", exc.message)
            return
        trigger = f"daemon start: the revision it was applying ({refused[:12]} was refused)"
        commit = verified_commit(
            replace(commit_meta(snapshot.revision, snapshot.commit), trigger=trigger), verdict
        )
        with self._lock:
            self._desired = desired
            self._commit = commit
        log.info("going on with the revision it was applying, %s", last.sha[:12])

    def _invalid(self, sha: str, exc: ManifestInvalid, commit: CommitMeta) -> None:
        """An invalid revision: reported where people look; the last good one runs on."""
        self._keep_last_good(sha)
        diagnostics = [str(d) for d in exc.diagnostics]
        # The one-line message names the first problem (PATH:LINE:COLUMN): status and
        # the API show it where people look; every problem is in "diagnostics".
        first_and_more = first_problem(diagnostics)
        applying = (self._commit.sha if self._commit else "nothing")[:12]
        self._set_error(
            {
                "message": f"revision {sha[:12]} is invalid: {first_and_more}; "
                f"still applying {applying}",
                "revision": sha,
                "diagnostics": diagnostics,
            }
        )
        for line in diagnostics:
            log.error("invalid manifest: %s", line, extra={"revision": sha})
        assert self.session is not None
        if not self.acting:
            return  # the leader records it
        # History says it too: an auditor reading `gitorch history` sees every commit
        # the daemon reached, the rejected ones with why.
        Bookkeeper(self.session.store, DEFAULT_CRASH_LOOP).record_invalid(sha, commit, diagnostics)

    def _preempted(self) -> bool:
        """Whether the pass in progress should give way: a commit, a webhook or a request
        asked for a fetch since the pass started (at most MAX_PREEMPTIONS_IN_ROW times)."""
        return self._preempt.is_set() and self._preempted_in_row < MAX_PREEMPTIONS_IN_ROW

    def _reconcile_focused(self, desired: DesiredState, commit: CommitMeta | None) -> None:
        """The services the new revision changed, decided and acted on before the whole
        pass observes and decides every other one (issue 20: a commit's first replica
        does not wait for 2,000 services). Its result is the whole pass's to report."""
        focus, self._focus = self._focus, frozenset()
        assert self.session is not None
        started = time.monotonic()
        try:
            with self._pass_lock:
                reconciler = self.session.reconciler_for(desired)
                if not reconciler.focusable(desired, focus):
                    return
                self._passes += 1
                result = reconciler.reconcile_focused(desired, commit, focus)
        except GitorchError as exc:
            # The whole pass follows at once and meets (and reports) the same trouble.
            log.warning("focused pass failed: %s", exc.message)
            return
        if result is not None:
            log.info(
                "focused pass on %d changed service(s): %d replica(s) started or stopped "
                "in %.0f ms",
                len(focus),
                result.actions,
                (time.monotonic() - started) * 1000,
                extra={"revision": desired.revision},
            )
            for error in result.errors:
                log.warning("%s", error)

    def _reconcile_once(self) -> float:
        """One pass over the last good desired state; seconds until the next one."""
        desired, commit = self._desired, self._commit
        if desired is None or self.session is None:
            return self.options.resync
        if not self.session.leading:
            self._loop_error = None
            return self.options.resync  # a standby: the leader reconciles
        started, cpu_started = time.monotonic(), time.process_time()
        try:
            # A secret's new value (a rotated file, re-encrypted in Git) changes the
            # digests written here, hence the template digests: the services roll.
            desired = self.session.secrets.resolve(desired)
            self.session.store_unstored_table()
            if self._focus:
                self._reconcile_focused(desired, commit)
                # The whole pass follows at once; when the first of the pair the focused
                # pass started is ready already and its partner not yet, it waits for
                # the partner as any pass does (issue 20: else a wave of one).
                self._settle()
            with self._pass_lock:
                self._passes += 1
                reconciler = self.session.reconciler_for(desired)
                result = reconciler.reconcile(desired, commit, preempted=self._preempted)
        except PassPreempted as exc:
            # Nothing of it was written or done: the loop fetches the new revision now.
            self._preempted_in_row += 1
            log.info("%s", exc.message)
            return 0.0
        except NotLeader as exc:
            # Deposed mid-pass (the lease expired, another daemon leads): nothing this
            # pass wrote landed, and it stopped before acting any further.
            log.warning("stopped acting: %s", exc.message)
            return self.options.resync
        except StateUnavailable as exc:
            self.metrics.reconcile_total.inc(result="error")
            self._loop_error = exc.message
            log.error("not reconciling: %s", exc.message)
            return self.options.resync
        except GitorchError as exc:
            self.metrics.reconcile_total.inc(result="error")
            self._loop_error = exc.message
            log.error("reconcile failed: %s", exc.message)
            return self.options.resync
        except Exception as exc:  # a bug must not kill the daemon: log it, keep serving
            self.metrics.reconcile_total.inc(result="error")
            self._loop_error = f"internal error: {exc!r}"
            log.exception("reconcile crashed")
            return self.options.resync
        self._loop_error = None
        self._preempted_in_row = 0
        if result.actions == 0 and not result.executed:
            # Only a pass that changed nothing measures the idle cost: the pass that
            # started 4,000 replicas must not put the next resync an hour away.
            self._pass_cpu = time.process_time() - cpu_started
        self.metrics.reconcile_duration_seconds.observe(time.monotonic() - started)
        self.metrics.reconcile_total.inc(
            result="converged"
            if result.converged and not result.failed
            else "failed"
            if result.failed
            else "progressing"
        )
        for decided in result.decision.services.values() if result.decision else ():
            scale = decided.bounds_scale  # a count held within its bounds: a decision too
            if scale is not None:
                direction = "up" if scale.to_count > scale.from_count else "down"
                self.metrics.autoscale_decisions_total.inc(
                    service=scale.service, direction=direction
                )
        for svc in result.services:
            self.metrics.set_rollout_phase(svc.name, svc.phase)
            self.metrics.set_health(svc.name, drift=svc.drift, failing=svc.failing)
            self.metrics.set_replicas(
                svc.name, desired=svc.desired, ready=svc.ready, updated=svc.updated
            )
        self.metrics.set_revision(desired.revision)
        for error in result.errors:
            log.warning("%s", error)
        with self._lock:
            self._last_pass = result
        return result.requeue_after

    def _set_apart_settled(self) -> None:
        """After a pass of the resync timer (nothing woke the loop for a whole resync
        period) that found all settled: the heap is set apart once per desired state
        (:func:`set_apart_long_lived`), here and not when the revision settles, where a
        commit right after it would wait for the collection."""
        with self._lock:
            result = self._last_pass
        if result is None or self._set_apart is self._desired:
            return
        if result.converged and not result.failed and not result.actions and not result.executed:
            self._set_apart = self._desired
            set_apart_long_lived()

    def _autoscale_loop(self) -> None:
        """Every ``autoscale_sync`` seconds: read the autoscaled services' metrics, decide
        their counts and record them; a change wakes the reconcile loop, whose pass starts
        or drains the replicas. Its own thread: Docker's stats take about a second."""
        period = self.options.autoscale_sync
        while not self._stopping.wait(period):
            try:
                changed = self._autoscale_once()
            except GitorchError as exc:
                log.warning("autoscaler sync failed: %s", exc.message)
                continue
            except Exception:  # a bug must not stop autoscaling for good: log it, go on
                log.exception("autoscaler sync crashed")
                continue
            if changed:
                self._wake.set()

    def _autoscale_once(self) -> bool:
        """One sync; True when a service's count changed."""
        session, desired = self.session, self._desired
        if session is None or desired is None or session.reconciler is None:
            return False
        if not self.acting:
            return False  # a standby: the leader decides counts (its writes are fenced)
        autoscaled = any(s.autoscale is not None for s in desired.services.values())
        if not autoscaled and self._autoscaler is None:
            return False
        reconciler = session.reconciler
        if self._autoscaler is None or self._autoscaler.metrics.runtimes is not reconciler.runtimes:
            metrics = ScaleMetrics(reconciler.runtimes, session.dataplane.version_figures)
            self._autoscaler = Autoscaler(session.store, metrics)
        desired = session.secrets.resolve(desired)
        live = observe(reconciler.targets, reconciler.runtimes, session.cluster, session.store)

        def ready(replica: LiveReplica) -> bool:
            health = reconciler.health.health(replica.id)
            return health is not None and bool(health.ready)

        changed = False
        results = self._autoscaler.sync(desired, live, ready)
        # A service that lost its autoscale block (or left Git) loses its autoscale series.
        self.metrics.keep_autoscaled({r.decision.service for r in results})
        for result in results:
            decision = result.decision
            if result.vertical_applied:
                changed = True
                log.info(
                    "vertical autoscaling applied new requests to %s: a rolling update",
                    decision.service,
                    extra={"service": decision.service},
                )
            self.metrics.set_autoscale(
                decision.service,
                desired=decision.desired,
                bounds=result.bounds,
                readings=[(v.metric, v.value, v.target) for v in decision.verdicts],
            )
            if decision.changed:
                changed = True
                direction = "up" if decision.desired > decision.current else "down"
                self.metrics.autoscale_decisions_total.inc(
                    service=decision.service, direction=direction
                )
                log.info(
                    "autoscaled %s: %d -> %d (%s)",
                    decision.service,
                    decision.current,
                    decision.desired,
                    decision.reason,
                    extra={"service": decision.service},
                )
        return changed

    def _node_pool_loop(self) -> None:
        """Every ``autoscale_sync`` seconds: the NodePools' sync (make, drain, delete
        nodes). Its own thread: a provider may take minutes to make a machine."""
        period = self.options.autoscale_sync
        while not self._stopping.wait(period):
            try:
                changed = self._node_pools_once()
            except GitorchError as exc:
                log.warning("node pool sync failed: %s", exc.message)
                continue
            except Exception:  # a bug must not stop cluster autoscaling for good
                log.exception("node pool sync crashed")
                continue
            if changed:
                self._wake.set()

    def _node_pools_once(self) -> bool:
        """One sync of every NodePool; True when a node was made, drained or deleted
        (the next pass then places on, or moves off, it)."""
        session, desired = self.session, self._desired
        if session is None or desired is None or session.reconciler is None:
            return False
        if not self.acting:
            return False  # a standby: the leader makes and deletes nodes
        if (
            not desired.node_pools
            and self._node_pools is None
            and not session.store.list_node_pools()
        ):
            return False
        if self._node_pools is None:
            self._node_pools = NodePoolScaler(session.store)
        reconciler = session.reconciler
        with self._lock:
            last = self._last_pass
        decision = last.decision if last is not None else None
        pending = decision.unplaced if decision is not None else ()
        pass_nodes = decision.nodes if decision is not None else frozenset()
        live = observe(reconciler.targets, reconciler.runtimes, session.cluster, session.store)
        results = self._node_pools.sync(desired, live, pending, pass_nodes)
        self.metrics.keep_node_pools({r.record.pool for r in results})
        changed = False
        for result in results:
            pool = desired.node_pools.get(result.record.pool)
            self.metrics.set_node_pool(
                result.record.pool,
                nodes=len(result.record.nodes),
                draining=sum(1 for n in result.record.nodes if n.get("state") == "draining"),
                bounds=(pool.min_nodes, pool.max_nodes) if pool is not None else (0, 0),
                failing=bool(result.error),
            )
            decided = result.decision
            if decided.create:
                made = len(result.record.nodes) - decided.nodes_before
                if made > 0:
                    self.metrics.node_pool_decisions_total.inc(pool=decided.pool, action="create")
            if decided.drain:
                self.metrics.node_pool_decisions_total.inc(pool=decided.pool, action="drain")
            for _ in decided.delete:
                self.metrics.node_pool_decisions_total.inc(pool=decided.pool, action="delete")
            if decided.changed:
                changed = True
                log.info("node pool %s: %s", decided.pool, decided.reason)
        return changed

    def _traffic_loop(self) -> None:
        """Store the traffic every ``traffic_interval``, on a thread of its own: a read
        waits on a host that stopped answering (up to the ingress call's timeout, 5 s), and
        on the loop's thread it held back the pass that finds that host NotReady (~9 s
        after a cut, measured on the many-hosts rig, where the node check alone takes 3 s)."""
        while not self._stopping.wait(self.options.traffic_interval):
            try:
                self._write_traffic()
            except Exception:  # a bug must not end the snapshots: log it, keep going
                log.exception("traffic snapshot crashed; going on")

    def _control_plane_now(self) -> tuple[bool, list[dict[str, Any]] | None]:
        """Whether this daemon leads, and every member as etcd lists them now (None when
        etcd does not answer): the control plane's metrics."""
        session = self.session
        if session is None or session.leadership is None:
            return False, None
        from gitorch.state.etcd.backend import EtcdBackend
        from gitorch.state.etcd.election import read_leadership

        backend = session.store.backend
        assert isinstance(backend, EtcdBackend)
        try:
            members = read_leadership(backend)["members"]
        except StateError:
            members = None
        return session.leading, members

    def _traffic_now(self) -> TrafficReading:
        """The traffic for a status or a scrape: read now, or the last reading when a read
        under way (the snapshot's, waiting on a host that stopped answering) takes longer
        than TRAFFIC_READ_WAIT."""
        assert self.traffic is not None
        return self.traffic.read(wait=TRAFFIC_READ_WAIT)

    def _write_traffic(self) -> None:
        """Store every route's traffic now (replacing the previous snapshots)."""
        if self.traffic is None or self.session is None or not self.session.leading:
            return
        try:
            started = time.perf_counter()
            snapshots = self.traffic.read().snapshots()
            self.session.store.replace_traffic(snapshots)
            took = time.perf_counter() - started
            log.debug(
                "traffic snapshot stored",
                extra={"routes": len(snapshots), "duration_ms": round(took * 1000, 3)},
            )
        except GitorchError as exc:  # a busy or read-only store must not stop the loop
            log.warning("traffic snapshot not stored: %s", exc.message)

    def _set_error(self, error: dict[str, Any]) -> None:
        with self._lock:
            self._last_error = error
        self._write_daemon_file()

    def _write_daemon_file(self) -> None:
        if self._etcd is not None:
            # With etcd state, what a daemon says of itself is its member record.
            if self.session is not None and self.session.leadership is not None:
                self.session.leadership.update_info(
                    lastError=self._last_error,
                    revision=self._commit.sha if self._commit else None,
                )
            return
        state = self.options.session.state_dir
        data = {
            "pid": os.getpid(),
            "listen": self.api.listen if self.api else self.options.listen,
            # Where a local `gitorch status` asks this daemon (its last observation).
            "url": _local_url(
                self.api.listen if self.api else self.options.listen, self.options.api_tls
            ),
            "repo": self.options.repo,
            "ref": self.options.ref,
            "path": self.options.path,
            "revision": self._commit.sha if self._commit else None,
            "lastError": self._last_error,
            # `validate` and `plan` refuse the hostPaths this daemon would refuse.
            "allowHostPaths": [str(p) for p in self.options.session.allowed_host_paths],
            # `plan` names a port held by another program only on this address.
            "lbHost": self.options.session.lb_host,
            # `plan`, `nodes` and `status` reach TLS and ssh nodes with the daemon's files.
            "secretsDir": str(secrets.resolve())
            if (secrets := self.options.session.secrets_dir) is not None
            else None,
            "updatedAt": time.time(),
        }
        tmp = state / f".{DAEMON_FILE}.tmp"
        tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
        tmp.replace(state / DAEMON_FILE)

    # ------------------------------------------------------------------ DaemonHandle

    def trigger(self, reason: str, actor: str | None = None) -> None:
        if actor is not None:
            # An authenticated API request: the audit log keeps which token asked.
            log.info("reconcile requested: %s (token %s)", reason, actor)
            assert self.session is not None
            self._refuse_unless_leading(f"reconcile ({reason})")
            self.session.store.append_event(
                "reconcile.requested",
                f"reconcile requested by token {actor}: {reason}",
                data={"token": actor, "reason": reason},
                actor=f"token:{actor}",
            )
        else:
            log.info("reconcile requested: %s", reason)
        with self._lock:
            self._fetch_reason = reason if actor is None else f"{reason} (token {actor})"
            self._fetch_requested = True
            self._preempt.set()  # the pass in progress gives way (between its steps)
        self._wake.set()

    def request_action(
        self, service: str, action: str, actor: str | None = None
    ) -> tuple[bool, str]:
        assert self.session is not None
        self._refuse_unless_leading(f"{action} {service}")
        who = _api_actor(actor)
        accepted, message = request_action(self.session.store, service, action, who)
        if accepted and actor is not None:
            log.info("%s of %s requested by token %s", action, service, actor)
        return accepted, message

    def _refuse_unless_leading(self, what: str) -> None:
        """A write asked of a standby: refused, naming the leader (and its API)."""
        assert self.session is not None
        leadership = self.session.leadership
        if leadership is None or leadership.leading:
            return
        view = leadership.view()
        url = None
        if view.leader:
            for member in leadership.members():
                if member.get("name") == view.leader:
                    url = member.get("listen")
        where = f" at {url}" if url else ""
        raise NotLeader(
            f"{what} refused: {self.name} does not lead"
            + (
                f"; the leader is {view.leader}{where}: ask it"
                if view.leader
                else f" ({view.message})"
            ),
            leader=view.leader,
            url=url,
        )

    def healthy(self) -> tuple[bool, str]:
        if self._loop_error:
            return False, self._loop_error
        if self.session is not None and self.session.leadership is not None:
            view = self.session.leadership.view()
            if not view.reachable:
                return False, f"not acting: {view.message}"
            if not view.leading:
                return True, ""  # a standby is healthy; the leader serves traffic
        if self.session is not None:
            plane = self.session.dataplane.health()
            if not plane.ok:
                return False, f"data plane ({plane.kind}): {plane.message}"
        return True, ""

    def _view(self) -> tuple[Reconciler | None, LiveState | None]:
        """The acting reconciler and what status shows: the last pass's observation when
        that pass changed nothing, else status's own last one when no pass started since,
        either younger than STATUS_OBSERVATION_MAX_AGE (a replica's readiness is the
        health monitor's of now; a replica that exits wakes a pass); else a new
        observation. Observing 4,000 replicas again took ~0.3 s of CPU, status's whole
        budget."""
        session, desired = self.session, self._desired
        if session is None or desired is None or session.reconciler is None:
            return None, None
        reconciler = session.reconciler
        if not reconciler.acting:
            return None, None
        now = time.time()
        observed = reconciler.quiet_observation
        if observed is not None and now - observed.observed_at <= STATUS_OBSERVATION_MAX_AGE:
            return reconciler, observed
        with self._lock:
            own = self._status_live
        if (
            own is not None
            and own[0] == self._passes
            and now - own[1].observed_at <= STATUS_OBSERVATION_MAX_AGE
        ):
            return reconciler, own[1]  # status's own, and no pass ran since
        if not self._pass_lock.acquire(blocking=False):
            # A pass is running: observe without keeping it (the pass may change it).
            live = observe(reconciler.targets, reconciler.runtimes, session.cluster, session.store)
            return reconciler, live
        try:
            passes = self._passes
            live = observe(reconciler.targets, reconciler.runtimes, session.cluster, session.store)
        finally:
            self._pass_lock.release()
        with self._lock:
            self._status_live = (passes, live)
        return reconciler, live

    def _read_only_view(self) -> ClusterView:
        """What a standby (or a daemon whose etcd has no quorum) shows: the nodes the
        store knows, each replica probed once, the traffic the leader stored. Without a
        store it still shows the replicas that run (workloads run on without etcd)."""
        session = self.session
        assert session is not None
        store: StateStore | None = session.store
        try:
            targets = registered_targets(store, self.options.session.runtime)
        except StateUnavailable:
            store = None
            known = session.reconciler.targets if session.reconciler is not None else None
            targets = known or registered_targets(None, self.options.session.runtime)
        key = tuple(targets)
        if self._standby_runtimes is None or self._standby_runtimes[0] != key:
            self._standby_runtimes = (key, open_runtimes(targets, self.options.session.state_dir))
        runtimes = self._standby_runtimes[1]
        try:
            live = observe(targets, runtimes, session.cluster, store)
        except StateUnavailable:  # etcd went away after the targets were read
            store = None
            live = observe(targets, runtimes, session.cluster, None)
        return ClusterView(store, targets, runtimes, assess_readiness(live, runtimes))

    def status(self) -> dict[str, Any]:
        assert self.session is not None
        try:
            reconciler, live = self._view()
        except StateUnavailable:
            reconciler, live = None, None
        leadership = self.session.leadership
        plane = control_plane_json(
            self.session.store, leadership.view() if leadership is not None else None
        )
        if leadership is None:
            plane.update(self=self.name, role="leader", leader=self.name)
        doc: dict[str, Any] | None = None
        if reconciler is not None and live is not None:
            try:
                live = self._with_health_kept(live, reconciler)
                view = ClusterView(
                    self.session.store, reconciler.targets, reconciler.runtimes, live
                )
                # The traffic as of now, not the last stored snapshot.
                traffic = self._traffic_now().snapshots() if self.traffic is not None else []
                doc = status_json(
                    view,
                    None,
                    traffic={snap.service: snap for snap in traffic},
                    control_plane=plane,
                    entries=self._status_entries,
                )
                # When the replicas were observed (the last quiet pass's, or now).
                doc["observedAt"] = live.observed_at
                doc["observedAgeSeconds"] = round(max(0.0, time.time() - live.observed_at), 1)
            except StateUnavailable:
                # A kept observation needs no store, the document does: etcd went away
                # (quorum lost) since; say what runs as a daemon without a store does.
                doc = None
        if doc is None:
            view = self._read_only_view()
            try:
                doc = status_json(view, None, control_plane=plane)
            except StateUnavailable:
                view.store = None
                doc = status_json(view, None, control_plane=plane)
        with self._lock:
            if self._last_error is not None:
                doc["lastError"] = self._last_error.get("message")
                doc["lastErrorDetail"] = self._last_error.get(
                    "diagnostics", self._last_error.get("detail", [])
                )
            doc["tracking"] = {
                "repo": self.options.repo,
                "ref": self.options.ref,
                "path": self.options.path,
                "revision": self._commit.sha if self._commit else None,
            }
        return doc

    def audit_events(
        self, service: str | None, kind: str | None, since: float | None, limit: int | None
    ) -> list[dict[str, Any]]:
        assert self.session is not None
        events = self.session.store.list_events(
            service=service, kind=kind, since=since, limit=limit, newest_first=True
        )
        return [event.to_json() for event in events]

    def audit_chain(self) -> tuple[list[ChainEntry], int | None]:
        assert self.session is not None
        return self.session.store.audit_chain()

    def _last_view(self) -> ClusterView:
        """The last observation as a view, or, on a standby or with the store gone, what
        a reader observes now."""
        assert self.session is not None
        try:
            reconciler, live = self._view()
        except StateUnavailable:
            reconciler, live = None, None
        if reconciler is not None and live is not None:
            return ClusterView(self.session.store, reconciler.targets, reconciler.runtimes, live)
        return self._read_only_view()

    def nodes(self) -> list[dict[str, Any]]:
        view = self._last_view()
        try:
            return nodes_json(view)
        except StateUnavailable:  # only the cordons are the store's: say what runs
            view.store = None
            return nodes_json(view)

    def _with_health_kept(self, live: LiveState, reconciler: Reconciler) -> LiveState:
        """``live`` with the health monitor's readiness: the same object again while
        neither ``live`` nor any replica's health moved (so the status document's service
        entries are reused; a transition counts in ``_health_generation``)."""
        generation = self._health_generation
        kept = self._healthy_live
        if kept is not None and kept[0] is live and kept[1] == generation:
            return kept[2]
        healthy = _with_health(live, reconciler)
        self._healthy_live = (live, generation, healthy)
        return healthy

    def history(self, service: str | None, limit: int) -> list[dict[str, Any]]:
        assert self.session is not None
        return history_json(self.session.store, service, limit)

    def scaling(self, service: str | None, limit: int) -> list[dict[str, Any]]:
        assert self.session is not None
        return scaling_json(self.session.store, service, limit)

    def audit(self, service: str | None, limit: int) -> list[dict[str, Any]]:
        return self.audit_events(service, None, None, limit)

    def dead_replicas(self, service: str, lines: int) -> list[dict[str, Any]]:
        session = self.session
        if session is None or session.reconciler is None:
            return []
        kept = retained(session.reconciler.runtimes.values(), session.cluster, service)
        return [retained_json(k, lines) for k in kept[:10]]

    def service_logs(
        self, service: str, replica: str | None, tail: int, previous: bool
    ) -> dict[str, Any]:
        assert self.session is not None
        view = self._last_view()
        runtimes, live = view.runtimes, view.live
        if previous:
            cluster = self.session.cluster
            return {"previous": previous_logs(runtimes.values(), cluster, service, replica, tail)}
        documents, warnings = live_logs(live, runtimes, service, replica, tail)
        return {"replicas": documents, "warnings": warnings}

    def follow_logs(self, service: str, replica: str | None, tail: int) -> LogFollower:
        def look() -> tuple[LiveState, Mapping[str, Runtime]]:
            view = self._last_view()
            return view.live, view.runtimes

        return LogFollower(look, service, replica, tail)

    def reset_volume(self, name: str, actor: str | None) -> str:
        assert self.session is not None
        self._refuse_unless_leading(f"reset volume {name}")
        check_resettable(volumes_json(self._last_view().live), name)
        who = _api_actor(actor)
        message = reset_message(name)
        self.session.store.reset_volume(name, f"{message} (by {who})", who)
        return message

    def drain(self, node: str, draining: bool, actor: str | None) -> tuple[bool, str]:
        assert self.session is not None
        self._refuse_unless_leading(f"drain {node}")
        store = self.session.store
        who = _api_actor(actor)
        verb = "draining" if draining else "schedulable again"

        def write() -> None:
            store.set_draining(node, draining)
            store.append_event(
                "node.drain" if draining else "node.uncordon",
                f"{node}: {verb} (by {who})",
                actor=who,
            )

        try:
            # The change and its audit entry, or neither (on etcd tried again if the
            # daemon's own pass wrote meanwhile).
            store.atomic(write)
        except RecordNotFound:
            return False, f"no node named {node}"
        return True, f"node {node} {verb}"

    def plan(self, ref: str | None) -> Plan:
        assert self.source is not None and self.session is not None
        try:
            snapshot = self.source.snapshot(ref or self.options.ref, self.options.path)
        except RefNotFound as exc:
            exc.detail = (
                *exc.detail,
                "the daemon plans the refs of its own repository as of its last fetch: a "
                "branch pushed since is there after its next fetch (--interval, or at once "
                "on a push webhook)",
            )
            raise
        policy = self.options.signature_policy
        if policy is not None:  # the API's plan honours the policy as `gitorch plan` does
            verdict = self.source.verify(snapshot.revision, policy)
            if not verdict.trusted:
                raise CommitNotTrusted(verdict.refusal)
        desired = self.session.secrets.resolve(load_desired(snapshot, self.loader))
        with self._pass_lock:
            return self.session.reconciler_for(desired).plan(desired)


class StoreBusy(GitorchError):
    """A new revision could not be taken: the state store did not let it be checked
    (the mass-prune guard reads what is applied) or recorded (refused, invalid)."""

    def __init__(self, sha: str, cause: StateError) -> None:
        super().__init__(f"revision {sha[:12]}: {cause.message}", detail=cause.detail)
        self.sha = sha
        self.cause = cause


@contextlib.contextmanager
def _store_needed(sha: str) -> Iterator[None]:
    """What is done inside needs the state store; its errors become :class:`StoreBusy`."""
    try:
        yield
    except StateError as exc:
        raise StoreBusy(sha, exc) from exc


def _local_url(listen: str, tls: object) -> str:
    """The API's URL from this host (a wildcard listen is reached on loopback)."""
    host, port = parse_listen(listen)
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"{'https' if tls is not None else 'http'}://{where}"


def _client_address(listen: str) -> str:
    """Where other daemons and clients reach an API listening on ``listen``."""
    host, port = parse_listen(listen)
    if host in ("", "0.0.0.0", "::"):
        import socket

        host = socket.gethostname()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _traffic_meter(session: Session, data_plane: str) -> TrafficMeter:
    """The meter of ``session``'s data plane over the routing table in force (read
    through the session each time: with etcd state the plane is opened on leading)."""

    def table() -> Any:
        reconciler = session.reconciler
        return reconciler.routing_table if reconciler is not None and reconciler.acting else None

    def since() -> float | None:
        return session.dataplane.health().since

    def version_figures(service: str) -> Any:
        if not session.leading:
            return {}  # a standby (or a deposed leader) reads no data plane
        return session.dataplane.version_figures(service)

    return TrafficMeter(
        version_figures,
        table,
        store_revisions(session.store),
        data_plane=data_plane,
        since=since,
    )


def _with_health(live: LiveState, reconciler: Reconciler) -> LiveState:
    """The live state with readiness from the health monitor (no extra probes). Only
    the replicas whose readiness changed since ``live`` was taken are copied: copying all
    4,000 was most of the status document's CPU."""
    services: dict[str, Any] = {}
    changed = False
    for name, service in live.services.items():
        replicas = []
        moved = False
        for replica in service.replicas:
            health = reconciler.health.health(replica.id)
            ready = (
                health.ready
                if health is not None
                else (False if replica.state != "running" else None)
            )
            if ready != replica.ready:
                replica = replace(replica, ready=ready)
                moved = True
            replicas.append(replica)
        if moved:
            changed = True
            services[name] = replace(service, replicas=tuple(replicas))
        else:
            services[name] = service
    if not changed:
        return live
    return replace(live, services=_frozen(services))


def set_apart_long_lived() -> None:
    """Collect every cycle, then set what is alive apart from the cyclic collector (the
    modules, the desired state, the store's decoded rows, the kept observation).

    Called once a revision settled and the daemon was quiet. At 2,000 services the collector's
    full passes, which walk everything alive, came almost every pass and took ~0.17 s of CPU
    each (a fifth of a pass, measured: 7 in 10 observe+decide rounds), and one falling inside
    the focused pass after a commit delayed the first new replica by as much. Set apart, a full
    pass walks only what changed since. What is set apart is still freed by reference counting
    when dropped; a cycle of it dropped waits for the next settled revision, which unfreezes and
    collects everything first (one full pass per revision, not in a commit's path)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    from types import MappingProxyType

    return MappingProxyType(dict(mapping))


def _api_actor(token: str | None) -> str:
    """Who asked through the API, as the audit log names them: the token's name, or
    ``api`` for an API without tokens (which does not know who asked)."""
    return f"token:{token}" if token is not None else "api"
