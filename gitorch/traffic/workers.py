"""The built-in load balancer on several processes: one per core, like nginx's workers.

A Python process proxies on one core at most (the GIL), so one
:class:`~gitorch.traffic.builtin.BuiltinLoadBalancer` tops out at one core while HAProxy
uses them all. :class:`WorkerPool` runs ``n`` of them, each in its own process, all
listening on every route's port with ``SO_REUSEPORT``: the kernel spreads new client
connections over the workers, and each worker proxies its connections exactly as the
in-process balancer does (same code). The daemon process only coordinates, so the
reconciler's own work never delays a request either.

The pool is a :class:`~gitorch.traffic.table.DataPlane`:

* :meth:`WorkerPool.apply` sends the table to every worker and returns once each has
  applied it, so the "no new traffic to a draining backend once apply returns" promise
  holds for the pool as a whole;
* figures are read from every worker and added up per backend (counts, histograms and
  in-flight requests are sums);
* a worker that died (or stopped answering) is replaced and given the current table on
  the next call; workers exit by themselves when the coordinator's end of their pipe
  closes, so a daemon killed with SIGKILL leaves no worker behind, and they ignore SIGINT
  and SIGTERM sent to the daemon's whole process group (the daemon stops them in order).

Weights hold per worker (smooth weighted round robin in each), so shares are exact per
worker and within a request or two per cycle for the pool.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import signal
import threading
from collections.abc import Iterable
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from gitorch.errors import ConfigError
from gitorch.traffic.builtin import BuiltinLoadBalancer, ListenError, Timeouts, check_route
from gitorch.traffic.figures import BackendFigures, VersionFigures, by_version
from gitorch.traffic.table import BackendStats, Route, RoutingTable

log = logging.getLogger(__name__)

#: Message kinds a worker answers (see :func:`_worker_main`).
_APPLY, _FIGURES, _STATS, _ENDPOINTS, _CLOSE = "apply", "figures", "stats", "endpoints", "close"


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
    conn: multiprocessing.connection.Connection, host: str, timeouts: Timeouts
) -> None:
    """One worker: a reuse-port balancer serving what the coordinator sends, until the
    coordinator says close or its end of the pipe goes away."""
    # Ctrl-C in a terminal, `timeout`, and systemd's stop (KillMode=control-group) signal
    # the whole process group. The daemon decides when its workers stop: it finishes its
    # pass, stores its last figures (read from the workers), then closes their pipes. A
    # worker that died of the group's SIGTERM first would be replaced during the shutdown.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    lb = BuiltinLoadBalancer(host, timeouts=timeouts, reuse_port=True)
    try:
        while True:
            try:
                kind, *args = conn.recv()
            except (EOFError, OSError):
                return  # the coordinator is gone: so is this worker
            try:
                if kind == _APPLY:
                    lb.apply(_from_wire(args[0]))
                    answer: Any = None
                elif kind == _FIGURES:
                    answer = lb.figures(args[0])
                elif kind == _STATS:
                    answer = lb.backend_stats(args[0], args[1])
                elif kind == _ENDPOINTS:
                    answer = lb.endpoints()
                elif kind == _CLOSE:
                    conn.send(("ok", None))
                    return
                else:
                    raise ConfigError(f"unknown worker request {kind!r}")
                conn.send(("ok", answer))
            except ListenError as exc:
                conn.send(("listen", (exc.message, exc.detail, dict(exc.routes))))
            except Exception as exc:  # the coordinator re-raises it as a WorkerError
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        lb.close()


class _Worker:
    """The coordinator's handle on one worker process."""

    def __init__(self, index: int, host: str, timeouts: Timeouts) -> None:
        context = multiprocessing.get_context("spawn")  # never fork a threaded daemon
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=_worker_main,
            args=(child, host, timeouts),
            name=f"gitorch-lb-worker-{index}",
            daemon=True,
        )
        self.process.start()
        child.close()

    def ask(self, message: tuple[Any, ...], timeout: float) -> Any:
        """Send ``message`` and return the answer (see :meth:`receive`)."""
        self.send(message)
        return self.receive(timeout)

    def send(self, message: tuple[Any, ...]) -> None:
        try:
            self.conn.send(message)
        except OSError as exc:
            raise WorkerError(f"load-balancer worker is gone: {exc}") from exc

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
            message_text, detail, routes = answer
            raise ListenError(message_text, detail=tuple(detail), routes=routes)
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
        self, host: str = "127.0.0.1", *, workers: int = 2, timeouts: Timeouts | None = None
    ) -> None:
        if workers < 1:
            raise ConfigError(f"load-balancer workers must be at least 1, not {workers}")
        self.host = host
        self.timeouts = timeouts or Timeouts()
        self._lock = threading.Lock()
        self._table = RoutingTable()
        self._closed = False
        self._workers = [_Worker(i, host, self.timeouts) for i in range(workers)]

    # ----------------------------------------------------------------- DataPlane

    def apply(self, table: RoutingTable) -> None:
        """Serve ``table`` on every worker; raises :class:`ListenError` like the
        in-process balancer (all other routes are applied anyway).

        The table goes to every worker before any answer is awaited, so the workers take
        it within a fraction of a millisecond of each other rather than one after the
        other (while they differ, a new backend serves on some workers only)."""
        for route in table.routes.values():
            check_route(route)  # before anything changes: a bad table changes nothing
        _check_ports(table)
        with self._lock:
            self._table = table
            answers = self._exchange((_APPLY, _to_wire(table)))
        gone = [a for a in answers if isinstance(a, WorkerError)]
        if gone:
            raise gone[0]
        refused = [a for a in answers if isinstance(a, ListenError)]
        if refused:
            raise refused[0]

    def figures(self, service: str) -> list[BackendFigures]:
        """Cumulative figures of every backend of ``service``, summed over the workers."""
        return merge_figures(self._ask_all((_FIGURES, service)))

    def version_figures(self, service: str) -> dict[str, VersionFigures]:
        """Per-version figures of ``service`` (see ``BuiltinLoadBalancer.version_figures``)."""
        return by_version(self.figures(service))

    def backend_stats(self, service: str, backend_id: str) -> BackendStats | None:
        found = [s for s in self._ask_all((_STATS, service, backend_id)) if s is not None]
        if not found:
            return None
        return BackendStats(
            in_flight=sum(s.in_flight for s in found),
            requests=sum(s.requests for s in found),
            errors=sum(s.errors for s in found),
        )

    def endpoints(self) -> dict[str, int]:
        """service -> port listened on by every worker right now."""
        seen = self._ask_all((_ENDPOINTS,))
        common = dict(seen[0])
        for other in seen[1:]:
            common = {k: v for k, v in common.items() if other.get(k) == v}
        return common

    def close(self) -> None:
        """Stop every worker (their listeners and connections go with them)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for worker in self._workers:
                worker.stop(self.timeouts.apply)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- internals

    def _ask_all(self, message: tuple[Any, ...]) -> list[Any]:
        """Every worker's answer to ``message`` (dead workers replaced first)."""
        with self._lock:
            answers = self._exchange(message)
        for answer in answers:
            if isinstance(answer, Exception):
                raise answer
        return answers

    def _exchange(self, message: tuple[Any, ...]) -> list[Any]:
        """Send ``message`` to every worker, then read every answer: a failure is put in
        its worker's place, after the others' answers were read (so none is left in a pipe
        to be taken for the answer to the next message). Call with the lock held."""
        self._ensure_open()
        self._revive()
        answers: list[Any] = [None] * len(self._workers)
        sent: list[int] = []
        for index, worker in enumerate(self._workers):
            try:
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
        """Replace dead workers, giving each replacement the current table."""
        for index, worker in enumerate(self._workers):
            if worker.alive():
                continue
            log.warning(
                "load-balancer worker %d exited (code %s); starting a new one",
                index,
                worker.process.exitcode,
            )
            worker.stop(1.0)
            fresh = _Worker(index, self.host, self.timeouts)
            self._workers[index] = fresh
            try:
                fresh.ask((_APPLY, _to_wire(self._table)), self.timeouts.apply)
            except ListenError as exc:
                log.warning("new load-balancer worker %d: %s", index, exc.message)


def _check_ports(table: RoutingTable) -> None:
    """Two routes on one port: refused here, since reuse-port listeners would share it
    where the in-process balancer's second bind fails."""
    owner: dict[int, str] = {}
    for route in table.routes.values():
        other = owner.setdefault(route.port, route.service)
        if other != route.service:
            raise ListenError.of(
                {
                    route.service: f"service {route.service}: cannot listen on port "
                    f"{route.port}: service {other} already uses it"
                }
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
            merged[fig.backend_id] = replace(
                seen,
                in_flight=seen.in_flight + fig.in_flight,
                requests=seen.requests + fig.requests,
                errors_5xx=seen.errors_5xx + fig.errors_5xx,
                connect_errors=seen.connect_errors + fig.connect_errors,
                latency=_add(seen.latency, fig.latency),
                latency_sum_ms=seen.latency_sum_ms + fig.latency_sum_ms,
            )
    return list(merged.values())


def _add(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    if not a:
        return b
    if not b:
        return a
    return tuple(x + y for x, y in zip(a, b, strict=True))
