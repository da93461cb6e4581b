"""Remote hosts' ingresses: started, removed, and kept current (the executor's hands).

What each host serves is decided in :mod:`gitorch.decide.ingress` (pure); here it is done:

* **the ingress** is ``gitorch proxy run`` in a container on the host's engine (the same
  proxy as the daemon's, with its workers and socket handover), with host networking so
  it listens on the host's address and reaches replicas on every host, restarted by the
  engine if it dies (``unless-stopped``), its last table in a volume of its own so a
  restarted ingress serves at once. Its image is the daemon's own Python and gitorch
  (:mod:`gitorch.runtime.ingress_image`), loaded into the engine the first time;
* **its table** goes through the control channel of :mod:`gitorch.traffic.proxy.remote`: a
  relay run in the container through the engine's exec API, on the connection gitorch
  already holds (TLS with client certificates, or ssh): no port of its own, no key of its
  own, nothing a stranger on the network can reach;
* **reading figures**: :class:`FleetDataPlane` is the daemon's data plane seen whole: the
  local proxy and every remote ingress it published to. In-flight counts (the executor's
  drain waits for every host), per-backend and per-version figures (analyses, metrics)
  are summed over them.

An ingress outlives the daemon like the local proxy: the daemon never stops one it does
not have to, and a new daemon adopts it (it is found by its labels).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from gitorch.decide.actions import RemoveIngress, StartIngress
from gitorch.decide.ingress import HostTable
from gitorch.errors import GitorchError
from gitorch.runtime.base import IngressHost, IngressSpec, Runtime
from gitorch.runtime.ingress_image import SITE, STATE, IngressImage, ingress_image
from gitorch.traffic.figures import BackendFigures, VersionFigures, added, combine
from gitorch.traffic.proxy.remote import ProxyNotServing, RemoteProxyPlane
from gitorch.traffic.table import (
    BackendStats,
    DataPlane,
    DataPlaneHealth,
    RoutingTable,
)

log = logging.getLogger("gitorch.ingress")

_T = TypeVar("_T")


class IngressFleet:
    """The ingresses of a cluster's remote hosts (one per node that runs one)."""

    def __init__(
        self,
        cluster: str,
        cache_dir: Path,
        *,
        workers: str = "auto",
        image: Callable[[Path], IngressImage] = ingress_image,
        stopped_marker: Path | None = None,
    ) -> None:
        self.cluster = cluster
        self.cache_dir = cache_dir
        #: Present after ``gitorch proxy stop`` (which removed the ingresses): none is
        #: started again until a daemon or ``gitorch apply`` starts (and removes it).
        self.stopped_marker = stopped_marker
        self.workers = workers
        self._image_of = image
        self._image: IngressImage | None = None
        self._runtimes: dict[str, IngressHost] = {}
        self._planes: dict[str, RemoteProxyPlane] = {}
        self._serving: set[str] = set()  # nodes whose last publish succeeded
        self._lock = threading.Lock()

    # -- wiring ---------------------------------------------------------------------------

    def set_runtimes(self, runtimes: Mapping[str, Runtime]) -> None:
        """The nodes' runtimes (those that can host an ingress are kept)."""
        with self._lock:
            self._runtimes = {n: r for n, r in runtimes.items() if isinstance(r, IngressHost)}
            for name in list(self._planes):
                if name not in self._runtimes:
                    self._planes.pop(name).close()
                    self._serving.discard(name)

    def image(self) -> IngressImage:
        """This installation's ingress image (its tag named once per process; the root
        filesystem is built only when an engine needs it)."""
        if self._image is None:
            self._image = self._image_of(self.cache_dir)
        return self._image

    def image_tag(self) -> str | None:
        """The tag hosts must run, or None when it cannot be made here (then the pass
        compares nothing, and a start says why it failed)."""
        try:
            return self.image().tag
        except GitorchError as exc:
            log.error("the ingress image cannot be made: %s", exc.message)
            return None

    def _plane(self, node: str) -> RemoteProxyPlane:
        with self._lock:
            plane = self._planes.get(node)
            if plane is None:
                runtime = self._runtimes.get(node)
                if runtime is None:
                    raise GitorchError(f"node {node}: its runtime cannot run an ingress")
                relay = tuple(self.image().command("relay", "--state", STATE))
                cluster = self.cluster
                plane = RemoteProxyPlane(node, lambda: runtime.ingress_channel(cluster, relay))
                self._planes[node] = plane
            return plane

    # -- actions --------------------------------------------------------------------------

    def start(self, action: StartIngress) -> None:
        """Start (or replace) the ingress of ``action.node``, serving on its address."""
        runtime = self._runtimes.get(action.node)
        if runtime is None:
            raise GitorchError(f"node {action.node}: its runtime cannot run an ingress")
        if self.stopped_marker is not None and self.stopped_marker.exists():
            raise GitorchError(
                "the data plane was stopped with `gitorch proxy stop`: endpoints are down "
                "until a daemon restart or `gitorch proxy run`"
            )
        image = self.image()
        image.build()
        spec = IngressSpec(
            image=image.tag,
            image_tar=str(image.tar),
            command=tuple(
                image.command(
                    "run", "--state", STATE, "--host", action.address, "--workers", self.workers
                )
            ),
            env={"PYTHONPATH": SITE},
            state_dir=STATE,
        )
        with self._lock:
            plane = self._planes.pop(action.node, None)
            self._serving.discard(action.node)
        if plane is not None:
            plane.close()  # its relay ran in the container being replaced
        runtime.start_ingress(self.cluster, spec)
        log.info("node %s: ingress started on %s (%s)", action.node, action.address, image.tag)

    def remove(self, action: RemoveIngress) -> None:
        runtime = self._runtimes.get(action.node)
        if runtime is None:
            return
        with self._lock:
            plane = self._planes.pop(action.node, None)
            self._serving.discard(action.node)
        if plane is not None:
            plane.close()
        runtime.remove_ingress(self.cluster)
        log.info("node %s: ingress removed (%s)", action.node, action.reason)

    # -- tables ---------------------------------------------------------------------------

    def publish(self, hosts: Mapping[str, HostTable]) -> dict[str, str]:
        """Apply each host's table (in parallel); node -> why it failed, for those that
        did. An ingress just started may take a moment to answer: retried briefly."""
        if not hosts:
            return {}
        failures: dict[str, str] = {}

        def one(node: str) -> None:
            try:
                _retrying(lambda: self._plane(node).apply(hosts[node].table))
            except GitorchError as exc:
                failures[node] = exc.message
                with self._lock:
                    self._serving.discard(node)
                return
            with self._lock:
                self._serving.add(node)

        with ThreadPoolExecutor(max_workers=min(8, len(hosts))) as pool:
            list(pool.map(one, sorted(hosts)))
        return failures

    def serving(self) -> list[tuple[str, RemoteProxyPlane]]:
        """The ingresses that took their last table (what reads are summed over)."""
        with self._lock:
            return [(n, self._planes[n]) for n in sorted(self._serving) if n in self._planes]

    def forget(self, nodes: Iterable[str]) -> None:
        """Stop reading from ``nodes`` (their host does not answer)."""
        with self._lock:
            for node in nodes:
                self._serving.discard(node)

    def close(self) -> None:
        with self._lock:
            for plane in self._planes.values():
                plane.close()
            self._planes.clear()
            self._serving.clear()


