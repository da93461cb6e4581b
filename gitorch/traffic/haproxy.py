"""HAProxy as gitorch's production data plane (HAProxy 2.6, master-worker, runtime API).

:class:`HAProxyDataPlane` serves a :class:`~gitorch.traffic.table.RoutingTable` with a
child ``haproxy -W -S <workdir>/master.sock`` process. What it renders per route:

* a frontend bound to ``host:port`` (``mode http`` or ``mode tcp``);
* a main backend ``be_<service>`` holding *every* version's servers: HAProxy has no
  weighted ``use_backend``, so the version split is done with per-server weights. A
  version of weight ``W`` with servers of ``Backend.weight`` ``w_i`` gets, per server,
  ``W * w_i / sum(w)``, scaled so the largest is 256 (HAProxy's maximum). A weighted
  version without an active server simply has no weight in the pool, so the others take
  its share (no 503 while any server is up). Empty ``weights``: ``Backend.weight`` as is.
* http only, per version a *group* backend ``be_<service>_g<k>`` with that version's
  servers again (HAProxy servers belong to one backend, so each backend appears in two:
  the main one and its version's group). Header/cookie rules are ACLs sending matching
  requests to their version's group (``use_backend ... if rule { nbsrv(group) gt 0 }``,
  so a version without a live server falls back to the weighted split). Regexes are
  anchored (``^(?:re)$``) to keep ``VersionRule``'s full-match meaning.
* stickiness per *version*, not per server (``cookie ... insert`` would pin a client to
  one server, and HAProxy honours that cookie even for a draining or weight-0 server): the
  frontend looks the ``gitorch_v_<service>`` cookie up in a map (version -> group backend)
  holding only versions whose weight is above 0 and that have a live server; the main
  backend adds ``Set-Cookie: gitorch_v_<service>=<version>; Path=/`` from a second map
  (server name -> version). Both maps change through the runtime API.

Servers are fixed *slots* (``slots_per_version`` per group, plus a spare group for the
next version), rendered as explicit ``server`` lines carrying the current address, weight
and state: a reload starts the new worker already right (a ``server-template`` would
start it with every slot empty until the runtime API caught up, which loses requests).

:meth:`HAProxyDataPlane.apply` decides between the two ways to change HAProxy:

* only addresses, weights, states, which version a group holds, or sticky maps changed:
  runtime API commands on the admin socket (``set server B/S addr|weight|state``,
  ``add|set|del map``), no reload. Every command that adds capacity is sent before any
  that removes some, and a new replica takes a slot that was already free, so a switch
  never passes through an instant where a route has no server in rotation (HAProxy
  answers that instant with "503 No server is available", which no retry covers);
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
histograms, so :meth:`HAProxyDataPlane.version_figures` has p50/p90/p99 like the built-in
plane's (HAProxy times in whole milliseconds). tcp routes log nothing: no percentiles.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from gitorch.errors import GitorchError
from gitorch.traffic.builtin import ListenError, RouteInvalid, check_route, sticky_cookie
from gitorch.traffic.figures import (
    BackendFigures,
    VersionFigures,
    bucket_of,
    by_version,
    empty_histogram,
)
from gitorch.traffic.table import Backend, BackendStats, Route, RoutingTable, VersionRule

log = logging.getLogger(__name__)


class HAProxyError(GitorchError):
    """HAProxy could not be started, reloaded or driven."""


class HAProxyConfigInvalid(HAProxyError):
    """``haproxy -c`` refused the rendered configuration (its message is the detail)."""


class HAProxyReloadFailed(HAProxyError):
    """The master could not start a worker with the new configuration; the old worker
    keeps serving the previous one."""


#: HAProxy's largest server weight.
MAX_WEIGHT = 256
#: A free slot points here, in maintenance: never connected to.
PLACEHOLDER = ("127.0.0.1", 1)
#: Matched with fullmatch: "$" would also accept a name ending in a newline, which would
#: break (or extend) the rendered configuration.
_TOKEN = re.compile(r"[!#$%&*+\-.^_`|~0-9A-Za-z]+")
_UNQUOTABLE = re.compile(r"['\r\n\0]")


@dataclass(frozen=True)
class _Server:
    """What one HAProxy server line should say."""

    host: str
    port: int
    weight: int
    state: str  # ready | drain | maint


@dataclass
class _Layout:
    """How one route is laid out on HAProxy's fixed slots."""

    route: Route
    groups: list[str | None]  # version held by each group (None: free)
    slots: list[list[str | None]]  # backend id per slot, per group

    @property
    def http(self) -> bool:
        return self.route.protocol == "http"

    def slot_of(self, backend_id: str) -> tuple[int, int] | None:
        for k, group in enumerate(self.slots):
            for j, held in enumerate(group):
                if held == backend_id:
                    return k, j
        return None

    def group_of(self, version: str) -> int | None:
        return self.groups.index(version) if version in self.groups else None

    def structure(self) -> tuple[object, ...]:
        """Everything that needs a reload when it changes."""
        rule_groups = tuple(self.group_of(r.version) for r in self.route.rules)
        route = self.route
        return (
            route.port,
            route.protocol,
            route.sticky,
            route.rules,
            rule_groups,
            len(self.groups),
            len(self.slots[0]) if self.slots else 0,
        )


