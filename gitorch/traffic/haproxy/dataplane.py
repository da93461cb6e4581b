"""HAProxy as gitorch's production data plane (HAProxy 2.6, master-worker, runtime API).

:class:`HAProxyDataPlane` serves a :class:`~gitorch.traffic.table.RoutingTable` with a
``haproxy -W`` master (:mod:`.process`) whose configuration is rendered by :mod:`.config`.
:meth:`HAProxyDataPlane.apply` decides between the two ways to change HAProxy:

* only addresses, weights, states, which version a group holds, or sticky maps changed:
  runtime API commands on the admin socket (:mod:`.runtime_api`), no reload;
* routes, ports, rules or the number of slots/groups changed: render, ``haproxy -c``
  (an invalid config raises :class:`HAProxyConfigInvalid` with HAProxy's message and
  never replaces the running one), then ``reload`` on the master socket. The new worker
  takes the listening sockets over (``expose-fd listeners``), the old one finishes its
  connections (``option idle-close-on-response``: idle keep-alive clients get one more
  answer, with ``Connection: close``, rather than a closed socket).

Figures come from ``show stat``: ``scur``+``qcur`` (in flight), ``stot`` (requests),
``hrsp_5xx``, ``econ``, and ``rtime`` (HAProxy's average over a server's last 1024
requests, as ``recent_mean_ms``). Counters of a worker are lost at a reload except what
this class carried over at that moment. Latency percentiles come from HAProxy's request
log instead (:class:`LatencyLog`): every http frontend logs each request, asynchronously,
to a UDP socket on 127.0.0.1 that a reader thread of this process drains into per-backend
histograms (HAProxy times in whole milliseconds). tcp routes log nothing: no
percentiles. Per-version totals that only grow are kept by a
:class:`~gitorch.traffic.ledger.VersionLedger`.

Outliving the daemon: with ``keep_running`` (the daemon's setting), :meth:`close` lets
HAProxy run on; everything this class knows about it (layouts, servers, maps, carried
counters, the request log's port and token, histograms, the ledger) is kept in
``state.json`` beside the configuration after every change and every few seconds of
reading. A new :class:`HAProxyDataPlane` on the same directory adopts the running master
and that state: the next table is applied through the runtime API as before, the request
log goes on to the same UDP port (log lines sent while no daemon read them are lost, and
counted nowhere), and counts go on from HAProxy's own counters. :meth:`stop` stops
HAProxy (``gitorch proxy stop``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from gitorch.traffic.figures import BackendFigures, VersionFigures, by_version, empty_histogram
from gitorch.traffic.haproxy.config import (
    Layout,
    Renderer,
    Server,
    check_haproxy_route,
    plan_layout,
)
from gitorch.traffic.haproxy.errors import HAProxyError
from gitorch.traffic.haproxy.latency_log import LatencyLog
from gitorch.traffic.haproxy.process import HAProxyMaster
from gitorch.traffic.haproxy.runtime_api import RuntimeApi
from gitorch.traffic.ledger import VersionLedger
from gitorch.traffic.routes import ListenError, check_table
from gitorch.traffic.table import BackendStats, DataPlaneHealth, RoutingTable, serving_backends

log = logging.getLogger("gitorch.traffic.haproxy")

#: Seconds between two writes of ``state.json`` while figures are read (changes are
#: written at once).
SAVE_EVERY = 2.0
STATE_FILE = "state.json"
#: Written by ``gitorch proxy stop``: a running daemon does not start HAProxy again.
STOPPED_FILE = "stopped"


class HAProxyDataPlane:
    """The HAProxy :class:`~gitorch.traffic.table.DataPlane` (see the module docstring).

    Every public method takes one lock: the daemon applies tables on its reconcile
    thread while API threads read figures, and a read inside a reload would see a
    worker's counts both banked and still live (counted twice).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        host: str = "127.0.0.1",
        haproxy: str = "haproxy",
        slots_per_version: int = 16,
        timeout: float = 10.0,
        log_buffer: int = LatencyLog.RCVBUF,
        request_log: bool = True,
        keep_running: bool = False,
    ) -> None:
        """``request_log`` False: no request log, so no latency percentiles (figures
        keep HAProxy's averages); for measuring what the log costs HAProxy.
        ``keep_running``: :meth:`close` leaves HAProxy serving (see the module
        docstring); a master already running in ``workdir`` is adopted either way, and
        left serving by :meth:`close` (it was not this plane's to stop)."""
        self.workdir = Path(workdir)
        self.host = host
        self.slots_per_version = slots_per_version
        self.timeout = timeout
        self.log_buffer = log_buffer  # bytes of request log lines waiting to be read
        self.request_log = request_log
        self.keep_running = keep_running
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.master = HAProxyMaster(self.workdir, haproxy=haproxy, timeout=timeout)
        self.config_path = self.master.config_path
        self.admin_sock = self.master.admin_sock
        self.master_sock = self.master.master_sock
        self.log_path = self.master.log_path
        self.api = RuntimeApi(self.admin_sock, timeout)
        self.changes = self.api.changes
        self._lock = threading.RLock()
        self._layouts: dict[str, Layout] = {}
        self._servers: dict[str, Server] = {}  # "backend/server" -> as applied
        self._maps: dict[Path, dict[str, str]] = {}  # map file -> entries as applied
        self._generation = 0
        # Per backend id: counters carried over reloads, and the slot's counters when the
        # backend was put on it (a slot keeps counting across the backends it holds).
        self._carried: dict[str, tuple[int, int, int]] = {}
        self._baseline: dict[str, tuple[int, int, int]] = {}
        self.reloads = 0  # how many times apply() reloaded (for tests and logs)
        self._log: LatencyLog | None = None  # opened at the first apply()
        self._dropped_carried = 0  # log lines earlier workers dropped
        self._force_reload = False  # the request log moved: the config must say so
        self.ledger = VersionLedger()
        self._saved_at = 0.0
        if keep_running:
            # A daemon starting asks for its endpoints: an earlier `gitorch proxy stop`
            # no longer holds.
            (self.workdir / STOPPED_FILE).unlink(missing_ok=True)
        self.adopted = self._adopt()

    # ------------------------------------------------------------------ DataPlane

    def apply(self, table: RoutingTable) -> None:
        """Serve ``table`` (see the module docstring): runtime API changes, or a checked
        reload when the structure changed."""
        with self._lock:
            self._apply_unlocked(table)
            self._save()

    def backend_stats(self, service: str, backend_id: str) -> BackendStats | None:
        """In flight (``scur`` + ``qcur``), requests (``stot``) and errors (``hrsp_5xx``
        + ``econ``) of one backend, both its server copies added up (None when unknown)."""
        with self._lock:
            figures = {f.backend_id: f for f in self._figures_unlocked(service)}
        found = figures.get(backend_id)
        if found is None:
            return None
        return BackendStats(
            found.in_flight, found.requests, found.errors_5xx + found.connect_errors
        )

    def figures(self, service: str) -> list[BackendFigures]:
        """Cumulative figures of every backend of ``service`` (empty if unknown)."""
        with self._lock:
            return self._figures_unlocked(service)

    def version_figures(self, service: str) -> dict[str, VersionFigures]:
        """Per-version totals that only grow (p50/p90/p99 from the request log; none for
        tcp routes: see the module docstring)."""
        with self._lock:
            current = self._figures_unlocked(service)
            layout = self._layouts.get(service)
            weights = layout.route.weights if layout is not None else {}
            result = self.ledger.versions(service, current, weights) if layout else {}
            if time.monotonic() - self._saved_at > SAVE_EVERY:
                self._save()
        # HAProxy's own recent mean (rtime) per version: the latency when no log line came.
        means = {v: f.recent_mean_ms for v, f in by_version(current).items()}
        return {v: replace(f, recent_mean_ms=means.get(v)) for v, f in result.items()}

    def health(self) -> DataPlaneHealth:
        with self._lock:
            if not self.master.running():
                return DataPlaneHealth("haproxy", False, "haproxy is not running")
            return DataPlaneHealth("haproxy", True, pid=self.master.pid, since=self.ledger.since)

    def serving(self) -> frozenset[str]:
        with self._lock:
            return serving_backends(layout.route for layout in self._layouts.values())

    def close(self) -> None:
        """Stop reading HAProxy; stop HAProxy too unless ``keep_running`` or this plane
        adopted it (``gitorch apply`` next to a daemon's HAProxy leaves it serving)."""
        with self._lock:
            if (self.keep_running or self.adopted) and self.master.running():
                self._save()
                self._close_log()
                return
            self._stop_unlocked()

    def stop(self) -> None:
        """Stop HAProxy (master and workers) and the request-log reader."""
        with self._lock:
            self._stop_unlocked()

    @property
    def dropped_log_lines(self) -> int:
        """Request log lines lost on the way to the latency reader: dropped by the kernel
        (the reader fell behind) or by HAProxy (``DroppedLogs`` of every worker this plane
        started)."""
        total = self._dropped_carried + (self._log.overflowed if self._log else 0)
        return total + self._dropped_now() if self.master.running() else total

    @property
    def latency_log(self) -> LatencyLog | None:
        """The request log receiver (None before the first :meth:`apply`)."""
        return self._log

    def worker_pid(self) -> int:
        """Pid of the worker serving now (changes at each reload, never otherwise)."""
        return self.api.worker_pid()

    def render(self, layouts: Mapping[str, Layout], servers: Mapping[str, Server]) -> str:
        """The whole configuration for ``layouts`` (for tests and debugging)."""
        return self._renderer().render(layouts, servers)

    def __enter__(self) -> HAProxyDataPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ applying

    def _renderer(self) -> Renderer:
        log_to = (self._log.address, self._log.log_format()) if self._log is not None else None
        return Renderer(self.workdir, self.host, self.admin_sock, log_to)

    def _apply_unlocked(self, table: RoutingTable) -> None:
        """Serve ``table``: runtime API when only servers changed, else a validated reload.

        Raises :class:`RouteInvalid`/:class:`ListenError` before changing anything,
        :class:`HAProxyConfigInvalid` or :class:`HAProxyReloadFailed` when HAProxy refuses
        the new configuration (the previous one keeps serving).
        """
        check_table(table)
        for route in table.routes.values():
            check_haproxy_route(route)
        layouts = {
            name: plan_layout(route, self._layouts.get(name), self.slots_per_version)
            for name, route in table.routes.items()
        }
        if self._log is None and self.request_log:
            self._log = LatencyLog(rcvbuf=self.log_buffer)
            self._force_reload = self.master.running()
        renderer = self._renderer()
        servers = renderer.servers(layouts)
        maps = renderer.maps(layouts)
        if self._log is not None:
            # Lines of backends on their way out can still arrive: both tables, then the new.
            self._log.route(_log_routes(layouts, self._layouts))
        running = self.master.running()
        before = self.api.stat_rows() if running else {}
        self._fold_departures(table, before)
        structure = {name: layout.structure() for name, layout in layouts.items()}
        current = {name: layout.structure() for name, layout in self._layouts.items()}
        if not running or structure != current or self._force_reload:
            self._check_ports(table, current if running else {})
            self._carry_over(before)
            if running:
                self._dropped_carried += self._dropped_now()
            self._reload(renderer, layouts, servers, maps)
            self._baseline = {}
            self._force_reload = False
        else:
            self.api.switch(self._servers, servers, self._maps, maps)
            self._rebase(layouts, before)
        self._layouts = layouts
        self._servers = servers
        self._maps = maps
        self.ledger.keep_routes(table.routes)
        if self._log is not None:
            self._log.route(_log_routes(layouts))

    def _fold_departures(
        self, table: RoutingTable, rows: Mapping[tuple[str, str], Mapping[str, str]]
    ) -> None:
        """Backends leaving HAProxy: their last counts go to the ledger first."""
        if not rows:
            return
        for name, layout in self._layouts.items():
            route = table.routes.get(name)
            staying = {b.id for b in route.backends} if route is not None else set()
            leaving = [b for b in layout.route.backends if b.id not in staying]
            if leaving:
                figures = self._figures_of(name, layout, rows)
                self.ledger.depart(name, [f for f in figures if f.backend_id not in staying])

    def _reload(
        self,
        renderer: Renderer,
        layouts: Mapping[str, Layout],
        servers: Mapping[str, Server],
        maps: Mapping[Path, dict[str, str]],
    ) -> None:
        self._generation += 1
        self.api.trace(f"reload (configuration {self._generation})")
        candidate = self.workdir / "haproxy.cfg.new"
        candidate.write_text(renderer.render(layouts, servers))
        # Maps are read when a worker starts: the running one keeps what it loaded.
        for path, entries in maps.items():
            path.write_text("".join(f"{k} {v}\n" for k, v in entries.items()))
        self.master.validate(candidate)
        previous = self.config_path.read_text() if self.config_path.exists() else None
        candidate.replace(self.config_path)
        try:
            if self.master.running():
                self.master.reload()
            elif (self.workdir / STOPPED_FILE).exists():
                raise HAProxyError(
                    "haproxy was stopped with `gitorch proxy stop`: endpoints are down "
                    "until a daemon restart"
                )
            else:
                self.master.start()
        except HAProxyError:
            if previous is not None:
                self.config_path.write_text(previous)  # a later reload starts from good
            raise
        self.reloads += 1

    def _check_ports(self, table: RoutingTable, current: Mapping[str, tuple[object, ...]]) -> None:
        """A port HAProxy does not hold yet must be free: a bind failure at reload would
        only be seen after the fact (``haproxy -c`` does not bind)."""
        held = {structure[0] for structure in current.values()}
        for route in table.routes.values():
            if route.port in held:
                continue
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((self.host, route.port))
                except OSError as exc:
                    raise ListenError(
                        f"service {route.service}: cannot listen on {self.host}:{route.port}: "
                        f"{exc.strerror or exc}"
                    ) from exc

    def _stop_unlocked(self) -> None:
        self.master.stop()
        self._layouts, self._servers, self._maps = {}, {}, {}
        self._close_log()
        (self.workdir / STATE_FILE).unlink(missing_ok=True)

    def _close_log(self) -> None:
        log_reader, self._log = self._log, None
        if log_reader is not None:
            log_reader.close()

    def _dropped_now(self) -> int:
        return self.api.info("DroppedLogs") or 0

    # ------------------------------------------------------------------ figures

    def _figures_unlocked(self, service: str) -> list[BackendFigures]:
        layout = self._layouts.get(service)
        if layout is None or not self.master.running():
            return []
        return self._figures_of(service, layout, self.api.stat_rows())

    def _figures_of(
        self, service: str, layout: Layout, rows: Mapping[tuple[str, str], Mapping[str, str]]
    ) -> list[BackendFigures]:
        """Cumulative figures of every backend of ``layout`` from ``show stat`` rows."""
        result: list[BackendFigures] = []
        for backend in layout.route.backends:
            place = layout.slot_of(backend.id)
            if place is None:
                continue
            in_flight, (requests, errors, connect), mean = self._slot_counts(
                service, layout, place, rows
            )
            carried = self._carried.get(backend.id, (0, 0, 0))
            base = self._baseline.get(backend.id, (0, 0, 0))
            latency, latency_sum = (
                self._log.histogram(backend.id)
                if self._log is not None
                else (tuple(empty_histogram()), 0.0)
            )
            result.append(
                BackendFigures(
                    backend_id=backend.id,
                    version=backend.version,
                    in_flight=in_flight,
                    requests=max(0, requests - base[0]) + carried[0],
                    errors_5xx=max(0, errors - base[1]) + carried[1],
                    connect_errors=max(0, connect - base[2]) + carried[2],
                    latency=latency,
                    latency_sum_ms=latency_sum,
                    recent_mean_ms=mean,
                )
            )
        return result

    def _slot_counts(
        self,
        name: str,
        layout: Layout,
        place: tuple[int, int],
        rows: Mapping[tuple[str, str], Mapping[str, str]],
    ) -> tuple[int, tuple[int, int, int], float | None]:
        """(in flight, (requests, 5xx, connect errors), recent mean ms) of one slot,
        both server copies added up."""
        k, j = place
        keys = [(f"be_{name}", f"g{k}s{j}")]
        if layout.http:
            keys.append((f"be_{name}_g{k}", f"s{j}"))
        in_flight = requests = errors = connect = 0
        weighted_mean = 0.0
        for key in keys:
            row = rows.get(key, {})
            in_flight += _int(row.get("scur")) + _int(row.get("qcur"))
            served = _int(row.get("stot"))
            requests += served
            errors += _int(row.get("hrsp_5xx"))
            connect += _int(row.get("econ"))
            weighted_mean += _int(row.get("rtime")) * served
        mean = weighted_mean / requests if requests else None
        return in_flight, (requests, errors, connect), mean

    def _counts_of(
        self, rows: Mapping[tuple[str, str], Mapping[str, str]], layouts: Mapping[str, Layout]
    ) -> dict[str, tuple[int, int, int]]:
        counts: dict[str, tuple[int, int, int]] = {}
        for name, layout in layouts.items():
            for backend in layout.route.backends:
                place = layout.slot_of(backend.id)
                if place is not None:
                    counts[backend.id] = self._slot_counts(name, layout, place, rows)[1]
        return counts

    def _carry_over(self, rows: Mapping[tuple[str, str], Mapping[str, str]]) -> None:
        """Before a reload (a new worker counts from zero): bank what each backend did."""
        for backend_id, now in self._counts_of(rows, self._layouts).items():
            base = self._baseline.get(backend_id, (0, 0, 0))
            carried = self._carried.get(backend_id, (0, 0, 0))
            self._carried[backend_id] = _add(carried, _sub(now, base))

    def _rebase(
        self, layouts: Mapping[str, Layout], rows: Mapping[tuple[str, str], Mapping[str, str]]
    ) -> None:
        """A backend put on a slot at runtime starts from that slot's counters."""
        for name, layout in layouts.items():
            old = self._layouts.get(name)
            for backend in layout.route.backends:
                place = layout.slot_of(backend.id)
                if place is None or (old is not None and old.slot_of(backend.id) == place):
                    continue
                self._baseline[backend.id] = self._slot_counts(name, layout, place, rows)[1]
        known = {b.id for layout in layouts.values() for b in layout.route.backends}
        for table in (self._baseline, self._carried):
            for gone in table.keys() - known:
                del table[gone]

    # ------------------------------------------------------------------ outliving

    def _adopt(self) -> bool:
        """Take over a HAProxy already running from this directory, with what the last
        plane kept of it (see the module docstring); False when none runs."""
        if not self.master.adopt():
            return False
        try:
            saved = json.loads((self.workdir / STATE_FILE).read_text(encoding="utf-8"))
            self._restore(saved)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # What it serves is unknown: the first table reloads it, counts start over.
            log.warning("haproxy %s: adopted without its state (%s)", self.master.pid, exc)
            self._layouts, self._servers, self._maps = {}, {}, {}
        log.info("haproxy %s: adopted (it kept serving)", self.master.pid)
        return True

    def _restore(self, saved: Mapping[str, Any]) -> None:
        self._layouts = {n: Layout.from_json(v) for n, v in saved["layouts"].items()}
        self._servers = {n: Server(*v) for n, v in saved["servers"].items()}
        self._maps = {Path(p): dict(e) for p, e in saved["maps"].items()}
        self._generation = int(saved["generation"])
        self._carried = {b: _triple(v) for b, v in saved["carried"].items()}
        self._baseline = {b: _triple(v) for b, v in saved["baseline"].items()}
        self._dropped_carried = int(saved.get("droppedCarried", 0))
        self.ledger.take_over(saved["ledger"])
        requested = saved.get("log")
        if requested and self.request_log:
            try:
                self._log = LatencyLog(
                    rcvbuf=self.log_buffer, port=int(requested["port"]), token=requested["token"]
                )
            except HAProxyError:
                self._log = LatencyLog(rcvbuf=self.log_buffer)
                self._force_reload = True  # the configuration must name the new port
            self._log.restore(
                {b: (list(c), float(s)) for b, (c, s) in saved.get("histograms", {}).items()}
            )
            self._log.route(_log_routes(self._layouts))

    def _save(self) -> None:
        """Keep what a successor needs to adopt HAProxy (written atomically)."""
        self._saved_at = time.monotonic()
        if not self.master.running():
            return
        data = {
            "layouts": {n: layout.to_json() for n, layout in self._layouts.items()},
            "servers": {n: [s.host, s.port, s.weight, s.state] for n, s in self._servers.items()},
            "maps": {str(p): e for p, e in self._maps.items()},
            "generation": self._generation,
            "carried": self._carried,
            "baseline": self._baseline,
            "droppedCarried": self._dropped_carried,
            "ledger": self.ledger.to_json(backends=True),
            "log": (
                {"port": self._log.address[1], "token": self._log.token} if self._log else None
            ),
            "histograms": self._log.histograms() if self._log else {},
        }
        target = self.workdir / STATE_FILE
        tmp = self.workdir / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, target)


def _log_routes(
    layouts: Mapping[str, Layout], *more: Mapping[str, Layout]
) -> dict[str, dict[str, str]]:
    """Frontend name -> server address as HAProxy logs it (``%si:%sp``) -> backend id, for
    the http routes of ``layouts`` (and of ``more``)."""
    frontends: dict[str, dict[str, str]] = {}
    for each in (layouts, *more):
        for name, layout in each.items():
            if layout.http:
                addresses = frontends.setdefault(f"fe_{name}", {})
                for b in layout.route.backends:
                    addresses[f"{b.host.strip('[]')}:{b.port}"] = b.id
    return frontends


def _int(value: str | None) -> int:
    return int(value) if value else 0


def _sub(a: tuple[int, int, int], b: tuple[int, int, int]) -> tuple[int, int, int]:
    return (max(0, a[0] - b[0]), max(0, a[1] - b[1]), max(0, a[2] - b[2]))


def _add(a: tuple[int, int, int], b: tuple[int, int, int]) -> tuple[int, int, int]:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2])


def _triple(value: Any) -> tuple[int, int, int]:
    a, b, c = value
    return int(a), int(b), int(c)
