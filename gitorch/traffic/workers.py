"""The built-in load balancer on several processes: one per core, like nginx's workers.

A Python process proxies on one core at most (the GIL), so one
:class:`~gitorch.traffic.builtin.balancer.BuiltinLoadBalancer` tops out at one core while HAProxy
uses them all. :class:`WorkerPool` runs ``n`` of them, each in its own process. The
coordinator opens every route's listening sockets, one per worker, all sharing the port
with ``SO_REUSEPORT`` (:class:`~gitorch.traffic.listeners.SocketSet`), and sends each
worker its own (fd passing over the worker's pipe): the kernel spreads new client
connections over the workers, and each worker proxies its connections exactly as the
in-process balancer does (same code). The coordinator keeps its copy of every socket, so
a worker that dies leaves its socket open (clients wait in its queue for the
replacement instead of being reset), and a whole proxy can hand its sockets to a
successor (see :mod:`gitorch.traffic.proxy`).

The pool is a :class:`~gitorch.traffic.table.DataPlane`:

* :meth:`WorkerPool.apply` sends the table to every worker and returns once each has
  applied it, so the "no new traffic to a draining backend once apply returns" promise
  holds for the pool as a whole;
* figures are read from every worker and added up per backend (counts, histograms and
  in-flight requests are sums); per-version totals add up the workers' own ledgers, and a
  replaced worker's last totals are kept (a pool-level ledger), so they only grow;
* a worker that died (or stopped answering) is replaced and given its sockets and the
  current table within :data:`WATCH_EVERY` (or at the next call); workers
  exit by themselves when the coordinator's end of their pipe closes, so a coordinator
  killed with SIGKILL leaves no worker behind, and they ignore SIGINT and SIGTERM sent to
  the whole process group (the coordinator stops them in order).

Weights hold per worker (smooth weighted round robin in each), so shares are exact per
worker and within a request or two per cycle for the pool.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import multiprocessing.connection
import signal
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import replace
from multiprocessing import reduction
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gitorch.errors import ConfigError
from gitorch.traffic.builtin.balancer import BuiltinLoadBalancer
from gitorch.traffic.builtin.timing import Timeouts
from gitorch.traffic.figures import BackendFigures, VersionFigures, added
from gitorch.traffic.ledger import VersionLedger
from gitorch.traffic.listeners import Handed, SocketSet
from gitorch.traffic.routes import ListenError, check_table, resolve_tls
from gitorch.traffic.table import (
    BackendStats,
    DataPlaneHealth,
    Route,
    RoutingTable,
    serving_backends,
)

log = logging.getLogger(__name__)

#: Seconds between two checks for dead workers while :meth:`WorkerPool.watch` runs.
WATCH_EVERY = 0.2

#: Message kinds a worker answers (see :func:`_worker_main`).
_APPLY, _FIGURES, _VERSIONS, _STATS, _ENDPOINTS = "apply", "figures", "versions", "stats", "ends"
_SOCKETS, _RELEASE, _CONNECTIONS, _CLOSE = "sockets", "release", "connections", "close"


class WorkerError(ConfigError):
    """A load-balancer worker could not be started or did not answer."""


def _to_wire(table: RoutingTable) -> list[Route]:
    # MappingProxyType does not pickle: weights travel as plain dicts.
    return [replace(route, weights=dict(route.weights)) for route in table.routes.values()]


def _from_wire(routes: list[Route]) -> RoutingTable:
    return RoutingTable(
        MappingProxyType(
            {r.service: replace(r, weights=MappingProxyType(dict(r.weights))) for r in routes}
        )
    )


def _worker_main(
    conn: multiprocessing.connection.Connection, host: str, timeouts: Timeouts, event_loop: str
) -> None:
    """One worker: a balancer on the sockets the coordinator sends, serving what the
    coordinator says, until it says close or its end of the pipe goes away."""
    # Ctrl-C in a terminal, `timeout`, and systemd's stop (KillMode=control-group) signal
    # the whole process group. The coordinator decides when its workers stop: it finishes
    # what it does, reads their last figures, then closes their pipes. A worker that died
    # of the group's SIGTERM first would be replaced during the shutdown.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    handed = Handed()
    # What was loaded so far lives as long as the worker: left out of the collector's
    # full passes, which otherwise walk every module's objects (a pause on requests).
    gc.freeze()
    lb = BuiltinLoadBalancer(host, timeouts=timeouts, listeners=handed, event_loop=event_loop)
    try:
        while True:
            try:
                kind, *args = conn.recv()
            except (EOFError, OSError):
                return  # the coordinator is gone: so is this worker
            try:
                if kind == _SOCKETS:
                    port, count = args
                    fds = [reduction.recv_handle(conn) for _ in range(count)]
                    handed.give(port, [socket.socket(fileno=fd) for fd in fds])
                    continue  # no answer: the apply that follows answers
                if kind == _APPLY:
                    table = _from_wire(args[0])
                    try:
                        lb.apply(table)
                    finally:
                        handed.keep_only(route.port for route in table.routes.values())
                    answer: Any = None
                elif kind == _FIGURES:
                    answer = lb.figures(args[0])
                elif kind == _VERSIONS:
                    answer = lb.version_figures(args[0])
                elif kind == _STATS:
                    answer = lb.backend_stats(args[0], args[1])
                elif kind == _ENDPOINTS:
                    answer = lb.endpoints()
                elif kind == _RELEASE:
                    lb.release()
                    answer = None
                elif kind == _CONNECTIONS:
                    answer = lb.connections()
                elif kind == _CLOSE:
                    conn.send(("ok", None))
                    return
                else:
                    raise ConfigError(f"unknown worker request {kind!r}")
                conn.send(("ok", answer))
            except ListenError as exc:
                conn.send(("listen", (exc.message, exc.detail)))
            except Exception as exc:  # the coordinator re-raises it as a WorkerError
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        lb.close()


class _Worker:
    """The coordinator's handle on one worker process."""

    def __init__(self, index: int, host: str, timeouts: Timeouts, event_loop: str) -> None:
        context = multiprocessing.get_context("spawn")  # never fork a threaded process
        self.index = index
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=_worker_main,
            args=(child, host, timeouts, event_loop),
            name=f"gitorch-lb-worker-{index}",
            daemon=True,
        )
        self.process.start()
        child.close()
        self.ports: set[int] = set()  # ports whose sockets it was sent

    def ask(self, message: tuple[Any, ...], timeout: float) -> Any:
        """Send ``message`` and return the answer (see :meth:`receive`)."""
        self.send(message)
        return self.receive(timeout)

    def send(self, message: tuple[Any, ...]) -> None:
        try:
            self.conn.send(message)
        except OSError as exc:
            raise WorkerError(f"load-balancer worker is gone: {exc}") from exc

    def send_sockets(self, port: int, sockets: list[socket.socket]) -> None:
        """Hand ``port``'s listening sockets to the worker (it gets its own descriptors)."""
        assert self.process.pid is not None
        try:
            self.conn.send((_SOCKETS, port, len(sockets)))
            for sock in sockets:
                reduction.send_handle(self.conn, sock.fileno(), self.process.pid)
        except OSError as exc:
            raise WorkerError(f"load-balancer worker is gone: {exc}") from exc
        self.ports.add(port)

    def receive(self, timeout: float) -> Any:
        """The answer to the last message sent; raises what the worker reported."""
        try:
            if not self.conn.poll(timeout):
                # Its answer, if it ever came, would be read as the next message's: a worker
                # that stalls is replaced (with the current table) instead.
                self.process.kill()
                raise WorkerError(f"load-balancer worker did not answer within {timeout:.0f} s")
            status, answer = self.conn.recv()
        except (EOFError, OSError) as exc:
            raise WorkerError(f"load-balancer worker is gone: {exc}") from exc
        if status == "listen":
            message_text, detail = answer
            raise ListenError(message_text, detail=tuple(detail))
        if status == "error":
            raise WorkerError(f"load-balancer worker failed: {answer}")
        return answer

    def alive(self) -> bool:
        return self.process.is_alive()

    def stop(self, timeout: float) -> None:
        self.conn.close()  # the worker sees EOF and closes its balancer
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)


