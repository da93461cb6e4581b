"""A reconciling session: the store, runtimes, health monitor and data plane wired together.

Both ``gitorch apply`` (until converged) and ``gitorch daemon`` (until stopped) run one.
Only one process reconciles a cluster at a time:

* SQLite state (``--state DIR``): the session owns the daemon lock of the directory;
* etcd state (``--state etcd://...``): the session campaigns for the leadership of the
  namespace (:class:`~gitorch.state.etcd.election.Leadership`). While it leads, every
  write is fenced and every action checks the fence, and each table it applies is stored
  for the other hosts; while it does not (a standby, or a leader that lost its lease or
  its quorum), its reconciler only observes and plans, and a daemon's session serves its
  own host's endpoints with the leader's table (:mod:`gitorch.apply.followers`). Its
  local files (process replicas' records, the proxy's socket, Git's cache) live in the
  runtime directory (``--runtime-dir``), which daemons on one host share: the new leader
  adopts the replicas and the proxy of the old one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gitorch.apply.followers import FollowedDataPlane, TableFollower, TablePublisher
from gitorch.apply.health import HealthListener, HealthMonitor
from gitorch.apply.ingress import FleetDataPlane, IngressFleet
from gitorch.apply.reconciler import CommitMeta, Reconciler
from gitorch.apply.standin import StandIn, StandInOptions, start_stand_in, stop_stand_ins
from gitorch.errors import ConfigError, GitorchError
from gitorch.live import NodeTarget, node_targets
from gitorch.live.inventory import (
    applied_nodes,
    choose_default_driver,
    cluster_identity,
    leaving_targets,
    open_runtimes,
    pool_targets,
)
from gitorch.manifests.model import DesiredState
from gitorch.scheduler import LEAST_ALLOCATED
from gitorch.secrets import SecretValues, load_age_identities, load_digest_key
from gitorch.sources.base import CommitInfo
from gitorch.sources.verify import Verification
from gitorch.state import DaemonLock, StateStore
from gitorch.state.errors import NotLeader
from gitorch.state.etcd.tables import FOLLOWS_FIELD, Place
from gitorch.state.layout import ensure_state_dir
from gitorch.state.location import StateLocation
from gitorch.traffic.builtin.balancer import BuiltinLoadBalancer
from gitorch.traffic.discovery import unreachable_from_local_containers
from gitorch.traffic.proxy.client import ProxyDataPlane
from gitorch.traffic.proxy.control import ProxyPaths, ProxyUnavailable
from gitorch.traffic.table import BackendStats, DataPlane, DataPlaneHealth, RoutingTable
from gitorch.traffic.workers import WorkerPool

if TYPE_CHECKING:  # etcd's client loads only with etcd state
    from gitorch.state.etcd.election import Leadership

log = logging.getLogger("gitorch.session")


@dataclass(frozen=True)
class SessionOptions:
    state_dir: Path  # local files: the state directory (SQLite), else the runtime directory
    runtime: str | None = None  # default driver when the repo declares no Node
    lb_host: str = "127.0.0.1"  # where the built-in load balancer listens
    advertise_host: str | None = None  # what replicas get as <SERVICE>_SERVICE_HOST
    secrets_dir: Path | None = None
    age_key: Path | None = None  # the daemon's age identities, for Secrets in the repo
    scoring: str = LEAST_ALLOCATED
    drain_timeout: float = 10.0
    node_grace: float = 30.0  # a silent node's replicas are replaced after this long
    data_plane: str = "builtin"  # builtin | haproxy
    lb_workers: int = 0  # built-in LB worker processes; 0 = on a thread of this process
    # The data plane outlives the session (the daemon): the built-in one runs as
    # `gitorch proxy`, HAProxy keeps running; either is adopted when it already runs.
    data_plane_outlives: bool = False
    allowed_host_paths: tuple[Path, ...] = ()  # --allow-host-path: where hostPath may be
    ingress_workers: str = "auto"  # each remote host's ingress: proxy worker processes
    # Where the store lives: None is SQLite in state_dir; an etcd location elects a leader.
    state: StateLocation | None = None
    name: str | None = None  # this daemon among several (etcd; default: the host name)
    lease_ttl: float = 5.0  # seconds a killed leader keeps the leadership (etcd)
    member_info: Mapping[str, Any] | None = None  # what the daemon publishes of itself

    @property
    def location(self) -> StateLocation:
        return self.state or StateLocation(directory=self.state_dir)


def commit_meta(revision: str, commit: CommitInfo | None) -> CommitMeta:
    if commit is None:
        return CommitMeta(sha=revision)
    return CommitMeta(
        sha=commit.sha,
        author=f"{commit.author_name} <{commit.author_email}>",
        committed_at=commit.committed_at,
        signer=commit.signer,
        message=commit.message,
    )


def verified_commit(commit: CommitMeta, verdict: Verification | None) -> CommitMeta:
    """``commit`` as the signed-commit policy saw it: the signer is the identity the
    policy's keys verified (a gpg user id, an ssh principal), or ``unverified:KEY`` for a
    refused commit, whatever the daemon's own keyring said."""
    if verdict is None:
        return commit
    if verdict.trusted:
        return replace(commit, signer=verdict.signer or verdict.key or commit.signer)
    return replace(commit, signer=f"unverified:{verdict.key}" if verdict.key else None)


