"""A reconciling session: the store, runtimes, health monitor and data plane wired together.

Both ``gitorch apply`` (until converged) and ``gitorch daemon`` (until stopped) run one.
The session owns the daemon lock: one writer per state directory.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from gitorch.apply.health import HealthListener, HealthMonitor
from gitorch.apply.reconciler import CommitMeta, Reconciler
from gitorch.errors import ConfigError
from gitorch.live import NodeTarget, cluster_name, node_targets
from gitorch.live.inventory import choose_default_driver, open_runtimes
from gitorch.manifests.model import DesiredState
from gitorch.scheduler import LEAST_ALLOCATED
from gitorch.secrets import SecretValues, load_age_identities, load_digest_key
from gitorch.sources.base import CommitInfo
from gitorch.sources.verify import Verification
from gitorch.state import DaemonLock, StateStore
from gitorch.state.layout import ensure_state_dir
from gitorch.traffic.builtin import BuiltinLoadBalancer
from gitorch.traffic.proxy.client import ProxyDataPlane
from gitorch.traffic.proxy.control import ProxyUnavailable
from gitorch.traffic.table import DataPlane
from gitorch.traffic.workers import WorkerPool


@dataclass(frozen=True)
class SessionOptions:
    state_dir: Path
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
        self, options: SessionOptions, *, on_health_change: HealthListener | None = None
    ) -> None:
        self.options = options
        state = ensure_state_dir(options.state_dir)
        self.lock = DaemonLock(state)
        self.lock.acquire()
        try:
            self.store = StateStore(state)
            self.cluster = cluster_name(state)
            self.secrets = SecretValues(
                options.secrets_dir,
                load_age_identities(options.age_key) if options.age_key else (),
                load_digest_key(state, create=True),
            )
            self.default_driver = choose_default_driver(options.runtime)
            self.dataplane = _data_plane(options)
            self.health: HealthMonitor | None = None
            self.reconciler: Reconciler | None = None
            self._targets: list[NodeTarget] = []
            self._on_health_change = on_health_change
        except BaseException:
            self.lock.release()
            raise

    def reconciler_for(self, desired: DesiredState) -> Reconciler:
        """The reconciler for ``desired``'s nodes (rebuilt when the repo's Nodes change)."""
        targets = node_targets(desired.nodes.values(), self.default_driver)
        if self.reconciler is not None and targets == self._targets:
            return self.reconciler
        runtimes = open_runtimes(targets, self.options.state_dir, self.options.allowed_host_paths)
        if self.health is not None:
            self.health.stop()
        self.health = HealthMonitor(runtimes, on_change=self._on_health_change)
        self.health.start()
        self.reconciler = Reconciler(
            store=self.store,
            targets=targets,
            runtimes=runtimes,
            health=self.health,
            dataplane=self.dataplane,
            cluster=self.cluster,
            advertise_host=self.options.advertise_host or _advertised(self.options.lb_host),
            secrets=self.secrets,
            scoring=self.options.scoring,
            drain_timeout=self.options.drain_timeout,
            node_grace=self.options.node_grace,
        )
        self._targets = targets
        return self.reconciler

    def close(self) -> None:
        """Stop probing and serving; replicas keep running (they are re-adopted next time)."""
        try:
            if self.health is not None:
                self.health.stop()
            self.dataplane.close()
            self.store.close()
        finally:
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


def _advertised(lb_host: str) -> str:
    return "127.0.0.1" if lb_host in ("0.0.0.0", "", "::") else lb_host