class WorkerPool:
    """The built-in load balancer on ``workers`` processes (see the module docstring)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        workers: int = 2,
        timeouts: Timeouts | None = None,
        sockets: SocketSet | None = None,
        secrets_dir: Path | None = None,
        event_loop: str = "asyncio",
    ) -> None:
        """``sockets``: listening sockets to serve from (a predecessor's, handed over);
        by default the pool opens its own. ``secrets_dir``: where the TLS files a route
        names are (resolved here: the workers get paths). ``event_loop``: the workers'
        (see ``builtin.new_event_loop``)."""
        self.secrets_dir = secrets_dir
        self.event_loop = event_loop
        if workers < 1:
            raise ConfigError(f"load-balancer workers must be at least 1, not {workers}")
        self.host = host
        self.timeouts = timeouts or Timeouts()
        self._lock = threading.RLock()
        self._table = RoutingTable()
        self._closed = False
        self._sockets = sockets or SocketSet(host, workers)
        # Per-version totals of every worker, folded as if each worker's totals were a
        # backend: a replaced worker's last totals stay, its successor counts from zero.
        self.ledger = VersionLedger()
        self._stop_watching = threading.Event()
        self._workers = [_Worker(i, host, self.timeouts, event_loop) for i in range(workers)]
        # A dead worker's socket stays open (the pool holds it): its queue waits for the
        # replacement, which must come without waiting for a call.
        self._watcher = threading.Thread(target=self._watch, name="lb-worker-watch", daemon=True)
        self._watcher.start()

    @property
    def workers(self) -> int:
        return len(self._workers)

    @property
    def table(self) -> RoutingTable:
        """The table served now."""
        return self._table

    def serving(self) -> frozenset[str]:
        return serving_backends(self._table.routes.values())

    # ----------------------------------------------------------------- DataPlane

    def apply(self, table: RoutingTable) -> None:
        """Serve ``table`` on every worker; raises :class:`ListenError` like the
        in-process balancer (all other routes are applied anyway).

        The table goes to every worker before any answer is awaited, so the workers take
        it within a fraction of a millisecond of each other rather than one after the
        other (while they differ, a new backend serves on some workers only)."""
        check_table(table)  # before anything changes: a bad table changes nothing
        table = resolve_tls(table, self.secrets_dir)
        with self._lock:
            self._ensure_open()
            failures = self._open_sockets(table)
            self._table = table
            self._revive()
            answers = self._exchange_with_sockets(table)
            self.ledger.keep_routes(table.routes)
        gone = [a for a in answers if isinstance(a, WorkerError)]
        if gone:
            raise gone[0]
        if failures:
            raise ListenError(failures[0], detail=tuple(failures[1:]))
        refused = [a for a in answers if isinstance(a, ListenError)]
        if refused:
            raise refused[0]

    def figures(self, service: str) -> list[BackendFigures]:
        """Cumulative figures of every backend of ``service``, summed over the workers."""
        return merge_figures(self._ask_all((_FIGURES, service)))

    def version_figures(self, service: str) -> dict[str, VersionFigures]:
        """Per-version totals of ``service`` over every worker, ever (see the module
        docstring)."""
        with self._lock:
            answers = self._ask_all((_VERSIONS, service))
            parts: list[BackendFigures] = []
            present: dict[str, tuple[int, int]] = {}
            for worker, by_version in zip(self._workers, answers, strict=True):
                for version, figures in by_version.items():
                    parts.append(_as_backend(worker.index, figures))
                    backends, in_flight = present.get(version, (0, 0))
                    present[version] = (
                        max(backends, figures.backends),
                        in_flight + figures.in_flight,
                    )
            route = self._table.routes.get(service)
            weights = route.weights if route is not None else {}
            totals = self.ledger.versions(service, parts, weights)
        return {
            version: replace(
                figures,
                backends=present.get(version, (0, 0))[0],
                in_flight=present.get(version, (0, 0))[1],
            )
            for version, figures in totals.items()
        }

    def version_totals(self) -> dict[str, Any]:
        """Every route's per-version totals now, with the counting's epoch and start (see
        ``VersionLedger.to_json``): what a successor proxy takes over."""
        with self._lock:
            for service in self._table.routes:
                self.version_figures(service)
            return self.ledger.to_json()

    def backend_stats(self, service: str, backend_id: str) -> BackendStats | None:
        return BackendStats.total(self._ask_all((_STATS, service, backend_id)))

    def health(self) -> DataPlaneHealth:
        with self._lock:
            if self._closed:
                return DataPlaneHealth("builtin", False, "the load balancer is closed")
            dead = [w.index for w in self._workers if not w.alive()]
        if dead:
            return DataPlaneHealth(
                "builtin", False, f"load-balancer workers {dead} exited (being replaced)"
            )
        return DataPlaneHealth("builtin", True, since=self.ledger.since)

    def endpoints(self) -> dict[str, int]:
        """service -> port listened on by every worker right now."""
        seen = self._ask_all((_ENDPOINTS,))
        common = dict(seen[0])
        for other in seen[1:]:
            common = {k: v for k, v in common.items() if other.get(k) == v}
        return common

    def connections(self) -> int:
        """Client connections open now on every worker."""
        return sum(self._ask_all((_CONNECTIONS,)))

    def release(self) -> None:
        """Every worker stops taking connections, leaving the sockets' queues to a
        successor that holds the same sockets (see ``BuiltinLoadBalancer.release``)."""
        with self._lock:
            self._stop_watching.set()
            self._ask_all((_RELEASE,))

    def export_sockets(self) -> tuple[list[dict[str, int]], list[socket.socket]]:
        """Every listening socket, for a successor (see ``SocketSet.export``)."""
        with self._lock:
            return self._sockets.export()

    def close(self) -> None:
        """Stop every worker (their listeners and connections go with them)."""
        self._stop_watching.set()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for worker in self._workers:
                worker.stop(self.timeouts.apply)
            self._sockets.close()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- internals

    def _watch(self) -> None:
        while not self._stop_watching.wait(WATCH_EVERY):
            if all(worker.alive() for worker in self._workers):
                continue
            with self._lock:
                if self._closed or self._stop_watching.is_set():
                    return
                self._revive()

    def _open_sockets(self, table: RoutingTable) -> list[str]:
        """Close the sockets of ports that left the table (before the workers close
        theirs, so the last one to let go accepts what is queued), open new ones."""
        self._sockets.close_except(route.port for route in table.routes.values())
        failures: list[str] = []
        for route in table.routes.values():
            try:
                self._sockets.ensure(route.service, route.port)
            except ListenError as exc:
                failures.append(exc.message)
        return failures

    def _exchange_with_sockets(self, table: RoutingTable) -> list[Any]:
        """Send each worker the sockets it lacks, then the table; every answer."""
        wanted = {route.port for route in table.routes.values()} & self._sockets.ports()

        def hand_sockets(index: int, worker: _Worker) -> None:
            for port in sorted(wanted - worker.ports):
                worker.send_sockets(port, self._sockets.copy_of(port, index))
            worker.ports &= wanted

        return self._exchange((_APPLY, _to_wire(table)), before=hand_sockets)

    def _ask_all(self, message: tuple[Any, ...]) -> list[Any]:
        """Every worker's answer to ``message`` (dead workers replaced first)."""
        with self._lock:
            self._ensure_open()
            self._revive()
            answers = self._exchange(message)
        for answer in answers:
            if isinstance(answer, Exception):
                raise answer
        return answers

    def _exchange(
        self,
        message: tuple[Any, ...],
        before: Callable[[int, _Worker], None] | None = None,
    ) -> list[Any]:
        """Send ``message`` to every worker (after ``before(index, worker)``), then read
        every answer: a failure is put in its worker's place, after the others' answers
        were read (so none is left in a pipe to be taken for the answer to the next
        message). Call with the lock held."""
        answers: list[Any] = [None] * len(self._workers)
        sent: list[int] = []
        for index, worker in enumerate(self._workers):
            try:
                if before is not None:
                    before(index, worker)
                worker.send(message)
                sent.append(index)
            except WorkerError as exc:
                answers[index] = exc
        for index in sent:
            try:
                answers[index] = self._workers[index].receive(self.timeouts.apply)
            except (WorkerError, ListenError) as exc:
                answers[index] = exc
        return answers

    def _ensure_open(self) -> None:
        if self._closed:
            raise ConfigError("the load balancer is closed")

    def _revive(self) -> None:
        """Replace dead workers, giving each replacement its sockets and the current
        table. The dead worker's per-version totals stay in the pool's ledger."""
        for index, worker in enumerate(self._workers):
            if worker.alive():
                continue
            log.warning(
                "load-balancer worker %d exited (code %s); starting a new one",
                index,
                worker.process.exitcode,
            )
            worker.stop(1.0)
            # Its last reported totals stay in the ledger; its successor counts from zero.
            self.ledger.forget_backends(_of_worker(index))
            fresh = _Worker(index, self.host, self.timeouts, self.event_loop)
            self._workers[index] = fresh
            try:
                held = self._sockets.ports()
                for route in self._table.routes.values():
                    if route.port in held and route.port not in fresh.ports:
                        fresh.send_sockets(route.port, self._sockets.copy_of(route.port, index))
                fresh.ask((_APPLY, _to_wire(self._table)), self.timeouts.apply)
            except (ListenError, WorkerError) as exc:
                log.warning("new load-balancer worker %d: %s", index, exc.message)


def _of_worker(index: int) -> Callable[[str], bool]:
    """Whether a pool-ledger backend id (see :func:`_as_backend`) is worker ``index``'s."""
    prefix = f"{index}:"
    return lambda backend_id: backend_id.startswith(prefix)


def _as_backend(worker: int, figures: VersionFigures) -> BackendFigures:
    """One worker's totals of one version, shown to the pool ledger as a backend."""
    return BackendFigures(
        backend_id=f"{worker}:{figures.version}",
        version=figures.version,
        in_flight=figures.in_flight,
        requests=figures.requests,
        errors_5xx=figures.errors_5xx,
        connect_errors=figures.connect_errors,
        latency=figures.latency,
        latency_sum_ms=figures.latency_sum_ms,
    )


def merge_figures(parts: Iterable[list[BackendFigures]]) -> list[BackendFigures]:
    """Figures of the same backend from several workers, added up (order kept)."""
    merged: dict[str, BackendFigures] = {}
    for figures in parts:
        for fig in figures:
            seen = merged.get(fig.backend_id)
            if seen is None:
                merged[fig.backend_id] = fig
                continue
            merged[fig.backend_id] = added(seen, fig)
    return list(merged.values())
