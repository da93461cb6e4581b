"""The chaos soak: the example shop under steady load while commits keep arriving and
faults are injected at random, with the invariants checked the whole time.

    python3 bench/soak.py --minutes 30 --seed 7
    python3 bench/soak.py --minutes 3 --seed 21 --services 6 --report soak.json
    python3 bench/soak.py --minutes 5 --seed 8 --runtime docker     # + docker-restart
    python3 bench/soak.py --minutes 5 --seed 9 --state etcd://      # + etcd-member-kill

Deterministic given the seed (printed first): the plan of commits and faults, their
moments and every choice among live candidates come from it (:mod:`soak_plan`), so a
break reproduces by running the same seed again. Needs root (the state directory is a
tmpfs, filled for the full-disk fault). Phases:

1. **warm-up**: a bare Git remote with the shop (:mod:`soak_shop`), ``gitorch daemon``
   fetching it (``--repo file://...``, process driver, built-in data plane) under the
   soak's supervisor, decoys gitorch must never touch, until the shop is served. With
   ``--runtime docker`` the replicas are containers of the example images on a private
   engine of the soak's own (never the machine's shared one: the docker-restart fault
   restarts it); with ``--state etcd://`` the state is in three etcd members of its own on
   loopback (the folder keeps the host's local files), one of which etcd-member-kill kills;
2. **chaos** for ``--minutes``: load through every exposed service (:mod:`soak_load`),
   commits (good versions, never-ready versions, 5xx canaries, invalid manifests, scale
   changes, services added and removed, reverts, a mass prune the guard must refuse) and
   faults (:mod:`soak_faults`), one at a time, a third of them at a chosen moment of a
   rollout; the invariants are checked continuously (:mod:`soak_checks`);
3. **convergence**: every fault undone, a commit that puts every service on a good new
   version, and the cluster must converge to it within ``CONVERGE_BOUND``; then (half of
   the seeds) a bad head, and the cluster must converge back to the last good version of
   that service; then no orphans (replicas, records, cgroups, proxies);
4. **report**: requests, faults per kind, commits per kind, excused failures per reason,
   invariant breaks (each with the seed and the moment); exit 1 when anything broke.

Everything is cleaned up at the end, also after Ctrl-C or SIGTERM: no process, mount or
file is left behind (``--keep`` keeps the folder with the logs and the journal).

``--break-drain`` runs the daemon with ``GITORCH_TEST_UNSAFE_NO_DRAIN=1`` (a test-only
switch: leaving replicas are killed without being drained), to show the soak catches it.
``--stop-at-break`` ends the chaos at the first break and skips the convergence phase (the
folder is kept, as after any break): for hunting a bug with its seed.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
# bench/ (the soak's modules), the repository (gitorch), rigs/ and tests/shared (parts
# shared with the tests: the etcd cluster) are not installed packages.
for _path in (BENCH, BENCH.parent, BENCH.parent / "rigs", BENCH.parent / "tests" / "shared"):
    sys.path.insert(0, str(_path))

from listen_ports import free_port  # noqa: E402
from replica_procs import replica_processes  # noqa: E402
from soak_checks import Break, Checks  # noqa: E402
from soak_commits import Committer  # noqa: E402
from soak_faults import Faults  # noqa: E402
from soak_load import Load, Targets  # noqa: E402
from soak_plan import FAULT_KINDS, Planned, fault_kinds, make_plan  # noqa: E402
from soak_rig import (  # noqa: E402
    REPO,
    Cleanup,
    Daemon,
    DataPlane,
    Foreign,
    GitRemote,
    Journal,
    World,
    copy_out,
    interruptible,
)
from soak_shop import (  # noqa: E402
    ERRORS,
    NEVER_READY,
    Change,
    Ports,
    Shop,
    add_service_change,
    extra_names,
    initial_shop,
    settle_change,
)

from gitorch.runtime.base import LABEL_REVISION, LABEL_SERVICE, LABEL_SPEC_DIGEST  # noqa: E402

#: The shop must be served this long after the daemon starts (warm-up).
WARMUP_BOUND = 240.0
#: After the faults stop, the cluster converges to the settle commit within this, and
#: back from a bad head within this. Measured on the loaded 2-core machine (bench/README.md).
CONVERGE_BOUND = 240.0
#: The test-only switch that disables draining in the daemon (gitorch/apply/execute.py).
NO_DRAIN_ENV = "GITORCH_TEST_UNSAFE_NO_DRAIN"


# -- the soak -----------------------------------------------------------------------------------


@dataclass
class Options:
    minutes: float
    seed: int
    services: int
    runtime: str
    rate: float
    keep: bool
    report: Path | None
    break_drain: bool
    exclude: tuple[str, ...]
    quiet: bool
    etcd: str | None = None  # --state etcd://...: "" for the soak's own three members
    log_level: str = "info"  # the daemon's --log-level
    stop_at_break: bool = False  # end the chaos at the first break, no convergence phase


@dataclass
class Soak:
    opts: Options
    cleanup: Cleanup = field(default_factory=Cleanup)
    breaks: list[Break] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def say(self, text: str) -> None:
        if not self.opts.quiet:
            print(text, flush=True)

    def run(self) -> int:
        opts = self.opts
        print(
            f"soak seed {opts.seed} ({opts.minutes:g} min, {opts.services} services, "
            f"{opts.runtime} driver{', state in etcd' if opts.etcd is not None else ''}"
            f"{', DRAINING DISABLED' if opts.break_drain else ''})",
            flush=True,
        )
        world = World.make()
        self.world = world
        self.cleanup.push("remove the folder", lambda: self._remove_folder(world))
        journal = Journal(world.logs / "journal.jsonl")
        self.journal = journal
        self.cleanup.push("close the journal", journal.close)
        world.mount_state()
        self.cleanup.push("unmount the state directory", world.unmount_state)
        self.cleanup.push("keep the state directory's files", lambda: self._keep_state(world))
        remote = GitRemote(world)
        remote.init()
        self.cleanup.push("make the remote reachable", remote.make_reachable)

        extras = extra_names(max(4, opts.services - 3 + 2))
        ports = Ports(
            api=free_port(),
            web=free_port(),
            extras={n: free_port() for n in extras},
            counter=True,
        )
        env = {NO_DRAIN_ENV: "1"} if opts.break_drain else {}
        etcd, state_args = self._etcd_state(world)
        engine = self._docker_engine(world)
        if engine is not None:
            env["DOCKER_HOST"] = engine.endpoint
        daemon_tail = [
            "--repo",
            remote.url,
            "--runtime",
            opts.runtime,
            "--interval",
            "1s",
            "--resync",
            "1s",
            "--log-level",
            opts.log_level,
        ]
        daemon = Daemon(
            world,
            daemon_tail,
            journal,
            env,
            state_args,
            revision=self._etcd_revision if etcd is not None else None,
        )
        self.daemon = daemon
        plane = DataPlane(world)
        self.plane = plane
        self.cleanup.push("close the daemon log", daemon.close)
        self.cleanup.push("remove the replicas", lambda: self._remove_replicas(world))
        self.cleanup.push("stop the data plane", plane.stop)
        self.cleanup.push("stop the daemon", daemon.terminate)

        targets = Targets(lambda: committer.applied_index())
        committer = Committer(remote, journal, targets, ports, daemon.applied_revision)
        self.committer = committer
        shop = initial_shop(ports, opts.services, images=engine is not None)
        committer.make(Change("initial", "The soak's shop", shop, {}))

        decoys = self._decoys(world)
        daemon.start()
        load = Load(targets, opts.rate, {"keepalive": 3, "fresh": 2, "post": 3})
        self.load = load
        self.cleanup.push("stop the load", load.stop)

        known: list[str] = []

        def cluster() -> str | None:
            """The cluster's name (in the folder, or in etcd: read once it exists)."""
            from gitorch.live.inventory import existing_cluster_name

            if known:
                return known[0]
            name = existing_cluster_name(world.state) if etcd is None else self._etcd_cluster()
            if name:
                known.append(name)
            return name

        self.cluster = cluster
        faults = Faults(
            world,
            daemon,
            plane,
            remote,
            journal,
            cluster,
            absent_extra=lambda u: self._absent_extra(u),
            add_service=lambda name, planned: self._add_service(name, planned),
            rollout_under_way=self._rollout_under_way,
            engine_restart=self._engine_restart if engine is not None else None,
            etcd=etcd,
        )
        self.faults = faults
        self.cleanup.push("undo the fault under way", faults.undo_all)
        checks = Checks(
            journal,
            load,
            faults,
            daemon,
            plane,
            cluster,
            surge_bound=committer.surge_bound,
            trace=committer.trace,
            labels_of=self._labels,
            decoys=decoys,
            bad_versions=committer.bad_versions,
            introduced=committer.introduced,
        )
        checks.on_break = self._on_break
        self.checks = checks
        self.breaks = checks.breaks
        self.cleanup.push("stop the checks", checks.stop)

        # 1. warm-up
        self.say("warm-up: waiting for the shop to be served")
        started = time.monotonic()
        why = self._wait_converged(shop, WARMUP_BOUND)
        if why:
            print(f"the shop was not served within {WARMUP_BOUND:.0f}s: {why}", flush=True)
            return 2
        self.figures["warmupSeconds"] = round(time.monotonic() - started, 1)
        journal.note("phase", "warm-up done: the shop is served")

        # 2. chaos
        kinds = fault_kinds(opts.runtime, opts.exclude, etcd is not None)
        plan = make_plan(opts.seed, opts.minutes * 60, kinds)
        (world.logs / "plan.json").write_text(
            json.dumps([vars(p) for p in plan], indent=1), encoding="utf-8"
        )
        load.start()
        checks.start()
        operator = threading.Thread(target=self._operator, name="operator", daemon=True)
        self._operating = threading.Event()
        operator.start()
        chaos_start = time.monotonic()
        self.figures["loadAvgBefore"] = os.getloadavg()
        self._chaos(plan, chaos_start)
        chaos_seconds = time.monotonic() - chaos_start
        journal.note(
            "phase",
            "chaos ended at the first break (--stop-at-break)"
            if self._stop_now()
            else "chaos done: faults stop",
        )

        # 3. convergence (not after a break with --stop-at-break: the break is the finding)
        stopped = self._stop_now()
        if not stopped:
            self._converge_phase()
            self._orphans()
        self._operating.set()
        load.stop()
        checks.judge_requests(time.monotonic() + 1)
        canaries = checks.canary_checks()
        checks.stop()

        # 4. report
        self.figures.update(
            seed=opts.seed,
            minutes=round(chaos_seconds / 60, 2),
            services=opts.services,
            runtime=opts.runtime,
            state="etcd (3 members)" if etcd is not None else "folder (SQLite)",
            drainingDisabled=opts.break_drain,
            stoppedAtBreak=stopped,
            requests=load.total,
            requestsOk=load.tally.ok,
            requestsFailed=len(load.tally.failures),
            requestsByClient=dict(load.tally.by_client),
            excused=dict(checks.excused),
            notServedYet=dict(load.tally.ignored),
            slowestRequestSeconds=round(load.tally.slowest, 2),
            faults={k: faults.counts.get(k, 0) for k in kinds},
            faultsNotBuilt=self._not_built(),
            commits=dict(committer.counts),
            maxReplicas=checks.max_replicas,
            checks={
                "samples": checks.samples,
                "replicasTraced": len(checks.traced),
                "failuresJudged": checks.judged,
                "readWriteOnceVolumesWatched": len(checks.volumes),
            },
            faultLog=[
                {
                    "t": round(journal.at(f.start), 1),
                    "kind": f.kind,
                    "seconds": round(f.end - f.start, 1),
                    "target": f.target,
                    "detail": f.skipped or f.detail,
                }
                for f in faults.done
            ],
            canaries=canaries,
            breaks=[b.to_json() for b in checks.breaks],
            loadAvgAfter=os.getloadavg(),
            machine=f"{platform.node()} {os.cpu_count()} cores",
            command=" ".join(["python3", "bench/soak.py", *sys.argv[1:]]),
            folder=str(world.root),
        )
        self.breaks = checks.breaks
        self.cleanup.push("stop the checks", checks.stop)
        return 1 if checks.breaks else 0

    # -- chaos --------------------------------------------------------------------------------

    def _chaos(self, plan: list[Planned], start: float) -> None:
        faults = [p for p in plan if p.what == "fault"]
        commits = [p for p in plan if p.what == "commit"]
        fault_thread = threading.Thread(
            target=self._run_faults, args=(faults, start), name="faults", daemon=True
        )
        self._faults_stop = threading.Event()
        fault_thread.start()
        end = start + self.opts.minutes * 60
        next_progress = start + 30
        for planned in commits:
            while time.monotonic() < start + planned.at and not self._stop_now():
                self._between(next_progress)
                if time.monotonic() >= next_progress:
                    next_progress += 30
                time.sleep(0.2)
            if self._stop_now():
                break
            self.committer.planned(planned)
        while time.monotonic() < end and not self._stop_now():
            self._between(next_progress)
            if time.monotonic() >= next_progress:
                next_progress += 30
            time.sleep(0.2)
        self._faults_stop.set()
        fault_thread.join()
        self.faults.undo_all()

    def _stop_now(self) -> bool:
        """--stop-at-break and something broke."""
        return self.opts.stop_at_break and bool(self.checks.breaks)

    def _between(self, next_progress: float) -> None:
        if self.committer.remote.unpushed and self.committer.remote.reachable:
            self.committer.remote.push()
        if time.monotonic() >= next_progress:
            t = self.journal.now()
            self.say(
                f"  t={t:6.0f}s requests {self.load.total:7d}  failed {len(self.load.tally.failures):4d}"
                f"  commits {len(self.committer.history):3d}  faults {sum(self.faults.counts.values()):3d}"
                f"  breaks {len(self.checks.breaks)}"
            )

    def _run_faults(self, faults: list[Planned], start: float) -> None:
        for planned in faults:
            while time.monotonic() < start + planned.at:
                if self._faults_stop.wait(0.2):
                    return
            if self._faults_stop.is_set():
                return
            try:
                self.faults.inject(planned)
            except Exception as exc:  # the soak's own bug: said, and the soak goes on
                self.journal.note("error", f"fault {planned.kind} failed: {exc!r}")

    def _absent_extra(self, u: float) -> tuple[str, int] | None:
        head = self.committer.head.effective
        absent = [n for n in sorted(self.committer.ports.extras) if head.service(n) is None]
        if not absent:
            return None
        name = absent[min(len(absent) - 1, int(u * len(absent)))]
        return name, self.committer.ports.extras[name]

    def _add_service(self, name: str, planned: Planned) -> None:
        with self.committer._lock:
            change = add_service_change(
                name, self.committer.ports, self.committer.head.shop, planned.draws[1:]
            )
            self.committer.make(replace(change, message=change.message + " (its port is taken)"))

    def _rollout_under_way(self) -> bool:
        status = self.daemon.status(2.0)
        if status is None:
            return False
        return any(s.get("rollout", {}).get("phase") == "Progressing" for s in status["services"])

    def _operator(self) -> None:
        """A person watching: promotes a paused good canary, aborts a paused bad one."""
        paused_since: dict[str, float] = {}
        while not self._operating.wait(2.0):
            status = self.daemon.status(3.0)
            if status is None:
                continue
            effective = self.committer.head.effective
            for svc in status.get("services", []):
                rollout = svc.get("rollout") or {}
                name = svc.get("name", "")
                if rollout.get("phase") != "Paused" or "gitorch promote" not in str(
                    rollout.get("message")
                ):
                    paused_since.pop(name, None)
                    continue
                first = paused_since.setdefault(name, time.monotonic())
                if time.monotonic() - first < 3.0:
                    continue
                model = effective.service(name)
                action = "promote" if model is not None and model.good else "abort"
                try:
                    code, answer = self.daemon.api("POST", f"/api/v1/services/{name}/{action}")
                except (OSError, http.client.HTTPException) as exc:
                    code, answer = 0, repr(exc)
                self.journal.note("operator", f"{action} {name}: {code} {answer}")
                paused_since.pop(name, None)

    # -- convergence ----------------------------------------------------------------------------

    def _converge_phase(self) -> None:
        daemon, remote = self.daemon, self.committer.remote
        remote.make_reachable()
        daemon.resume()
        if not daemon.running():
            daemon.start()
        deadline = time.monotonic() + 60
        while not remote.push() and time.monotonic() < deadline:
            time.sleep(0.5)
        settle = self.committer.make(settle_change(self.committer.head.shop))
        self.say("convergence: every service on a good new version")
        started = time.monotonic()
        why = self._wait_converged(settle.effective, CONVERGE_BOUND, settle.digests)
        took = time.monotonic() - started
        self.figures["convergeSeconds"] = round(took, 1)
        if why:
            self.checks.broke(
                "converge",
                f"not converged to the settle commit {settle.sha[:10]} within "
                f"{CONVERGE_BOUND:.0f}s after the faults stopped: {why}",
            )
            return
        self.journal.note("phase", f"converged to the settle commit in {took:.1f}s")
        rng = random.Random(f"{self.opts.seed}/head")
        if rng.random() < 0.5:
            self.figures["badHead"] = None
            return
        kind = "errors-canary" if rng.random() < 0.5 else "never-ready"
        bad = self.committer.planned(Planned(0, "commit", kind, (rng.random(), 0.5, 0.5)))
        name = next(s.name for s in bad.shop.services if s.fail_mode in (ERRORS, NEVER_READY))
        expected = bad.effective.with_service(settle.effective.service(name))  # type: ignore[arg-type]
        digests = {**bad.digests, name: settle.digests[name]}
        self.say(f"convergence: a bad head ({bad.message}), back to the last good {name}")
        started = time.monotonic()
        why = self._wait_converged(expected, CONVERGE_BOUND, digests, head=bad.sha)
        self.figures["badHead"] = {
            "commit": bad.message,
            "seconds": round(time.monotonic() - started, 1),
        }
        if why:
            self.checks.broke(
                "converge",
                f"not back to the last good {name} within {CONVERGE_BOUND:.0f}s of the bad "
                f"head {bad.sha[:10]} ({bad.message}): {why}",
            )

    def _wait_converged(
        self,
        shop: Shop,
        bound: float,
        digests: dict[str, str] | None = None,
        head: str | None = None,
    ) -> str | None:
        """None once the cluster runs ``shop`` (within ``bound``), else what is missing."""
        deadline = time.monotonic() + bound
        why = "not checked"
        while time.monotonic() < deadline:
            why = self._converged(shop, digests, head) or ""
            if not why:
                return None
            time.sleep(1.0)
        return why

    def _converged(
        self, shop: Shop, digests: dict[str, str] | None, head: str | None
    ) -> str | None:
        cluster = self.cluster()
        if cluster is None:
            return "no cluster yet"
        want_rev = head or self.committer.head.sha
        if self.daemon.applied_revision() != want_rev:
            return f"the daemon applies {str(self.daemon.applied_revision())[:10]}, not {want_rev[:10]}"
        status = self.daemon.status(5.0)
        if status is None:
            return "the daemon's API does not answer"
        services = {s["name"]: s for s in status.get("services", [])}
        labels = self._labels()
        processes = replica_processes(cluster)
        for svc in shop.services:
            st = services.get(svc.name)
            if st is None:
                return f"{svc.name} is not in status"
            phase = st.get("rollout", {}).get("phase")
            if phase not in ("Healthy", "RolledBack") or st["replicas"]["ready"] != svc.replicas:
                return f"{svc.name}: {phase}, {st['replicas']['ready']}/{svc.replicas} ready ({st.get('rollout', {}).get('message')})"
            mine = [p for p in processes if p.service == svc.name]
            if len(mine) != svc.replicas:
                return f"{svc.name} runs {len(mine)} replica processes, wants {svc.replicas}"
            if digests is not None:
                wrong = [
                    p.name
                    for p in mine
                    if labels.get(p.name, {}).get(LABEL_SPEC_DIGEST) != digests.get(svc.name)
                ]
                if wrong:
                    return f"{svc.name}: {len(wrong)} replica(s) not on the expected template"
            if svc.port is not None:
                version = _version_at(svc.port)
                if version != svc.version_label:
                    return f"{svc.name} answers version {version!r} on :{svc.port}, wants {svc.version_label!r}"
        extra = sorted({p.service for p in processes} - {s.name for s in shop.services})
        if extra:
            return f"replicas of services not in the commit still run: {extra}"
        return None

    def _orphans(self) -> None:
        """After convergence: nothing of the cluster but what status shows."""
        cluster = self.cluster()
        if cluster is None:
            return
        from gitorch.live.inventory import local_node_name, runtime_dir

        processes = {p.name for p in replica_processes(cluster)}
        labels = self._labels()
        problems = []
        stray = sorted(processes - set(labels))
        if stray:
            problems.append(f"replica processes without a record: {stray}")
        dead = sorted(set(labels) - processes)
        if dead:
            problems.append(f"records of replicas that do not run: {dead}")
        folders = runtime_dir(self.world.state, local_node_name()) / "replicas"
        if folders.is_dir() and self.opts.runtime != "docker":
            extra = sorted({p.name for p in folders.iterdir()} - processes)
            if extra:
                problems.append(f"replica folders left behind: {extra}")
        for root in Path("/sys/fs/cgroup").glob(f"*/gitorch/{cluster}/*/"):
            left = sorted({g.name for g in root.iterdir() if g.is_dir()} - processes)
            if left:
                problems.append(f"cgroups left behind in {root}: {left}")
        coordinators = self.plane.coordinators()
        if len(coordinators) != 1:
            problems.append(
                f"{len(coordinators)} proxies serve the state directory: {coordinators}"
            )
        for problem in problems:
            self.checks.broke("orphans", problem)

    # -- helpers ------------------------------------------------------------------------------

    def _labels(self) -> dict[str, dict[str, str]]:
        cluster = self.cluster()
        if cluster is None:
            return {}
        from gitorch.errors import GitorchError
        from gitorch.live.inventory import local_node_name, runtime_dir
        from gitorch.runtime.process import ProcessRuntime

        if not hasattr(self, "_runtime"):
            node = local_node_name()
            self._runtime: Any
            if self.opts.runtime == "docker":
                from gitorch.runtime.docker import DockerRuntime

                self._runtime = DockerRuntime(node, self.engine.endpoint)
            else:
                self._runtime = ProcessRuntime(
                    node, runtime_dir(self.world.state, node), cgroups=None
                )
        try:
            instances = self._runtime.list_instances(cluster)
        except (GitorchError, OSError):
            return {}
        return {i.name: dict(i.labels) for i in instances if i.state == "running"}

    def _decoys(self, world: World) -> list[Foreign]:
        """A foreign server, and a replica of another gitorch cluster on this machine
        (made by gitorch's own process driver, with the same service name as the shop's)."""
        from gitorch.live.inventory import local_node_name
        from gitorch.runtime.base import (
            LABEL_REPLICA,
            PortRequest,
            ReplicaSpec,
        )
        from gitorch.runtime.process import ProcessRuntime

        server = Foreign.listener("foreign-server", free_port(), world.logs)
        self.cleanup.push("stop the foreign server", server.end)
        node = local_node_name()
        runtime = ProcessRuntime(node, world.root / "decoy-state" / "nodes" / node, cgroups=None)
        spec = ReplicaSpec(
            name="gitorch-decoy-api-1-000000-0000",
            image=None,
            command=("python3", str(REPO / "examples" / "apps" / "api" / "app.py")),
            env={"VERSION": "decoy"},
            ports=(PortRequest("http", 8080, "TCP"),),
            labels={
                LABEL_SERVICE: "api",
                LABEL_REPLICA: "api-1",
                LABEL_REVISION: "0" * 40,
                LABEL_SPEC_DIGEST: "0" * 64,
            },
        )
        instance = runtime.create(spec, "gitorch-decoy")

        def remove() -> None:
            runtime.remove(instance.id)

        replica = Foreign.adopt(
            "a replica of another gitorch cluster", int(instance.id.split("-")[0]), remove
        )
        self.cleanup.push("remove the other cluster's replica", replica.end)
        return [server, replica]

    def _not_built(self) -> dict[str, str]:
        """Fault kinds this run could not inject, and why."""
        missing = {}
        if self.opts.etcd is None:
            missing["etcd-member-kill"] = "state in a folder (--state etcd:// injects it)"
        elif self.opts.etcd:
            missing["etcd-member-kill"] = "an etcd cluster the soak did not start"
        if self.opts.runtime != "docker":
            missing["docker-restart"] = "the process driver (--runtime docker injects it)"
        return missing

    def _docker_engine(self, world: World) -> Any:
        """With ``--runtime docker``: a private engine (containerd + dockerd of the soak's
        own, ``--live-restore`` as an operator would run it) with the example images built
        into it. Never the machine's shared engine: the engine-restart fault restarts it."""
        if self.opts.runtime != "docker":
            return None
        import subprocess

        import replica_procs
        from private_dockerd import PrivateEngine

        engine = PrivateEngine(prefix="soak", extra_args=("--live-restore",))
        self.cleanup.push("shut the private Docker engine down", engine.shutdown)
        engine.boot()
        self.say(f"private Docker engine at {engine.endpoint}: building the example images")
        done = subprocess.run(
            ["sh", str(REPO / "examples" / "images" / "build.sh")],
            env={**os.environ, "DOCKER_HOST": engine.endpoint},
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            raise RuntimeError(f"examples/images/build.sh failed:\n{done.stdout}{done.stderr}")
        replica_procs.use_engine(engine.endpoint)
        self.cleanup.push("list process replicas again", lambda: replica_procs.use_engine(None))
        self.engine = engine
        return engine

    def _engine_restart(self, u: float) -> str:
        """The docker-restart fault: dockerd SIGKILLed (a crash) or stopped with SIGTERM
        (``systemctl restart docker``), by the draw, and started again at once."""
        engine = self.engine
        started = time.monotonic()
        if u < 0.5:
            how = "SIGKILL"
            engine.kill()
        else:
            how = "SIGTERM"
            assert engine.dockerd is not None
            engine.dockerd.terminate()
            engine.dockerd.wait(60)
        down = time.monotonic() - started
        engine.start()
        return (
            f"dockerd {how}: down after {down:.1f}s, answering again "
            f"{time.monotonic() - started:.1f}s after the signal"
        )

    def _etcd_state(self, world: World) -> tuple[Any, list[str] | None]:
        """With ``--state etcd://``: the soak's own three members (``etcd://`` alone) or
        the given cluster, and the daemon's state options (the folder holds the host's
        local files: ``--runtime-dir``)."""
        if self.opts.etcd is None:
            return None, None
        cluster = None
        url = self.opts.etcd
        if not url:
            from etcd_helpers import EtcdCluster, new_namespace

            cluster = EtcdCluster(world.root / "etcd").start()
            self.cleanup.push("stop etcd", cluster.close)
            url = cluster.url(new_namespace("soak"))
        self.etcd_url = url
        self._last_revision: str | None = None
        self.say(f"state in {url}")
        state = ["--state", url, "--runtime-dir", str(world.state), "--name", "soak"]
        return cluster, state

    def _etcd_revision(self) -> str | None:
        """The commit the daemon applies, from its member record in etcd (the last one
        read while the record is gone: the daemon is down, or its lease expired)."""
        from gitorch.errors import GitorchError
        from gitorch.state import StateStore
        from gitorch.state.etcd.backend import EtcdBackend
        from gitorch.state.etcd.election import read_leadership
        from gitorch.state.location import parse_location

        try:
            with StateStore(parse_location(self.etcd_url), readonly=True) as store:
                assert isinstance(store.backend, EtcdBackend)
                found = read_leadership(store.backend)
        except GitorchError:
            return self._last_revision
        for member in found["members"]:
            if member.get("name") == "soak" and isinstance(member.get("revision"), str):
                self._last_revision = member["revision"]
        return self._last_revision

    def _etcd_cluster(self) -> str | None:
        from gitorch.errors import GitorchError
        from gitorch.live.inventory import cluster_identity
        from gitorch.state import StateStore
        from gitorch.state.location import parse_location

        try:
            with StateStore(parse_location(self.etcd_url), readonly=True) as store:
                return cluster_identity(store, self.world.state, create=False)
        except GitorchError:
            return None

    def _on_break(self, found: Break) -> None:
        print(
            f"BREAK seed={self.opts.seed} t={found.t:.1f}s ({self.journal.wall(found.t)}) "
            f"{found.invariant}: {found.detail}",
            flush=True,
        )

    def _remove_replicas(self, world: World) -> None:
        cluster = self.cluster() if hasattr(self, "cluster") else None
        if cluster is None or self.opts.runtime == "docker":  # the engine goes whole
            return
        from gitorch.errors import GitorchError
        from gitorch.live.inventory import local_node_name, runtime_dir
        from gitorch.runtime.process import ProcessRuntime

        node = local_node_name()
        runtime = ProcessRuntime(node, runtime_dir(world.state, node))
        for instance in runtime.list_instances(cluster):
            with contextlib.suppress(GitorchError):
                runtime.remove(instance.id)
        for proc in replica_processes(cluster):  # anything without a record
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
        # The cluster's own cgroup folders (each replica's is removed with it).
        for group in sorted(Path("/sys/fs/cgroup").glob(f"*/gitorch/{cluster}/*"), reverse=True):
            with contextlib.suppress(OSError):
                group.rmdir()
        for group in Path("/sys/fs/cgroup").glob(f"*/gitorch/{cluster}"):
            with contextlib.suppress(OSError):
                group.rmdir()

    def _keep_state(self, world: World) -> None:
        if self.opts.keep or self.breaks:
            copy_out(world.state, world.logs / "state")

    def _remove_folder(self, world: World) -> None:
        if self.opts.keep or self.breaks:
            print(f"kept {world.root} (logs, journal, the state directory's files)", flush=True)
            return
        import shutil

        shutil.rmtree(world.root, ignore_errors=True)


def _version_at(port: int) -> str | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/")
        resp = conn.getresponse()
        resp.read()
        conn.close()
    except (OSError, http.client.HTTPException):
        return None
    return resp.getheader("X-App-Version") if resp.status == 200 else None


def _print_report(figures: dict[str, Any], breaks: list[Break], seed: int) -> None:
    print("\nsoak report")
    for key in (
        "seed",
        "minutes",
        "services",
        "runtime",
        "requests",
        "requestsFailed",
        "excused",
        "faults",
        "faultsNotBuilt",
        "commits",
        "maxReplicas",
        "convergeSeconds",
        "badHead",
        "stoppedAtBreak",
        "canaries",
        "slowestRequestSeconds",
        "loadAvgBefore",
        "loadAvgAfter",
        "command",
    ):
        if key in figures:
            print(f"  {key}: {json.dumps(figures[key])}")
    print(f"  invariant breaks: {len(breaks)}")
    for b in breaks:
        print(f"    seed={seed} t={b.t:.1f}s {b.invariant}: {b.detail}")
        for line in b.context:
            print(f"        {line}")


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="length of the chaos phase")
    parser.add_argument("--seed", type=int, default=None, help="the plan's seed (default: random)")
    parser.add_argument("--services", type=int, default=3, help="services in the shop (>= 3)")
    parser.add_argument("--runtime", choices=("process", "docker"), default="process")
    parser.add_argument(
        "--state",
        default=None,
        metavar="etcd://[HOST:PORT,...[/NAMESPACE]]",
        help="keep the state in etcd: etcd:// alone starts three members of the soak's own "
        "on loopback (and kills them one at a time: etcd-member-kill)",
    )
    parser.add_argument(
        "--rate", type=float, default=25.0, help="requests a second per client thread"
    )
    parser.add_argument(
        "--exclude", default="", help="fault kinds to leave out, comma-separated (all: no fault)"
    )
    parser.add_argument(
        "--break-drain",
        action="store_true",
        help=f"run the daemon with {NO_DRAIN_ENV}=1 (the soak must catch it)",
    )
    parser.add_argument(
        "--stop-at-break",
        action="store_true",
        help="end the chaos at the first break and skip the convergence phase (the folder is kept)",
    )
    parser.add_argument("--report", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the folder (logs, journal)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info"),
        help="the daemon's log level (debug: each pass's steps, with --keep)",
    )
    args = parser.parse_args(argv)
    etcd = None
    if args.state is not None:
        if not args.state.startswith("etcd://"):
            parser.error("--state: only etcd://... (the soak's state is a folder otherwise)")
        etcd = args.state.removeprefix("etcd://").strip("/")
        etcd = "" if not etcd else args.state
    exclude = tuple(filter(None, args.exclude.split(",")))
    if "all" in exclude:
        exclude = FAULT_KINDS
    unknown = set(exclude) - set(FAULT_KINDS)
    if unknown:
        parser.error(f"unknown fault kinds: {sorted(unknown)} (known: {', '.join(FAULT_KINDS)})")
    if args.services < 3:
        parser.error("--services: at least the shop's 3")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    return Options(
        minutes=args.minutes,
        seed=seed,
        services=args.services,
        runtime=args.runtime,
        rate=args.rate,
        keep=args.keep,
        report=args.report,
        break_drain=args.break_drain,
        exclude=exclude,
        quiet=args.quiet,
        etcd=etcd,
        log_level=args.log_level,
        stop_at_break=args.stop_at_break,
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if os.geteuid() != 0:
        print("the soak needs root (a tmpfs for the state directory)", file=sys.stderr)
        return 2
    soak = Soak(opts)
    code = 2
    try:
        with interruptible():
            code = soak.run()
    except KeyboardInterrupt:
        print(f"\ninterrupted (seed {opts.seed}): cleaning up", flush=True)
        code = 130
    finally:
        soak.cleanup.run()
        for error in soak.cleanup.errors:
            print(f"cleanup: {error}", file=sys.stderr)
    if soak.figures:
        _print_report(soak.figures, soak.breaks, opts.seed)
        if opts.report is not None:
            opts.report.write_text(
                json.dumps(soak.figures, indent=2, default=str), encoding="utf-8"
            )
    return code


if __name__ == "__main__":
    sys.exit(main())