class LatencyLog:
    """Per-backend latency histograms built from HAProxy's own request log.

    HAProxy keeps no latency histogram, but it logs every request, asynchronously: each
    http frontend sends one datagram per request to a UDP socket on 127.0.0.1 that this
    object owns (``log 127.0.0.1:PORT format raw``, ``log-format``
    :meth:`log_format`: a token, the frontend, the server's address, the status, the
    connect and response times). A reader thread puts each line's connect + response
    time (from picking the server to its response head, as the built-in plane counts)
    into the histogram of the backend at that address (the same buckets as
    :mod:`gitorch.traffic.figures`).

    UDP rather than a unix datagram socket: Linux queues at most
    ``net.unix.max_dgram_qlen`` (10) datagrams on those, a UDP socket as many as its
    receive buffer holds. HAProxy never waits for the reader: when the buffer is full the
    kernel drops the line (counted per socket, :attr:`overflowed`), when HAProxy cannot
    send it HAProxy does (``DroppedLogs``); :attr:`HAProxyDataPlane.dropped_log_lines`
    adds both. The histogram then has fewer samples than the stats have requests; its
    quantiles stay right as long as drops do not pick slow or fast requests.
    The token keeps lines from any other local sender out.
    """

    #: Receive buffer asked for (the kernel caps it at net.core.rmem_max).
    RCVBUF = 8 << 20

    def __init__(self, host: str = "127.0.0.1", rcvbuf: int = RCVBUF) -> None:
        self.token = secrets.token_hex(8)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self._sock.bind((host, 0))
            self._sock.settimeout(0.2)  # the reader checks for close() this often
        except OSError as exc:
            self._sock.close()
            raise HAProxyError(f"cannot open the latency log socket: {exc}") from exc
        self.address: tuple[str, int] = self._sock.getsockname()[:2]
        self._lock = threading.Lock()
        self._backends: dict[str, dict[str, str]] = {}  # frontend -> address -> backend id
        self._latency: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}
        self.lines = 0  # lines put into a histogram
        self.unattributed = 0  # lines for an address no current backend has
        self.ignored = 0  # no server reached (-1 times, <NOSRV>), foreign or malformed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="haproxy-log", daemon=True)
        self._thread.start()

    def log_format(self) -> str:
        """The ``log-format`` of an http frontend (fields :meth:`_take` reads)."""
        return f"{self.token} %f %si:%sp %ST %Tc %Tr"

    def route(self, frontends: Mapping[str, Mapping[str, str]]) -> None:
        """Which backend id each server address is, per frontend name; histograms of
        backends in none of them are forgotten."""
        known = {bid for addresses in frontends.values() for bid in addresses.values()}
        with self._lock:
            self._backends = {f: dict(addresses) for f, addresses in frontends.items()}
            for gone in self._latency.keys() - known:
                del self._latency[gone]
                self._sums.pop(gone, None)

    def histogram(self, backend_id: str) -> tuple[tuple[int, ...], float]:
        """(bucket counts, sum in ms) of one backend so far (empty when none)."""
        with self._lock:
            counts = self._latency.get(backend_id)
            if counts is None:
                return tuple(empty_histogram()), 0.0
            return tuple(counts), self._sums[backend_id]

    @property
    def overflowed(self) -> int:
        """Lines the kernel dropped because the receive buffer was full (Linux's per
        socket ``drops`` in /proc/net/udp; 0 where that is not readable)."""
        try:
            inode = str(os.fstat(self._sock.fileno()).st_ino)
            lines = Path("/proc/net/udp").read_text().splitlines()[1:]
        except OSError:
            return 0
        for line in lines:
            fields = line.split()
            if len(fields) >= 13 and fields[9] == inode:
                return int(fields[-1])
        return 0

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(2048)
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            self._take(data)

    def _take(self, data: bytes) -> None:
        fields = data.split()
        if len(fields) != 6 or fields[0] != self.token.encode():
            self.ignored += 1
            return
        _, frontend, address, _status, connect_ms, response_ms = fields
        try:
            connect, response = int(connect_ms), int(response_ms)
        except ValueError:
            connect = response = -1
        if connect < 0 or response < 0:
            self.ignored += 1  # no response head from a server (or garbage): nothing to time
            return
        took = connect + response
        with self._lock:
            backend_id = self._backends.get(frontend.decode(), {}).get(address.decode())
            if backend_id is None:
                self.unattributed += 1
                return
            counts = self._latency.get(backend_id)
            if counts is None:
                counts = self._latency[backend_id] = empty_histogram()
                self._sums[backend_id] = 0.0
            counts[bucket_of(took)] += 1
            self._sums[backend_id] += took
            self.lines += 1


