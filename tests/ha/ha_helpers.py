"""Several real ``gitorch daemon`` processes on one etcd namespace, on one host.

The daemons share one runtime directory (``--runtime-dir``), as daemons of one host do: the
process driver's records and the proxy's control socket are there, so whichever leads
adopts the replicas and the data plane. The test reads the ground truth itself: the
replicas through a fresh process driver, the keys straight from etcd.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_plane_helpers import stop_data_plane
from etcd_helpers import EtcdCluster, new_namespace
from listen_ports import free_port
from reconciler_helpers import DaemonProc, init_repo, remove_cluster, wait_for

from gitorch.errors import GitorchError
from gitorch.live.inventory import local_node_name, runtime_dir
from gitorch.runtime.base import LABEL_REPLICA, LABEL_SPEC_DIGEST, Instance
from gitorch.runtime.process import ProcessRuntime
from gitorch.state import StateStore
from gitorch.state.etcd.backend import EtcdBackend


def role_of(daemon: DaemonProc) -> str | None:
    """What ``daemon`` says it is (leader, standby, not acting); None when it does not
    answer (killed, paused)."""
    if daemon.proc.poll() is not None:
        return None
    try:
        code, data = daemon.request("GET", "/api/v1/status")
    except OSError:
        return None
    if code != 200 or not isinstance(data, dict):
        return None
    return str(data.get("controlPlane", {}).get("role"))


def kill_leader_until_standby_leads(
    leader: DaemonProc, standby: DaemonProc, ttl: float, *, extra: float = 0.0
) -> float:
    """SIGKILL ``leader`` and wait (at most ``ttl`` + 2 s, + ``extra``) until ``standby``
    leads; the seconds the takeover took."""
    os.kill(leader.proc.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    leader.proc.wait(10)
    wait_for(
        "the standby leading",
        lambda: role_of(standby) == "leader",
        ttl + 2 + extra,
        interval=0.05,
        describe=standby.log_tail,
    )
    return time.monotonic() - killed_at


def leader_named(daemon: DaemonProc) -> str | None:
    """Who ``daemon`` says leads."""
    try:
        code, data = daemon.request("GET", "/api/v1/status")
    except OSError:
        return None
    return data.get("controlPlane", {}).get("leader") if code == 200 else None


@dataclass
class HAWorld:
    """A Git repo, an etcd namespace, a shared runtime dir, and the daemons on them."""

    root: Path
    etcd: EtcdCluster
    ttl: float = 5.0
    namespace: str = field(default_factory=new_namespace)
    port: int = field(default_factory=free_port)
    daemons: dict[str, DaemonProc] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.repo = self.root / "repo"
        self.runtime = self.root / "run"
        self.other_runtimes: list[Path] = []
        self._cluster: str | None = None
        init_repo(self.repo)

    @property
    def url(self) -> str:
        return self.etcd.url(self.namespace)

    @property
    def prefix(self) -> str:
        return f"/gitorch/{self.namespace}/"

    def start(
        self, name: str, *extra: str, wait: bool = True, runtime: Path | None = None
    ) -> DaemonProc:
        """A daemon on the shared runtime directory, or on ``runtime`` (its own: another
        host's, as far as the data plane goes)."""
        if runtime is not None:
            runtime.mkdir(parents=True, exist_ok=True)
            self.other_runtimes.append(runtime)
        daemon = DaemonProc(
            str(self.repo),
            runtime or self.runtime,
            "process",
            interval=1.0,
            resync=0.3,
            store_url=self.url,
            extra=["--name", name, "--lease-ttl", f"{self.ttl:g}", *extra],
            wait=wait,
        )
        self.daemons[name] = daemon
        return daemon

    def one_leader(self, timeout: float = 15.0) -> tuple[DaemonProc, list[DaemonProc]]:
        """The daemon that leads (all agreeing on it), and the others (standbys)."""

        def settled() -> tuple[DaemonProc, list[DaemonProc]] | None:
            alive = [d for d in self.daemons.values() if d.proc.poll() is None]
            roles = [role_of(d) for d in alive]
            if sorted(roles, key=str) != sorted(["leader"] + ["standby"] * (len(alive) - 1)):
                return None
            leader = alive[roles.index("leader")]
            names = [name for name, d in self.daemons.items() if d is leader]
            if {leader_named(d) for d in alive} != set(names):
                return None  # every daemon names the same leader
            return leader, [d for d in alive if d is not leader]

        return wait_for("exactly one leader", settled, timeout, interval=0.1)

    def cluster_name(self) -> str | None:
        """The replicas' cluster label, read from etcd once (later reads may find no
        quorum: the label never changes)."""
        if self._cluster is not None:
            return self._cluster
        try:
            with StateStore(self.url, readonly=True) as store:
                assert isinstance(store.backend, EtcdBackend)
                self._cluster = store.backend.cluster_name()
        except GitorchError:
            return None
        return self._cluster

    def runtime_driver(self) -> ProcessRuntime:
        node = local_node_name()
        return ProcessRuntime(node, runtime_dir(self.runtime, node))

    def replicas(self) -> list[Instance]:
        """Every replica record of this cluster, as a fresh driver reads them."""
        cluster = self.cluster_name()
        if cluster is None:
            return []
        return list(self.runtime_driver().list_instances(cluster))

    def data_keys(self) -> dict[str, int]:
        """Every key of the namespace but leadership's own (election, members), with its
        mod revision: what a daemon's state writes change."""
        keys = self.etcd.keys(self.prefix)
        return {
            key: int(meta["mod_revision"])  # type: ignore[call-overload]
            for key, meta in keys.items()
            if not key.startswith((f"{self.prefix}election/", f"{self.prefix}members/"))
        }

    def teardown(self) -> None:
        for daemon in self.daemons.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(daemon.proc.pid, signal.SIGCONT)  # a paused one must hear SIGTERM
            daemon.stop()
        cluster = self.cluster_name()
        for runtime in (self.runtime, *self.other_runtimes):
            stop_data_plane(runtime)
            node = local_node_name()
            remove_cluster(ProcessRuntime(node, runtime_dir(runtime, node)), cluster)


class Census:
    """Samples the replicas every few milliseconds: the most that ever ran at once."""

    def __init__(self, world: HAWorld, interval: float = 0.02) -> None:
        self.world = world
        self.interval = interval
        self.most = 0
        self.samples = 0
        self.worst: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Census:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        cluster = self.world.cluster_name()
        assert cluster is not None
        driver = self.world.runtime_driver()
        while not self._stop.is_set():
            try:
                found = [i for i in driver.list_instances(cluster) if str(i.state) == "running"]
            except GitorchError:
                found = []
            self.samples += 1
            if len(found) > self.most:
                self.most = len(found)
                self.worst = sorted(
                    f"{i.labels.get(LABEL_REPLICA)}:{i.labels.get(LABEL_SPEC_DIGEST, '')[:14]}"
                    for i in found
                )
            time.sleep(self.interval)


@contextlib.contextmanager
def paused(daemon: DaemonProc) -> Iterator[None]:
    """SIGSTOP ``daemon`` (a GC pause, a frozen VM) until the block ends."""
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)


def status_of(daemon: DaemonProc) -> dict[str, Any] | None:
    try:
        code, data = daemon.request("GET", "/api/v1/status")
    except OSError:
        return None
    return data if code == 200 and isinstance(data, dict) else None