class Session:
    """Everything a reconciler needs, opened once and closed once."""

    def __init__(
        self,
        options: SessionOptions,
        *,
        on_health_change: HealthListener | None = None,
        on_leadership: Callable[[bool], None] | None = None,
        on_replica_exit: Callable[[str], None] | None = None,
    ) -> None:
        """``on_replica_exit(instance_id)``: a replica exited (drivers that see it at once,
        :meth:`gitorch.runtime.process.ProcessRuntime.on_exit`)."""
        self.options = options
        self._on_replica_exit = on_replica_exit
        local = ensure_state_dir(options.state_dir)
        location = options.location
        self.lock: DaemonLock | None = None
        self.leadership: Leadership | None = None
        if location.etcd is None:
            self.lock = DaemonLock(local)
            self.lock.acquire()
        try:
            self.store = StateStore(location)
            cluster = cluster_identity(self.store, local, create=True)
            assert cluster is not None  # created when missing
            self.cluster = cluster
            self.secrets = SecretValues(
                options.secrets_dir,
                load_age_identities(options.age_key) if options.age_key else (),
                secret_digest_key(self.store, local, create=True),
            )
            self.default_driver = choose_default_driver(options.runtime)
            # Remote hosts' ingresses; reads of figures add them to the local data plane.
            # Starting a daemon (or apply) asks for its endpoints, the remote hosts' too:
            # an earlier `gitorch proxy stop` no longer holds (whatever the data plane).
            ProxyPaths.of(local).stopped.unlink(missing_ok=True)
            self.ingress = IngressFleet(
                self.cluster,
                local / "ingress",
                workers=options.ingress_workers,
                stopped_marker=ProxyPaths.of(local).stopped,
            )
            self._dataplane: DataPlane | None = None
            self._local_plane: DataPlane | None = None
            # The pass, the API and the traffic meter ask for the data plane at once when
            # a leader starts: one of them opens it (each starting a proxy had the second
            # take over from the first, a hand-over of every endpoint at start-up).
            self._dataplane_lock = threading.Lock()
            # Held while a table is applied to this host's data plane: the leader's own
            # and a follower's (apply/followers.py) never interleave.
            self._table_writer = threading.Lock()
            self._follower: TableFollower | None = None
            self._publisher: TablePublisher | None = None
            self._stand_in: StandIn | None = None
            if location.etcd is not None:
                if options.data_plane_outlives:
                    # Stand-ins of daemons gone from this place leave before this one
                    # campaigns: it drives or follows this host's proxy itself.
                    for name in stop_stand_ins(options.state_dir):
                        log.info("stand-in for daemon %s stopped: this daemon serves here", name)
                self.leadership = _leadership(self.store, options, on_leadership)
                self._follow_the_leader()
            else:
                self._dataplane = FleetDataPlane(self.local_dataplane(), self.ingress)
            self.health: HealthMonitor | None = None
            self.reconciler: Reconciler | None = None
            self._targets: list[NodeTarget] = []
            self._term: object = None
            self._unreachable_said: str | None = None
            # Since when this session watches (a new leadership term starts anew).
            self._watching_since = time.time()
            self._on_health_change = on_health_change
        except BaseException:
            if self.leadership is not None:
                self.leadership.stop()
            started: StandIn | None = getattr(self, "_stand_in", None)
            if started is not None:
                started.release()
            if self.lock is not None:
                self.lock.release()
            raise

    @property
    def leading(self) -> bool:
        """Whether this session may act on the cluster now (always, with SQLite state)."""
        return self.leadership is None or self.leadership.leading

    @property
    def dataplane(self) -> DataPlane:
        """The data plane this session drives; with etcd state, opened (started or adopted)
        by the leader only (a following standby applies the leader's table to its host's
        data plane itself: :meth:`local_dataplane`)."""
        opened = self._dataplane
        if opened is not None:
            return opened
        if not self.leading:
            return StandbyDataPlane()
        fleet = FleetDataPlane(self.local_dataplane(), self.ingress)
        with self._dataplane_lock:
            if self._dataplane is None:
                self._dataplane = (
                    fleet
                    if self._publisher is None
                    else FollowedDataPlane(fleet, self._publisher, self._table_writer)
                )
            return self._dataplane

    def local_dataplane(self) -> DataPlane:
        """This host's own data plane, opened (started or adopted) once: the leader's
        table goes there, and a following standby's copy of it."""
        with self._dataplane_lock:
            if self._local_plane is None:
                self._local_plane = _data_plane(self.options)
            return self._local_plane

    def _follow_the_leader(self) -> None:
        """With etcd state: the leader stores its tables for the other hosts, and a
        daemon (whose data plane outlives it) follows them while it stands by."""
        from gitorch.state.etcd.backend import EtcdBackend

        backend = self.store.backend
        assert isinstance(backend, EtcdBackend) and self.leadership is not None
        place = Place.of(self.leadership.info)
        self._publisher = TablePublisher(backend, self.leadership, place)
        self._warn_split_host(place)
        if self.options.data_plane_outlives:
            self._follower = TableFollower(
                backend,
                self.leadership,
                place,
                self.local_dataplane,
                self._table_writer,
                drain_timeout=self.options.drain_timeout,
            )
            self._follower.start()
            if self.options.data_plane == "builtin":
                self._start_stand_in(place)

    def _start_stand_in(self, place: Place) -> None:
        """The process that keeps this host's proxy on the leader's table once this
        daemon is gone (apply/standin.py)."""
        etcd = self.options.location.etcd
        assert etcd is not None and self.leadership is not None
        try:
            self._stand_in = start_stand_in(
                StandInOptions(
                    state_url=etcd.url(certificates=True),
                    runtime_dir=self.options.state_dir,
                    place_host=place.host,
                    place_runtime_dir=place.runtime_dir,
                    name=self.leadership.name,
                    lb_host=self.options.lb_host,
                    secrets_dir=self.options.secrets_dir,
                    drain_timeout=self.options.drain_timeout,
                    ttl=self.options.lease_ttl,
                )
            )
        except OSError as exc:
            log.warning(
                "no stand-in started (this host's proxy keeps its last table once this "
                "daemon is gone): %s",
                exc,
            )

    def store_unstored_table(self) -> None:
        """With etcd state: the leader's last table, when etcd refused to store it for the
        other hosts, is tried again (each pass; the drain also tries)."""
        if self._publisher is not None:
            self._publisher.retry()

    def reconciler_for(self, desired: DesiredState) -> Reconciler:
        """The reconciler for ``desired``'s nodes and those NodePools made: rebuilt when
        they change, and whenever this session's leadership changes (a new term starts
        from the store and the replicas, as a restarted daemon does)."""
        declared = node_targets(desired.nodes.values(), self.default_driver)
        targets = (
            declared
            + leaving_targets(applied_nodes(self.store), declared)
            + pool_targets(self.store.list_node_pools())
        )
        acting = self.leading
        term = self._current_term(acting)
        if (
            self.reconciler is not None
            and targets == self._targets
            and self.reconciler.acting == acting
            and term == self._term
        ):
            return self.reconciler
        self._warn_unreachable_endpoints(targets)
        runtimes = open_runtimes(
            targets,
            self.options.state_dir,
            self.options.allowed_host_paths,
            secrets_dir=self.options.secrets_dir,
        )
        self.ingress.set_runtimes(runtimes)
        self._unwatch_exits()  # the runtimes replaced stop watching (Docker: its events)
        for runtime in runtimes.values():
            watch = getattr(runtime, "on_exit", None)
            if watch is not None and self._on_replica_exit is not None:
                watch(self._on_replica_exit)
        if self.health is not None:
            self.health.stop()
        self.health = HealthMonitor(runtimes, on_change=self._on_health_change)
        self.health.start()
        self.reconciler = Reconciler(
            store=self.store,
            targets=targets,
            runtimes=runtimes,
            health=self.health,
            dataplane=self.dataplane if acting else StandbyDataPlane(),
            cluster=self.cluster,
            advertise_host=self.options.advertise_host or _advertised(self.options.lb_host),
            secrets=self.secrets,
            scoring=self.options.scoring,
            drain_timeout=self.options.drain_timeout,
            node_grace=self.options.node_grace,
            ingress=self.ingress,
            fence=self.leadership.fence if self.leadership is not None else None,
            acting=acting,
            watching_since=self._watching_since if term == self._term else time.time(),
        )
        if term != self._term:
            self._watching_since = self.reconciler.watching_since  # a new term watches anew
        self._targets = targets
        self._term = term
        return self.reconciler

    def _warn_split_host(self, place: Place) -> None:
        """Say when another daemon of this host keeps another runtime directory: the
        process driver's replicas of a host live in one runtime directory, so a daemon
        on another would see none of them (they would all start again under it when it
        leads), and the two proxies need two addresses."""
        assert self.leadership is not None
        try:
            members = self.leadership.members()
        except GitorchError:
            return
        for member in members:
            other = Place.of(member)
            if member.get("name") == self.leadership.name or other.host != place.host:
                continue
            if other.runtime_dir and other.runtime_dir != place.runtime_dir:
                log.warning(
                    "daemon %s runs on this host with --runtime-dir %s, this one with %s: "
                    "daemons of one host share one runtime directory (process replicas and "
                    "the proxy live there) unless every node is a Docker engine reached "
                    "over the network",
                    member.get("name"),
                    other.runtime_dir,
                    place.runtime_dir,
                )

    def _unwatch_exits(self) -> None:
        """The current runtimes stop telling of replicas' exits."""
        if self.reconciler is None or self._on_replica_exit is None:
            return
        for runtime in self.reconciler.runtimes.values():
            watch = getattr(runtime, "on_exit", None)
            if watch is not None:
                watch(None)

    def _warn_unreachable_endpoints(self, targets: list[NodeTarget]) -> None:
        """Say once per set of nodes when containers on this host cannot reach the
        endpoints (a loopback ``--lb-host``): their dependsOn would fail quietly."""
        local_containers = [t.name for t in targets if t.driver == "docker" and not t.remote]
        why = unreachable_from_local_containers(self.options.lb_host, local_containers)
        if why is not None and why != self._unreachable_said:
            log.warning("%s", why)
        self._unreachable_said = why

    def _current_term(self, acting: bool) -> object:
        if self.leadership is None or not acting:
            return None
        try:
            return self.leadership.fence().create_revision
        except NotLeader:
            return None

    def close(self) -> None:
        """Stop probing and serving; replicas keep running (they are re-adopted next time).
        A leader gives its leadership up at once (a standby takes over without waiting
        for the lease to expire)."""
        try:
            if self._follower is not None:
                self._follower.stop()
            self._unwatch_exits()
            if self.health is not None:
                self.health.stop()
            if self._dataplane is not None:
                self._dataplane.close()  # the local data plane with it
            elif self._local_plane is not None:
                self._local_plane.close()
            if self.leadership is not None:
                self.leadership.stop()
            if self._stand_in is not None:
                self._stand_in.release()  # it follows the leader for this host now
            self.store.close()
        finally:
            if self.lock is not None:
                self.lock.release()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _data_plane(options: SessionOptions) -> DataPlane:
    """What serves the endpoints.

    * ``haproxy``: a real HAProxy serving the same table (adopted when it runs already;
      left running on close when the data plane outlives the session);
    * ``builtin`` outliving the session (the daemon): ``gitorch proxy``, started unless it
      runs already;
    * ``builtin`` otherwise (``gitorch apply``): the proxy when one runs for this state
      directory (it holds the ports), else a balancer in this process that serves until
      the session closes (on ``lb_workers`` processes, or on a thread).
    """
    if options.data_plane == "haproxy":
        from gitorch.traffic.haproxy import HAProxyDataPlane

        return HAProxyDataPlane(
            options.state_dir / "haproxy",
            host=options.lb_host,
            keep_running=options.data_plane_outlives,
        )
    if options.data_plane != "builtin":
        raise ConfigError(f"--data-plane {options.data_plane!r}: expected builtin or haproxy")
    workers = max(1, options.lb_workers)
    try:
        return ProxyDataPlane(
            options.state_dir,
            host=options.lb_host,
            workers=workers,
            secrets_dir=options.secrets_dir,
            start=options.data_plane_outlives,
        )
    except ProxyUnavailable:
        if options.data_plane_outlives:
            raise
    if options.lb_workers > 0:
        return WorkerPool(
            options.lb_host, workers=options.lb_workers, secrets_dir=options.secrets_dir
        )
    return BuiltinLoadBalancer(options.lb_host, secrets_dir=options.secrets_dir)