def _plan_layout(route: Route, old: _Layout | None, slots_per_version: int) -> _Layout:
    """Place ``route``'s backends on slots, keeping every backend that stays where it was
    (so a runtime update moves nothing) and every version in its group."""
    versions: list[str] = []
    for backend in route.backends:
        if backend.version not in versions:
            versions.append(backend.version)
    per_version: dict[str, list[Backend]] = {v: [] for v in versions}
    for backend in route.backends:
        per_version[backend.version].append(backend)
    needed = max([slots_per_version, *(len(b) for b in per_version.values())])
    compatible = old is not None and old.route.protocol == route.protocol
    # Slots and groups that serve the old table. A new backend goes to a slot that was
    # free already: a slot just vacated would have to be re-pointed from its old replica
    # to the new one, out of rotation meanwhile, and if those were all the route's
    # servers, nothing would serve for a moment. Reused only when nothing else is free.
    held: set[tuple[int, int]] = set()
    if old is not None and compatible:
        held = {(k, j) for k, grp in enumerate(old.slots) for j, b in enumerate(grp) if b}
        groups = [g if g in per_version else None for g in old.groups]
        width = len(old.slots[0]) if old.slots else slots_per_version
        slots = [
            [b if b is not None and old.groups[k] == groups[k] else None for b in group]
            for k, group in enumerate(old.slots)
        ]
    else:
        groups, width, slots = [], slots_per_version, []
    if needed > width:
        width = needed
        slots = [group + [None] * (width - len(group)) for group in slots]
    grew = not groups
    for version in versions:
        if version in groups:
            continue
        if None in groups:
            free = [k for k, held_by in enumerate(groups) if held_by is None]
            k = min(free, key=lambda k: any((k, j) in held for j in range(width)))
            groups[k] = version
            slots[k] = [None] * width
        else:
            groups.append(version)
            slots.append([None] * width)
            grew = True
    # One spare group whenever the layout is (re)made: the next version of a rollout then
    # arrives without a reload (the old version's group is freed when it is gone).
    if grew and None not in groups:
        groups.append(None)
        slots.append([None] * width)
    for version, members in per_version.items():
        k = groups.index(version)
        wanted = {b.id for b in members}
        slots[k] = [b if b in wanted else None for b in slots[k]]
        for backend in members:
            if backend.id not in slots[k]:
                free = [j for j, held_by in enumerate(slots[k]) if held_by is None]
                slots[k][min(free, key=lambda j: (k, j) in held)] = backend.id
    return _Layout(route, groups, slots)


def _main_weights(route: Route) -> dict[str, int]:
    """HAProxy weight of each backend in the main backend (see the module docstring)."""
    active = [b for b in route.backends if not b.draining and b.weight > 0]
    shares: dict[str, float] = {}
    if route.weights:
        totals: dict[str, int] = {}
        for backend in active:
            totals[backend.version] = totals.get(backend.version, 0) + backend.weight
        for backend in active:
            version_weight = route.weights.get(backend.version, 0)
            if version_weight > 0:
                shares[backend.id] = version_weight * backend.weight / totals[backend.version]
    if not shares:  # no weights, or no weighted version has a live backend
        shares = {b.id: float(b.weight) for b in active}
    if not shares:
        return {}
    top = max(shares.values())
    return {bid: max(1, round(MAX_WEIGHT * share / top)) for bid, share in shares.items()}


def _check_haproxy_route(route: Route) -> None:
    """What this data plane cannot render, refused before anything changes."""
    check_route(route)
    if route.protocol not in ("http", "tcp"):
        raise RouteInvalid(f"service {route.service}: unknown protocol {route.protocol!r}")
    if not _TOKEN.fullmatch(route.service):
        raise RouteInvalid(f"service name {route.service!r} cannot be used in HAProxy")
    for rule in route.rules:
        name = rule.header if rule.header is not None else rule.cookie
        if name is None or not _TOKEN.fullmatch(name):
            raise RouteInvalid(f"service {route.service}: bad header or cookie name {name!r}")
        for value in (rule.exact, rule.regex):
            if value is not None and _UNQUOTABLE.search(value):
                raise RouteInvalid(
                    f"service {route.service}: rule value {value!r} holds a quote or a "
                    "line break, which the HAProxy data plane cannot express"
                )


def _quote(value: str) -> str:
    return f"'{value}'"  # HAProxy's strong quoting: nothing inside is interpreted