def stop_ingresses(runtimes: Mapping[str, Runtime], cluster: str) -> tuple[list[str], bool]:
    """Remove ``cluster``'s ingress (and its state) from every host in ``runtimes``
    (``gitorch proxy stop``): lines saying what was done, and whether every host did. A
    host that does not answer is named: its ingress keeps serving its last table."""
    lines: list[str] = []
    ok = True
    for name, runtime in sorted(runtimes.items()):
        if not isinstance(runtime, IngressHost):
            continue
        try:
            found = runtime.ingress(cluster)
            if found is None:
                continue
            runtime.remove_ingress(cluster)
        except GitorchError as exc:
            lines.append(f"node {name}: ingress not stopped: {exc.message}")
            ok = False
            continue
        lines.append(f"node {name}: ingress stopped")
    return lines, ok


def _retrying(call: Callable[[], None], attempts: int = 40, delay: float = 0.25) -> None:
    """``call``, again while the ingress is still starting (its relay answers, its proxy
    not yet); any other failure is final for this pass."""
    for attempt in range(attempts):
        try:
            call()
            return
        except ProxyNotServing:
            if attempt == attempts - 1:
                raise
            time.sleep(delay)


class FleetDataPlane:
    """The daemon's data plane (``local``) and every remote ingress, as one
    :class:`~gitorch.traffic.table.DataPlane`: tables are applied to ``local`` (the
    executor publishes hosts' tables through :attr:`fleet`); reads add up every ingress
    that serves. A host that fails to answer a read is left out of that read."""

    def __init__(self, local: DataPlane, fleet: IngressFleet) -> None:
        self.local = local
        self.fleet = fleet
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def _remote_reads(self, what: str, read: Callable[[RemoteProxyPlane], _T]) -> list[_T]:
        """``read`` of every ingress that serves, in the order of their nodes. The hosts are
        read in parallel, so one that stopped answering costs one call's timeout, not one
        per host; a host that failed a read is left out of reads until it takes a table
        again."""
        serving = self.fleet.serving()
        if len(serving) <= 1:  # one host (or none): no thread to hand the call to
            outcomes = [self._read_one(plane, read) for _, plane in serving]
        else:
            pool = self._readers()
            outcomes = list(pool.map(lambda item: self._read_one(item[1], read), serving))
        found: list[_T] = []
        for node, outcome in zip((node for node, _ in serving), outcomes, strict=True):
            if isinstance(outcome, GitorchError):
                log.warning("node %s: %s not read: %s", node, what, outcome.message)
                self.fleet.forget([node])
            else:
                found.append(outcome)
        return found

    @staticmethod
    def _read_one(
        plane: RemoteProxyPlane, read: Callable[[RemoteProxyPlane], _T]
    ) -> _T | GitorchError:
        try:
            return read(plane)
        except GitorchError as exc:
            return exc

    def _readers(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=8, thread_name_prefix="gitorch-ingress-read"
                )
            return self._pool

    def apply(self, table: RoutingTable) -> None:
        self.local.apply(table)

    def backend_stats(self, service: str, backend_id: str) -> BackendStats | None:
        parts = [self.local.backend_stats(service, backend_id)]
        parts += self._remote_reads(
            "in-flight figures", lambda plane: plane.backend_stats(service, backend_id)
        )
        return BackendStats.total(parts)

    def figures(self, service: str) -> list[BackendFigures]:
        merged: dict[str, BackendFigures] = {b.backend_id: b for b in self.local.figures(service)}
        for remote in self._remote_reads("figures", lambda plane: plane.figures(service)):
            for item in remote:
                have = merged.get(item.backend_id)
                merged[item.backend_id] = item if have is None else added(have, item)
        return list(merged.values())

    def version_figures(self, service: str) -> dict[str, VersionFigures]:
        parts: list[tuple[str, dict[str, VersionFigures]]] = [
            ("local", self.local.version_figures(service))
        ]
        parts += self._remote_reads(
            "version figures", lambda plane: (plane.node, plane.version_figures(service))
        )
        if len(parts) == 1:
            return parts[0][1]
        versions = sorted({v for _, figures in parts for v in figures})
        result: dict[str, VersionFigures] = {}
        for version in versions:
            counted = [(name, f[version]) for name, f in parts if version in f]
            total = combine(version, (f for _, f in counted))
            # One counting per data plane: the window restarts when any of them did (or
            # when a host joins or leaves the sum).
            epoch = "+".join(f"{name}:{f.epoch}" for name, f in counted)
            result[version] = replace(total, epoch=epoch)
        return result

    def health(self) -> DataPlaneHealth:
        return self.local.health()

    def serving(self) -> frozenset[str] | None:
        # Every host's proxy serves the same table: this host's says what is served.
        return self.local.serving()

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        self.fleet.close()
        self.local.close()
