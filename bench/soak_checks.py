"""The soak's invariants, checked while it runs, and the excuses a failed request may have.

Checked every half second (from /proc and gitorch's own records, never from the daemon's
word alone):

* **surge**: no service runs more replicas than its strategy allows for any spec it may
  be moving between (RollingUpdate: replicas + maxSurge in service and maxSurge more
  terminating; Canary: the full stable set beside the new one; Recreate: replicas);
* **foreign**: the processes gitorch did not create (a foreign server, a replica of
  another gitorch cluster, a process holding a port) are never killed, stopped or
  replaced;
* **trace**: every running replica carries the revision of a commit the soak pushed, and
  the template digest of its service at that commit or an earlier one, and its
  environment is that template's (its VERSION);
* **rwo**: never two writers on a ReadWriteOnce volume (the counter's ``conflicts.log``);
* **data plane**: never two proxies serving one state directory for long, and a killed
  proxy is replaced within a bound;
* **daemon**: the daemon never exits by itself;
* **requests**: every failed request (judged a few seconds after it ended, once the
  fault windows around it are known) has an excuse, or it is a break:

  - ``bad-canary``: a 5xx answered by a version the soak made to answer 5xx (its
    ``X-App-Version``), and the canary checks below hold;
  - ``proxy-kill``: a connection-level failure (refused, reset, an empty reply, a
    timeout, an answer cut short inside its body) of a request in flight on the moment
    the proxy's coordinator was SIGKILLed (its workers end with it). Not a refused
    connection after it: the proxy's socket keeper holds the listening sockets, so new
    connections wait in the kernel's queue for the coordinator it starts at once;
  - ``proxy-worker-kill``: a connection-level failure of a request in flight on the
    moment a proxy worker was SIGKILLed;
  - ``replica-kill``: a 502 to a POST in flight on the moment a replica of that service
    was SIGKILLed, until the kernel had torn it down (a loaded machine takes a while, and
    until then its listening socket still accepts connections); a GET is sent again by
    the proxy, a POST may not be;
  - ``docker-restart``: a connection-level failure, a 502 or a 503 while the Docker
    engine was restarted, and ``ENGINE_TAIL`` after it answered: containers live on
    (``--live-restore``), but their published ports are docker-proxy processes, which
    end with dockerd and are started again by the new one;
  - ``sole-replica``: a 502 or 503 of a service whose only ready replica was killed or
    stopped, until a replacement is ready (``SOLE_REPLICA_BOUND``) or it continues: with
    one replica there is nothing else to send the request to.

* **canary**: a version answering 5xx never gets more than its canary weight (20%) of
  its service's answers, and stops answering within its pause and analysis window (plus
  the time faults held the daemon or the data plane), each time a commit makes it the
  service's version (a revert can make a failed canary's version again: a new canary).

After the faults stop, :mod:`soak` checks convergence and orphans.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replica_procs import ReplicaProc, replica_processes
from soak_faults import Faults, Injected
from soak_load import UP, Failure, Load
from soak_rig import Daemon, DataPlane, Foreign, Journal
from soak_shop import ANALYSIS_COUNT, ANALYSIS_INTERVAL, CANARY_PAUSE

#: Seconds after a failed request before it is judged (its fault window may be open).
JUDGE_DELAY = 5.0
#: A killed proxy must be replaced within this (the daemon reads figures every 2 s and
#: starts one when none answers; a loaded 2-core machine starts Python slowly).
PROXY_BACK_BOUND = 30.0
#: After a restarted Docker engine answers, it publishes its containers' ports again
#: within this (docker-proxy processes started as it restores them).
ENGINE_TAIL = 10.0
#: A request in flight when a worker or a replica was killed ends within this.
KILL_TAIL = 3.0
#: A service whose only ready replica was killed has a ready replacement within this
#: (crash back-off 1 s, a start and a readiness probe on a loaded machine).
SOLE_REPLICA_BOUND = 30.0
#: Two proxies serve one state directory only during a handover.
TWO_PROXIES_BOUND = 15.0
#: A replica process gitorch has no record of: tolerated this long (between spawn and
#: the first record write; a daemon killed there leaves it to the next one's reaper).
UNRECORDED_BOUND = 30.0
#: Slack of the canary window on a loaded machine (passes, probes, the first answer).
CANARY_SLACK = 25.0
#: A bad canary's weight (the first setWeight of the shop's canary), and the slack of its
#: share: three standard deviations of the count, plus 5 points.
CANARY_WEIGHT = 0.20
CONNECTION_ERRORS = ("refused", "reset", "empty reply", "timeout", "cut short")


def _seconds(duration: str) -> float:
    return float(duration.rstrip("s"))


@dataclass
class Break:
    """An invariant that did not hold, when (seconds since the start) and why."""

    invariant: str
    t: float
    detail: str
    context: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "invariant": self.invariant,
            "t": round(self.t, 2),
            "detail": self.detail,
            "context": self.context,
        }


@dataclass
class Checks:
    """The continuous checks (module docstring); ``breaks`` is what they found."""

    journal: Journal
    load: Load
    faults: Faults
    daemon: Daemon
    plane: DataPlane
    cluster: Callable[[], str | None]
    surge_bound: Callable[[str, float], int | None]
    trace: Callable[[str, dict[str, str], dict[str, str]], str | None]
    labels_of: Callable[[], dict[str, dict[str, str]]]
    decoys: list[Foreign] = field(default_factory=list)
    bad_versions: Callable[[], set[str]] = set
    #: When each commit made a version its service's effective one (Committer.introduced).
    introduced: Callable[[str, str], list[float]] = lambda service, version: []
    breaks: list[Break] = field(default_factory=list)
    excused: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    samples: int = 0
    max_replicas: dict[str, int] = field(default_factory=dict)
    judged: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _seen_unrecorded: dict[str, float] = field(default_factory=dict)
    traced: set[str] = field(default_factory=set)
    volumes: set[str] = field(default_factory=set)  # ReadWriteOnce folders seen (VOLUME_DATA)
    _two_proxies_since: float | None = None
    _reported: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    on_break: Callable[[Break], None] = lambda b: None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="checks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def broke(self, invariant: str, detail: str, once: str | None = None) -> None:
        """Record a break (``once``: a key that reports it only the first time)."""
        if once is not None:
            if once in self._reported:
                return
            self._reported.add(once)
        t = self.journal.now()
        found = Break(invariant, t, detail, self.journal.before(t))
        with self._lock:
            self.breaks.append(found)
        self.journal.note("break", f"{invariant}: {detail}")
        self.on_break(found)

    def _run(self) -> None:
        tick = 0
        while not self._stop.wait(0.5):
            tick += 1
            try:
                self.sample(trace=tick % 2 == 0)
                if tick % 4 == 0:
                    self.judge_requests(time.monotonic() - JUDGE_DELAY)
            except Exception as exc:  # a check's own bug is reported, the soak goes on
                self.journal.note("error", f"a check failed: {exc!r}")

    # -- sampled invariants -------------------------------------------------------------------

    def sample(self, trace: bool = True) -> None:
        self.samples += 1
        cluster = self.cluster()
        now = time.monotonic()
        if cluster:
            replicas = replica_processes(cluster)
            self._surge(replicas, now)
            self._one_writer(replicas)
            if trace:
                self._trace(replicas, now)
        for decoy in [*self.decoys, *[]]:
            what = decoy.intact()
            if what:
                self.broke("foreign", what, once=f"decoy:{decoy.label}")
        for what in self.faults.foreign_intact():
            self.broke("foreign", what, once=f"holder:{what}")
        self._proxies(now)
        self._daemon_alive()

    def _surge(self, replicas: list[ReplicaProc], now: float) -> None:
        counts: dict[str, list[str]] = defaultdict(list)
        for replica in replicas:
            counts[replica.service].append(replica.name)
        for service, names in counts.items():
            self.max_replicas[service] = max(self.max_replicas.get(service, 0), len(names))
            bound = self.surge_bound(service, now)
            if bound is not None and len(names) > bound:
                self.broke(
                    "surge",
                    f"{service} runs {len(names)} replicas, its strategy allows {bound}: "
                    + ", ".join(sorted(names)),
                    once=f"surge:{service}:{len(names)}:{int(now // 30)}",
                )

    def _one_writer(self, replicas: list[ReplicaProc]) -> None:
        """Never two writers on a ReadWriteOnce volume: the counter app beats in its volume
        and writes ``conflicts.log`` there when it sees another writer's beat advance (it
        lingers on SIGTERM, so a successor started before it exited is caught too)."""
        for replica in replicas:
            folder = replica.env.get("VOLUME_DATA")
            if not folder:
                continue
            self.volumes.add(folder)
        for folder in sorted(self.volumes):
            try:
                text = (Path(folder) / "conflicts.log").read_text(encoding="utf-8")
            except OSError:
                continue
            for line in text.splitlines():
                if line.strip():
                    self.broke("rwo", f"two writers on {folder}: {line.strip()}", once=line)

    def _trace(self, replicas: list[ReplicaProc], now: float) -> None:
        labels = self.labels_of()
        for replica in replicas:
            if replica.name in self.traced:
                continue
            found = labels.get(replica.name)
            if found is None:
                first = self._seen_unrecorded.setdefault(replica.name, now)
                if now - first > UNRECORDED_BOUND:
                    self.broke(
                        "trace",
                        f"replica process {replica.name} (pid {replica.pid}) has had no "
                        f"record for {now - first:.0f}s: an orphan",
                        once=f"orphan:{replica.name}",
                    )
                continue
            self._seen_unrecorded.pop(replica.name, None)
            why = self.trace(replica.service, found, replica.env)
            if why:
                self.broke("trace", f"{replica.name}: {why}", once=f"trace:{replica.name}")
            self.traced.add(replica.name)

    def _proxies(self, now: float) -> None:
        coordinators = self.plane.coordinators()
        if len(coordinators) > 1:
            if self._two_proxies_since is None:
                self._two_proxies_since = now
            elif now - self._two_proxies_since > TWO_PROXIES_BOUND:
                self.broke(
                    "data-plane",
                    f"{len(coordinators)} proxies serve the state directory for "
                    f"{now - self._two_proxies_since:.0f}s: {coordinators}",
                    once=f"proxies:{self._two_proxies_since}",
                )
        else:
            self._two_proxies_since = None
        for fault in self.faults.done:
            if fault.kind == "proxy-kill" and not fault.skipped and fault.end:
                key = f"proxy-back:{fault.start}"
                if fault.back is None or fault.back - fault.start > PROXY_BACK_BOUND:
                    took = (
                        "never" if fault.back is None else f"after {fault.back - fault.start:.1f}s"
                    )
                    self.broke(
                        "data-plane",
                        f"the proxy killed at t={self.journal.at(fault.start):.1f}s was "
                        f"replaced {took} (bound {PROXY_BACK_BOUND:.0f}s)",
                        once=key,
                    )

    def _daemon_alive(self) -> None:
        if self.daemon.proc is None or self.daemon.running() or self.daemon.expect_exit:
            return
        code = self.daemon.exit_code()
        self.broke("daemon", f"the daemon exited by itself (exit code {code})")
        self.daemon.start()  # as its supervisor would: the soak goes on

    # -- requests ---------------------------------------------------------------------------

    def judge_requests(self, before: float) -> None:
        """Judge the failures that ended before ``before`` (monotonic), each once."""
        failures = self.load.failures_since(self.judged)
        count = 0
        for failure in failures:
            if failure.end > before:
                break
            count += 1
            excuse = self.excuse(failure)
            if excuse is not None:
                self.excused[excuse] += 1
                continue
            t = self.journal.at(failure.end)
            detail = (
                f"{failure.client} {'POST' if failure.client == 'post' else 'GET'} to "
                f"{failure.service} ({failure.phase}) failed: {failure.error}"
                + (f" from version {failure.version}" if failure.version else "")
                + (f": {failure.body.strip()}" if failure.body.strip() else "")
                + f" (took {failure.end - failure.start:.2f}s)"
            )
            found = Break("requests", t, detail, self.journal.before(t))
            with self._lock:
                self.breaks.append(found)
            self.journal.note("break", f"requests: {detail}", at=t)
            self.on_break(found)
        self.judged += count

    def excuse(self, failure: Failure) -> str | None:
        bad = self.bad_versions()
        if failure.status is not None and failure.status >= 500 and failure.version in bad:
            return "bad-canary"
        connection = failure.status is None and failure.error in CONNECTION_ERRORS
        for fault in list(self.faults.done):
            if fault.skipped:
                continue
            if (
                fault.kind in ("proxy-kill", "proxy-worker-kill")
                and connection
                and _in_flight_at(failure, fault)
            ):
                return fault.kind
            if (
                fault.kind == "docker-restart"
                and (connection or failure.status in (502, 503))
                and fault.start <= failure.end <= (fault.end or time.monotonic()) + ENGINE_TAIL
            ):
                return "docker-restart"
            if (
                fault.kind in ("replica-kill", "replica-stop")
                and fault.others_ready == 0
                and failure.service == fault.target
                and failure.status in (502, 503)
                and fault.start <= failure.end <= fault.end + SOLE_REPLICA_BOUND
            ):
                return "sole-replica"
            if fault.kind == "replica-kill" and (
                failure.client == "post"
                and failure.status == 502
                and failure.service == fault.target
                and _in_flight_at(failure, fault)
            ):
                return "replica-kill"
        return None

    # -- canaries ---------------------------------------------------------------------------

    def canary_checks(self) -> dict[str, Any]:
        """The share and window of every episode of a version that answered 5xx on purpose.

        An episode begins at a commit that makes the version its service's effective one;
        a revert or a later commit can make the same version again, which is a new canary
        (a new analysis), so its 5xx are judged on their own."""
        bad = self.bad_versions()
        with self.load._lock:
            buckets = {k: dict(v) for k, v in self.load.tally.versions.items()}
        failures: dict[tuple[str, str], list[float]] = defaultdict(list)
        for f in self.load.failures_since(0):
            if f.version in bad and f.status is not None and f.status >= 500:
                failures[(f.service, f.version)].append(f.end)
        report = {}
        for (service, version), ends in sorted(failures.items()):
            starts = self.introduced(service, version) or [min(ends)]
            episodes: dict[float, list[float]] = defaultdict(list)
            for end in sorted(ends):
                begun = [s for s in starts if s <= end]
                episodes[begun[-1] if begun else starts[0]].append(end)
            for number, (_begun, times) in enumerate(sorted(episodes.items()), 1):
                key = f"{service}@{version}" + (f"#{number}" if len(episodes) > 1 else "")
                report[key] = self._canary_episode(service, version, times, buckets, key)
        return report

    def _canary_episode(
        self,
        service: str,
        version: str,
        times: list[float],
        buckets: dict[tuple[str, int], dict[str, int]],
        key: str,
    ) -> dict[str, Any]:
        first, last = times[0], times[-1]
        answered = bad_answers = 0
        for bucket in range(self.load.bucket_of(first), self.load.bucket_of(last) + 1):
            versions = buckets.get((service, bucket), {})
            answered += sum(versions.values())
            bad_answers += versions.get(version, 0)
        share = bad_answers / answered if answered else 0.0
        allowed = (
            CANARY_WEIGHT
            + 3 * math.sqrt(CANARY_WEIGHT * (1 - CANARY_WEIGHT) / max(1, answered))
            + 0.05
        )
        window = self.canary_window(first, last)
        if share > allowed:
            self.broke(
                "canary",
                f"{service} version {version} answered {share:.0%} of {answered} requests "
                f"(its weight allows {allowed:.0%})",
                once=f"share:{key}",
            )
        if last - first > window:
            self.broke(
                "canary",
                f"{service} version {version} answered 5xx for {last - first:.0f}s "
                f"(from t={self.journal.at(first):.0f}s; pause + analysis + faults allow "
                f"{window:.0f}s)",
                once=f"window:{key}",
            )
        return {
            "answers": answered,
            "bad": bad_answers,
            "share": round(share, 3),
            "allowedShare": round(allowed, 3),
            "seconds": round(last - first, 1),
            "allowedSeconds": round(window, 1),
        }

    def canary_window(self, first: float, last: float) -> float:
        """How long a bad canary may answer: the pause, the analysis, the slack, and the
        time faults held the daemon or the data plane during it."""
        window = (
            _seconds(CANARY_PAUSE) + _seconds(ANALYSIS_INTERVAL) * ANALYSIS_COUNT + CANARY_SLACK
        )
        for fault in self.faults.done:
            if fault.skipped or fault.end < first or fault.start > last:
                continue
            if fault.kind in (
                "daemon-stop",
                "daemon-kill",
                "disk-full",
                "proxy-stop",
                "proxy-kill",
            ):
                window += (fault.end - fault.start) + (10.0 if fault.kind == "daemon-kill" else 0.0)
        return window


def _in_flight_at(failure: Failure, fault: Injected) -> bool:
    """The request was on its way when the fault struck (between the SIGKILL and the end
    of the killed process), and ended soon after."""
    gone = fault.gone if fault.gone is not None else fault.start
    return failure.start <= gone + 0.1 and fault.start - 0.1 <= failure.end <= gone + KILL_TAIL


__all__ = ["Break", "Checks", "UP"]