class StandbyDataPlane:
    """What a session that does not lead has instead of a data plane: nothing to drive
    (the leader's serves); every change is refused."""

    def apply(self, table: RoutingTable) -> None:
        raise NotLeader("a daemon that does not lead publishes no routing table")

    def backend_stats(self, service: str, backend_id: str) -> BackendStats | None:
        return None

    def figures(self, service: str) -> list[Any]:
        return []

    def version_figures(self, service: str) -> dict[str, Any]:
        return {}

    def health(self) -> DataPlaneHealth:
        return DataPlaneHealth("standby", True, "the leader's data plane serves")

    def serving(self) -> frozenset[str] | None:
        return None

    def close(self) -> None:
        return None


def _leadership(
    store: StateStore, options: SessionOptions, on_change: Callable[[bool], None] | None
) -> Leadership:
    """Campaign for the namespace (once at once: the caller knows its role on return)."""
    from gitorch.live.inventory import local_node_name
    from gitorch.state.etcd.backend import EtcdBackend
    from gitorch.state.etcd.election import Leadership

    backend = store.backend
    assert isinstance(backend, EtcdBackend)
    leadership = Leadership(
        backend,
        options.name or local_node_name(),
        ttl=options.lease_ttl,
        info={
            **(options.member_info or {}),
            # Where this daemon's data plane is (daemons of one place share it), and
            # whether it follows the leader's table while it stands by.
            "runtimeDir": str(options.state_dir.resolve()),
            FOLLOWS_FIELD: options.data_plane_outlives,
        },
        on_change=on_change,
    )
    backend.fence_with(leadership.fence)
    leadership.start()
    return leadership


def _advertised(lb_host: str) -> str:
    return "127.0.0.1" if lb_host in ("0.0.0.0", "", "::") else lb_host


def secret_digest_key(store: StateStore, local: Path, *, create: bool) -> bytes | None:
    """The key of secret digests: in the state directory (SQLite), or in the etcd
    namespace, shared by every daemon of it on any host."""
    from gitorch.state.etcd.backend import EtcdBackend

    if isinstance(store.backend, EtcdBackend):
        return store.backend.secret_digest_key(create=create)
    return load_digest_key(local, create=create)