class HAProxyDataPlane:
    """The HAProxy :class:`~gitorch.traffic.table.DataPlane` (see the module docstring).

    Not thread-safe: one caller (the reconciler) drives it.
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
    ) -> None:
        """``request_log`` False: no request log, so no latency percentiles (figures
        keep HAProxy's averages); for measuring what the log costs HAProxy."""
        self.workdir = Path(workdir)
        self.host = host
        self.haproxy = haproxy
        self.slots_per_version = slots_per_version
        self.timeout = timeout
        self.log_buffer = log_buffer  # bytes of request log lines waiting to be read
        self.request_log = request_log
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "haproxy.cfg"
        self.admin_sock = self.workdir / "admin.sock"
        self.master_sock = self.workdir / "master.sock"
        self.log_path = self.workdir / "haproxy.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()
        self._layouts: dict[str, _Layout] = {}
        self._servers: dict[str, _Server] = {}  # "backend/server" -> as applied
        self._maps: dict[Path, dict[str, str]] = {}  # map file -> entries as applied
        self._generation = 0
        # Per backend id: counters carried over reloads, and the slot's counters when the
        # backend was put on it (a slot keeps counting across the backends it holds).
        self._carried: dict[str, tuple[int, int, int]] = {}
        self._baseline: dict[str, tuple[int, int, int]] = {}
        self.reloads = 0  # how many times apply() reloaded (for tests and logs)
        self._log: LatencyLog | None = None  # opened at the first apply()
        self._dropped_carried = 0  # log lines earlier workers dropped
        #: The latest runtime API commands and reloads, (time.time(), what), oldest first.
        self.changes: deque[tuple[float, str]] = deque(maxlen=2000)

    # ------------------------------------------------------------------ DataPlane

    # Every public method takes one lock: the daemon applies tables on its reconcile
    # thread while API threads read figures, and a read inside a reload would see a
    # worker's counts both banked and still live (counted twice).

    def apply(self, table: RoutingTable) -> None:
        """Serve ``table`` (see the module docstring): runtime API changes, or a checked
        reload when the structure changed."""
        with self._lock:
            self._apply_unlocked(table)

    def backend_stats(self, service: str, backend_id: str) -> BackendStats | None:
        """In flight, requests and errors of one backend (None when unknown)."""
        with self._lock:
            return self._backend_stats_unlocked(service, backend_id)

    def figures(self, service: str) -> list[BackendFigures]:
        """Cumulative figures of every backend of ``service`` (see ``_figures_unlocked``)."""
        with self._lock:
            return self._figures_unlocked(service)

    def close(self) -> None:
        """Stop HAProxy and the request-log reader."""
        with self._lock:
            self._close_unlocked()

    def _apply_unlocked(self, table: RoutingTable) -> None:
        """Serve ``table``: runtime API when only servers changed, else a validated reload.

        Raises :class:`RouteInvalid`/:class:`ListenError` before changing anything,
        :class:`HAProxyConfigInvalid` or :class:`HAProxyReloadFailed` when HAProxy refuses
        the new configuration (the previous one keeps serving).
        """
        ports: dict[int, str] = {}
        for route in table.routes.values():
            _check_haproxy_route(route)
            if route.port in ports:
                raise RouteInvalid(
                    f"services {ports[route.port]} and {route.service} both listen on "
                    f"port {route.port}"
                )
            ports[route.port] = route.service
        layouts = {
            name: _plan_layout(route, self._layouts.get(name), self.slots_per_version)
            for name, route in table.routes.items()
        }
        servers = self._desired_servers(layouts)
        maps = self._desired_maps(layouts)
        if self._log is None and self.request_log:
            self._log = LatencyLog(rcvbuf=self.log_buffer)
        if self._log is not None:
            # Lines of backends on their way out can still arrive: both tables, then the new.
            self._log.route(_log_routes(layouts, self._layouts))
        before = self._stat_rows() if self._running() else {}
        structure = {name: layout.structure() for name, layout in layouts.items()}
        current = {name: layout.structure() for name, layout in self._layouts.items()}
        if not self._running() or structure != current:
            self._check_ports(table, current)
            self._carry_over(before)
            if self._running():
                self._dropped_carried += self._dropped_now()
            self._reload(layouts, servers, maps)
            self._baseline = {}
        else:
            self._runtime(servers, maps)
            self._rebase(layouts, before)
        self._layouts = layouts
        self._servers = servers
        self._maps = maps
        if self._log is not None:
            self._log.route(_log_routes(layouts))

    def _backend_stats_unlocked(self, service: str, backend_id: str) -> BackendStats | None:
        """In flight (``scur`` + ``qcur``), requests (``stot``) and errors (``hrsp_5xx``
        + ``econ``) of one backend, both its server copies added up."""
        figures = {f.backend_id: f for f in self.figures(service)}
        found = figures.get(backend_id)
        if found is None:
            return None
        return BackendStats(
            found.in_flight, found.requests, found.errors_5xx + found.connect_errors
        )

    def _figures_unlocked(self, service: str) -> list[BackendFigures]:
        """Cumulative figures of every backend of ``service`` (empty if unknown)."""
        layout = self._layouts.get(service)
        if layout is None or not self._running():
            return []
        rows = self._stat_rows()
        versions = {b.id: b.version for b in layout.route.backends}
        result: list[BackendFigures] = []
        for backend_id, version in versions.items():
            place = layout.slot_of(backend_id)
            if place is None:
                continue
            in_flight, (requests, errors, connect), mean = self._slot_counts(
                service, layout, place, rows
            )
            carried = self._carried.get(backend_id, (0, 0, 0))
            base = self._baseline.get(backend_id, (0, 0, 0))
            latency, latency_sum = (
                self._log.histogram(backend_id)
                if self._log is not None
                else (tuple(empty_histogram()), 0.0)
            )
            result.append(
                BackendFigures(
                    backend_id=backend_id,
                    version=version,
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

    def version_figures(self, service: str) -> dict[str, VersionFigures]:
        """:meth:`figures` added up per version (p50/p90/p99 from the request log; none
        for tcp routes: see the module docstring)."""
        return by_version(self.figures(service))

    @property
    def dropped_log_lines(self) -> int:
        """Request log lines lost on the way to the latency reader: dropped by the kernel
        (the reader fell behind) or by HAProxy (``DroppedLogs`` of every worker this plane
        started)."""
        total = self._dropped_carried + (self._log.overflowed if self._log else 0)
        return total + self._dropped_now() if self._running() else total

    @property
    def latency_log(self) -> LatencyLog | None:
        """The request log receiver (None before the first :meth:`apply`)."""
        return self._log

    def _dropped_now(self) -> int:
        info = self._cli(self.admin_sock, "show info")
        match = re.search(r"^DroppedLogs: (\d+)$", info, re.M)
        return int(match.group(1)) if match else 0

    def worker_pid(self) -> int:
        """Pid of the worker serving now (changes at each reload, never otherwise)."""
        info = self._cli(self.admin_sock, "show info")
        match = re.search(r"^Pid: (\d+)$", info, re.M)
        if match is None:
            raise HAProxyError(f"unexpected 'show info' answer: {info[:200]!r}")
        return int(match.group(1))

    def _close_unlocked(self) -> None:
        """Stop HAProxy (master and workers)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(self.timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(self.timeout)
        self._layouts, self._servers, self._maps = {}, {}, {}
        log, self._log = self._log, None
        if log is not None:
            log.close()

    def __enter__(self) -> HAProxyDataPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ desired state

    def _desired_servers(self, layouts: Mapping[str, _Layout]) -> dict[str, _Server]:
        wanted: dict[str, _Server] = {}
        for name, layout in layouts.items():
            route = layout.route
            by_id = {b.id: b for b in route.backends}
            main = _main_weights(route)
            for k, group in enumerate(layout.slots):
                for j, backend_id in enumerate(group):
                    backend = by_id.get(backend_id) if backend_id is not None else None
                    if backend is None:
                        free = _Server(*PLACEHOLDER, 0, "maint")
                        wanted[f"be_{name}/g{k}s{j}"] = free
                        if layout.http:
                            wanted[f"be_{name}_g{k}/s{j}"] = free
                        continue
                    state = "drain" if backend.draining else "ready"
                    wanted[f"be_{name}/g{k}s{j}"] = _Server(
                        backend.host, backend.port, main.get(backend.id, 0), state
                    )
                    if layout.http:
                        own = min(MAX_WEIGHT, backend.weight)
                        wanted[f"be_{name}_g{k}/s{j}"] = _Server(
                            backend.host, backend.port, own, state
                        )
        return wanted

    def _sticky_map(self, name: str) -> Path:
        return self.workdir / f"{name}.sticky.map"

    def _server_map(self, name: str) -> Path:
        return self.workdir / f"{name}.servers.map"

    def _desired_maps(self, layouts: Mapping[str, _Layout]) -> dict[Path, dict[str, str]]:
        maps: dict[Path, dict[str, str]] = {}
        for name, layout in layouts.items():
            if not (layout.http and layout.route.sticky):
                continue
            route = layout.route
            live = {b.version for b in route.active() if b.weight > 0}
            sticky: dict[str, str] = {}
            servers: dict[str, str] = {}
            for k, version in enumerate(layout.groups):
                if version is None:
                    continue
                if route.weights.get(version, 0) > 0 and version in live:
                    sticky[version] = f"be_{name}_g{k}"
                for j in range(len(layout.slots[k])):
                    servers[f"g{k}s{j}"] = version
            maps[self._sticky_map(name)] = sticky
            maps[self._server_map(name)] = servers
        return maps

    # ------------------------------------------------------------------ rendering

    def render(self, layouts: Mapping[str, _Layout], servers: Mapping[str, _Server]) -> str:
        """The whole configuration for ``layouts`` (public for tests and debugging)."""
        lines = [
            "global",
            "    master-worker",
            f"    stats socket {self.admin_sock} mode 600 level admin expose-fd listeners",
            "    hard-stop-after 60s",  # an old worker never outlives a minute after reload
            "",
            "defaults",
            "    timeout connect 2s",
            "    timeout client 60s",
            "    timeout server 60s",
            "    timeout http-keep-alive 60s",
            "    timeout queue 5s",
            # Idle pooled connections to a server nobody uses any more (draining, removed)
            # are closed within a few tenths of a second: a stopping replica can exit.
            # Busy servers keep theirs (HAProxy purges only beyond the recent need).
            "    default-server pool-purge-delay 100ms",
            "",
        ]
        for name, layout in layouts.items():
            lines += self._render_route(name, layout, servers)
        return "\n".join(lines) + "\n"

    def _render_route(
        self, name: str, layout: _Layout, servers: Mapping[str, _Server]
    ) -> list[str]:
        route = layout.route
        mode = route.protocol
        out = [f"frontend fe_{name}", f"    mode {mode}", f"    bind {self.host}:{route.port}"]
        if layout.http:
            out += ["    option idle-close-on-response", "    option http-keep-alive"]
            if self._log is not None:
                host, port = self._log.address
                out += [
                    f"    log {host}:{port} len 512 format raw daemon",
                    f'    log-format "{self._log.log_format()}"',
                ]
            for index, rule in enumerate(route.rules):
                k = layout.group_of(rule.version)
                if k is None:
                    continue  # no server of that version yet: the weighted split serves
                acls, condition = self._render_rule(index, rule)
                out += acls
                out.append(
                    f"    use_backend be_{name}_g{k} if {condition} {{ nbsrv(be_{name}_g{k}) gt 0 }}"
                )
            if route.sticky:
                cookie = sticky_cookie(name)
                sticky_map = self._sticky_map(name)
                out += [
                    f"    http-request set-var(txn.gv) req.cook({cookie})",
                    f"    use_backend %[var(txn.gv),map({sticky_map})] "
                    f"if {{ var(txn.gv),map({sticky_map}) -m found }}",
                ]
        out += [f"    default_backend be_{name}", ""]
        out += [f"backend be_{name}", f"    mode {mode}", "    balance roundrobin"]
        out += self._render_retries(layout)
        if layout.http and route.sticky:
            cookie = sticky_cookie(name)
            out.append(
                f'    http-response add-header Set-Cookie "{cookie}='
                f'%[srv_name,map({self._server_map(name)})]; Path=/"'
            )
        for k, group in enumerate(layout.slots):
            for j in range(len(group)):
                out.append(self._render_server(f"g{k}s{j}", servers[f"be_{name}/g{k}s{j}"]))
        out.append("")
        if layout.http:
            for k, group in enumerate(layout.slots):
                out += [f"backend be_{name}_g{k}", "    mode http", "    balance roundrobin"]
                out += self._render_retries(layout)
                for j in range(len(group)):
                    out.append(self._render_server(f"s{j}", servers[f"be_{name}_g{k}/s{j}"]))
                out.append("")
        return out

    @staticmethod
    def _render_retries(layout: _Layout) -> list[str]:
        out = ["    retries 3", "    option redispatch 1"]
        if layout.http:
            # A request that never reached a server is sent to another one.
            out.append("    retry-on conn-failure empty-response")
        return out

    @staticmethod
    def _render_rule(index: int, rule: VersionRule) -> tuple[list[str], str]:
        """ACL lines of one rule, and the condition that is their AND (several ``acl``
        lines of one name would be ORed; exact and regex must both hold)."""
        fetch = (
            f"req.fhdr({rule.header})" if rule.header is not None else f"req.cook({rule.cookie})"
        )
        tests: list[str] = []
        if rule.exact is not None:
            tests.append(f"{fetch} -m str {_quote(rule.exact)}")
        if rule.regex is not None:
            tests.append(f"{fetch} -m reg {_quote(f'^(?:{rule.regex})$')}")
        if not tests:
            tests.append(f"{fetch} -m found")
        names = [f"rule{index}_{n}" for n in range(len(tests))]
        acls = [f"    acl {name} {test}" for name, test in zip(names, tests, strict=True)]
        return acls, " ".join(names)

    @staticmethod
    def _render_server(name: str, server: _Server) -> str:
        line = f"    server {name} {server.host}:{server.port} weight {server.weight}"
        if server.state == "maint":
            line += " disabled"
        return line

    # ------------------------------------------------------------------ process

    def _running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

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
                    raise ListenError.of(
                        {
                            route.service: f"service {route.service}: cannot listen on "
                            f"{self.host}:{route.port}: {exc.strerror or exc}"
                        }
                    ) from exc

    def _validate(self, path: Path) -> None:
        try:
            done = subprocess.run(  # noqa: S603 (argument list, our own haproxy path)
                [self.haproxy, "-c", "-f", str(path)],
                capture_output=True,
                text=True,
                timeout=self.timeout,
            )
        except FileNotFoundError as exc:
            raise HAProxyError(f"haproxy is not installed ({self.haproxy!r} not found)") from exc
        except subprocess.TimeoutExpired as exc:
            raise HAProxyError("haproxy -c did not finish") from exc
        if done.returncode != 0:
            lines = [
                line.strip()
                for line in (done.stderr + done.stdout).splitlines()
                if "ALERT" in line or "error" in line.lower()
            ] or [(done.stderr or done.stdout).strip()]
            raise HAProxyConfigInvalid(
                f"haproxy refused the new configuration: {lines[0]}", detail=tuple(lines[1:])
            )

    def _reload(
        self,
        layouts: Mapping[str, _Layout],
        servers: Mapping[str, _Server],
        maps: Mapping[Path, dict[str, str]],
    ) -> None:
        self._generation += 1
        self._trace(f"reload (configuration {self._generation})")
        candidate = self.workdir / "haproxy.cfg.new"
        candidate.write_text(self.render(layouts, servers))
        # Maps are read when a worker starts: the running one keeps what it loaded.
        for path, entries in maps.items():
            path.write_text("".join(f"{k} {v}\n" for k, v in entries.items()))
        self._validate(candidate)
        previous = self.config_path.read_text() if self.config_path.exists() else None
        candidate.replace(self.config_path)
        try:
            if self._running():
                self._master_reload()
            else:
                self._start()
        except HAProxyError:
            if previous is not None:
                self.config_path.write_text(previous)  # a later reload starts from good
            raise
        self.reloads += 1

    def _start(self) -> None:
        for sock in (self.admin_sock, self.master_sock):
            sock.unlink(missing_ok=True)
        log = self.log_path.open("ab")
        try:
            self._proc = subprocess.Popen(  # noqa: S603 (argument list)
                [self.haproxy, "-W", "-S", str(self.master_sock), "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # close() signals the whole group
            )
        except FileNotFoundError as exc:
            raise HAProxyError(f"haproxy is not installed ({self.haproxy!r} not found)") from exc
        finally:
            log.close()
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise HAProxyError(
                    f"haproxy exited with {self._proc.returncode} at start",
                    detail=tuple(self._log_tail()),
                )
            try:
                self.worker_pid()
                return
            except HAProxyError:
                time.sleep(0.02)
        self.close()
        raise HAProxyError("haproxy did not answer on its admin socket", detail=self._log_tail())

    def _master_reload(self) -> None:
        before = self._show_proc()
        log_size = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._cli(self.master_sock, "reload")
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            time.sleep(0.02)
            try:
                now = self._show_proc()
            except HAProxyError:
                continue  # the master re-executes itself: its socket is briefly gone
            if now[0] <= before[0]:
                continue
            if now[1] > before[1]:
                raise HAProxyReloadFailed(
                    "haproxy could not load the new configuration; the previous one keeps serving",
                    detail=self._log_tail(log_size),
                )
            try:
                if self.worker_pid() == now[2]:
                    return
            except HAProxyError:
                continue
        raise HAProxyReloadFailed("haproxy did not finish reloading", detail=self._log_tail())

    def _show_proc(self) -> tuple[int, int, int]:
        """(master reloads, failed reloads, current worker pid) from the master CLI."""
        text = self._cli(self.master_sock, "show proc")
        master = re.search(r"master\s+(\d+) \[failed: (\d+)\]", text)
        worker = re.search(r"# workers\n(\d+)\s+worker", text)
        if master is None or worker is None:
            raise HAProxyError(f"unexpected 'show proc' answer: {text[:200]!r}")
        return int(master.group(1)), int(master.group(2)), int(worker.group(1))

    def _log_tail(self, offset: int = 0) -> tuple[str, ...]:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                text = log.read().decode(errors="replace")
        except OSError:
            return ()
        alerts = [line for line in text.splitlines() if "ALERT" in line]
        return tuple((alerts or text.splitlines())[-10:])

    # ------------------------------------------------------------------ runtime API

    def _trace(self, change: str) -> None:
        """Keep (wall time, change) of every runtime command and reload: the debug log and
        :attr:`changes` let a client's failures be matched to what HAProxy was told."""
        self.changes.append((time.time(), change))
        log.debug("haproxy: %s", change)

    def _cli(self, path: Path, command: str) -> str:
        """One command on a HAProxy CLI socket (admin or master); its whole answer."""
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(self.timeout)
                sock.connect(str(path))
                sock.sendall(command.encode() + b"\n")
                sock.shutdown(socket.SHUT_WR)
                chunks = []
                while data := sock.recv(65536):
                    chunks.append(data)
        except OSError as exc:
            raise HAProxyError(f"haproxy socket {path.name}: {command!r} failed: {exc}") from exc
        return b"".join(chunks).decode(errors="replace")

    def _command(self, command: str) -> None:
        self._trace(command)
        answer = self._cli(self.admin_sock, command).strip()
        if answer and not answer.startswith(("IP changed", "no need to change", "port changed")):
            raise HAProxyError(f"haproxy runtime API refused {command!r}: {answer}")

    def _runtime(self, servers: Mapping[str, _Server], maps: Mapping[Path, dict[str, str]]) -> None:
        """Bring the running worker to ``servers`` and ``maps`` with runtime API commands.

        The order is what makes a switch lossless. Roundrobin answers "503 No server is
        available" the instant a backend has no server that is ready *and* weighted, and
        nothing (not ``retries``, not ``redispatch``) retries that. So every command that
        adds capacity runs before any command that removes some: while the first phase
        runs, every server of the old table still serves; while the second runs, every
        server of the new one already does. A route with a server in both tables thus
        never passes through an empty state, whatever the change (a blue-green switch
        back takes the new colour away and gives the old one its weight in one table).
        """
        changed = [(n, s, self._servers.get(n)) for n, s in servers.items()]
        changed = [(n, new, old) for n, new, old in changed if old != new]
        early, late = self._map_commands(maps)
        for command in early:
            self._command(command)
        # Phase 1, capacity only grows: servers arriving on a slot that was not serving,
        # servers coming back to ready, weights going up.
        repoint: list[tuple[str, _Server, _Server]] = []
        lower: list[tuple[str, _Server, _Server]] = []
        for name, new, old in changed:
            if old is None or _moved(old, new):
                if old is not None and old.state == "ready":
                    repoint.append((name, new, old))  # serving now: phase 2
                else:
                    self._point(name, new, old)
                continue
            if new.state == "ready" and (old.state != "ready" or new.weight > old.weight):
                if new.weight != old.weight:
                    self._command(f"set server {name} weight {new.weight}")
                if old.state != "ready":
                    self._command(f"set server {name} state ready")
            else:
                lower.append((name, new, old))
        # Phase 2, capacity shrinks. First slots that serve now and must point elsewhere
        # (only when no free slot was left: _plan_layout avoids it), each out of rotation
        # only while it changes; then weights going down; last, drain and maintenance.
        for name, new, old in repoint:
            self._command(f"set server {name} state maint")
            self._point(name, new, replace(old, state="maint"))
        for name, new, old in lower:
            if new.weight < old.weight:
                self._command(f"set server {name} weight {new.weight}")
        for name, new, old in lower:
            if new.state != old.state:
                self._command(f"set server {name} state {new.state}")
        for command in late:
            self._command(command)

    def _point(self, name: str, new: _Server, old: _Server | None) -> None:
        """A slot not in rotation gets ``new``'s address and weight, then its state."""
        if old is None or _moved(old, new):
            self._command(f"set server {name} addr {new.host} port {new.port}")
        if old is None or old.weight != new.weight:
            self._command(f"set server {name} weight {new.weight}")
        if old is None or old.state != new.state:
            self._command(f"set server {name} state {new.state}")

    def _map_commands(self, maps: Mapping[Path, dict[str, str]]) -> tuple[list[str], list[str]]:
        """Map updates split around the server changes: (before, after).

        A sticky map entry sends a client to a version's group backend, so it is removed
        before that group's servers leave and added only after they serve. The server map
        names the version of each slot for ``Set-Cookie``: its entries arrive before the
        slots serve and leave after.
        """
        early: list[str] = []
        late: list[str] = []
        for path, entries in maps.items():
            applied = self._maps.get(path, {})
            sticky = path.name.endswith(".sticky.map")
            gone = [f"del map {path} {key}" for key in applied.keys() - entries.keys()]
            put = [
                f"{'set' if key in applied else 'add'} map {path} {key} {value}"
                for key, value in entries.items()
                if applied.get(key) != value
            ]
            early += gone if sticky else put
            late += put if sticky else gone
        return early, late

    # ------------------------------------------------------------------ statistics

    def _stat_rows(self) -> dict[tuple[str, str], dict[str, str]]:
        text = self._cli(self.admin_sock, "show stat")
        reader = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {(row["pxname"], row["svname"]): row for row in reader if row.get("pxname")}

    def _slot_counts(
        self,
        name: str,
        layout: _Layout,
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
        self, rows: Mapping[tuple[str, str], Mapping[str, str]], layouts: Mapping[str, _Layout]
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
        self, layouts: Mapping[str, _Layout], rows: Mapping[tuple[str, str], Mapping[str, str]]
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


def _log_routes(
    layouts: Mapping[str, _Layout], *more: Mapping[str, _Layout]
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


def _moved(old: _Server, new: _Server) -> bool:
    return (old.host, old.port) != (new.host, new.port)


def _int(value: str | None) -> int:
    return int(value) if value else 0


def _sub(a: tuple[int, int, int], b: tuple[int, int, int]) -> tuple[int, int, int]:
    return (max(0, a[0] - b[0]), max(0, a[1] - b[1]), max(0, a[2] - b[2]))


def _add(a: tuple[int, int, int], b: tuple[int, int, int]) -> tuple[int, int, int]:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2])
