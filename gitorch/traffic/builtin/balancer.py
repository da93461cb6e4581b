"""The built-in load balancer: gitorch's own data plane (asyncio, proxying).

One asyncio event loop runs on its own daemon thread and serves every route of the
current :class:`~gitorch.traffic.table.RoutingTable`:

* ``tcp`` routes: L4, a backend per accepted connection, bytes spliced both ways;
* ``http`` routes: an HTTP/1.1 reverse proxy, a backend per *request*, keep-alive with
  clients and a small pool of keep-alive connections per backend; an ``Upgrade``
  request (WebSocket) becomes a spliced connection once the backend answers 101. The
  common request is served by callbacks (:class:`~.fast.FastClient`,
  :class:`~.backends.Upstream`: no coroutine or await per request); anything else goes
  on, on the same connection, on streams (:meth:`BuiltinLoadBalancer._serve_http`).

Which backend serves is decided by :mod:`gitorch.traffic.choice` (pure).
:meth:`BuiltinLoadBalancer.apply` runs on the loop thread and swaps the backend list of a
route in one step, so once it returns no new connection or request goes to a draining or
removed backend; requests in flight finish. A request whose backend fails before
answering is retried on another one when that is safe (see
:meth:`BuiltinLoadBalancer._proxy_request`), which is what makes rollouts lose nothing.

Listening sockets come from a :class:`~gitorch.traffic.listeners.ListenerSource`: bound
here (``gitorch apply``), or handed over by the coordinator of worker processes, which
keeps them open across a worker's death and a proxy's replacement.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import logging
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from gitorch.errors import ConfigError
from gitorch.traffic import _http
from gitorch.traffic.builtin.backends import (
    BackendState,
    PooledStream,
    ServiceState,
    TlsContexts,
    Upstream,
)
from gitorch.traffic.builtin.fast import FastClient
from gitorch.traffic.builtin.http1 import (
    REWRITTEN,
    Failure,
    RequestBody,
    answer,
    count_response,
    may_retry,
    partial_read,
    relay_response,
    splice,
    switch_protocols,
)
from gitorch.traffic.builtin.loops import new_event_loop
from gitorch.traffic.builtin.timing import (
    ACCEPT_BATCH,
    POOL_SIZE,
    RETIRE_GRACE,
    SWEEP,
    Deadline,
    Timeouts,
)
from gitorch.traffic.figures import (
    BackendFigures,
    VersionFigures,
)
from gitorch.traffic.ledger import VersionLedger
from gitorch.traffic.listeners import BACKLOG, Binding, ListenerSource
from gitorch.traffic.routes import ListenError, check_table, resolve_tls
from gitorch.traffic.table import (
    BackendStats,
    DataPlaneHealth,
    RoutingTable,
    serving_backends,
)

T = TypeVar("T")

log = logging.getLogger(__name__)


class BuiltinLoadBalancer:
    """The built-in :class:`~gitorch.traffic.table.DataPlane` (see the module docstring).

    Every method is thread-safe: the state lives on the loop thread and other threads
    reach it through :meth:`_call`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        timeouts: Timeouts | None = None,
        reuse_port: bool = False,
        listeners: ListenerSource | None = None,
        secrets_dir: Path | None = None,
        event_loop: str = "asyncio",
    ) -> None:
        """``listeners``: where routes' listening sockets come from (default: bound here,
        with SO_REUSEPORT when ``reuse_port``). ``secrets_dir``: where the TLS files a
        route names are (see :func:`~gitorch.traffic.routes.resolve_tls`).
        ``event_loop``: ``asyncio`` or ``uvloop`` (libuv; see :func:`new_event_loop`)."""
        self.host = host
        self.timeouts = timeouts or Timeouts()
        self.listeners = listeners or Binding(host, reuse_port=reuse_port)
        self.secrets_dir = secrets_dir
        self._tls = TlsContexts()
        self._services: dict[str, ServiceState] = {}
        # Routes removed while requests were still in flight on them: kept until those end,
        # so backend_stats() still counts them (the reconciler waits for zero before it
        # stops a replica of a pruned service; None would let it stop one mid-request).
        self._retiring: list[ServiceState] = []
        self._clients: set[asyncio.Task[Any]] = set()
        self.deadlines: set[Deadline | FastClient] = set()
        self.ledger = VersionLedger()
        self.loop = new_event_loop(event_loop)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"gitorch-lb-{host}", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- thread plumbing

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        chores = [
            self.loop.create_task(self._reap_idle()),
            self.loop.create_task(self._sweep_deadlines()),
        ]
        try:
            self.loop.run_forever()
        finally:
            for chore in chores:
                chore.cancel()
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(asyncio.gather(*chores, return_exceptions=True))
            self.loop.close()

    def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the loop thread and return its result."""
        if self._closed:
            raise ConfigError("the load balancer is closed")

        async def run() -> T:
            return fn()

        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(run(), self.loop)
        return future.result(timeout=self.timeouts.apply)

    # ----------------------------------------------------------------- DataPlane

    def apply(self, table: RoutingTable) -> None:
        """Serve ``table``: open/close listeners, swap backend lists.

        Listeners of routes that stay on the same port are never reopened (a route
        switching between http and tcp keeps its socket). Raises :class:`ListenError`
        naming every route whose port could not be opened; all other routes are applied
        anyway (and a later apply retries the failed ones). Raises
        :class:`~gitorch.traffic.routes.RouteInvalid` (and changes nothing) when a
        route's weights or rules cannot be served.
        """
        if self._closed:
            raise ConfigError("the load balancer is closed")
        check_table(table)  # before anything changes: a bad table changes nothing
        table = resolve_tls(table, self.secrets_dir)
        future = asyncio.run_coroutine_threadsafe(self._apply(table), self.loop)
        failures = future.result(timeout=self.timeouts.apply)
        if failures:
            raise ListenError(failures[0], detail=tuple(failures[1:]))

    def backend_stats(self, service: str, backend_id: str) -> BackendStats | None:
        """``backend_id``'s in-flight requests and counts, None when it is not served.

        For a route that left the table, every client connection still open on it counts
        as in flight on each of its backends: one may still send a request (see
        :meth:`ServiceState.retire`), so the reconciler waits for it before stopping one."""

        def read() -> BackendStats | None:
            self._forget_retired()
            serving = self._services.get(service)
            for svc in (serving, *self._retiring):
                if svc is None or svc.route.service != service:
                    continue
                state = svc.backends.get(backend_id)
                if state is not None:
                    in_flight = state.in_flight
                    if svc.closed:
                        in_flight = max(in_flight, svc.connections)
                    return BackendStats(in_flight, state.requests, state.errors)
            return None

        return self._call(read)

    def figures(self, service: str) -> list[BackendFigures]:
        """Cumulative figures of every backend known for ``service`` (empty if unknown)."""

        def read() -> list[BackendFigures]:
            svc = self._services.get(service)
            return [] if svc is None else [s.figures() for s in svc.backends.values()]

        return self._call(read)

    def version_figures(self, service: str) -> dict[str, VersionFigures]:
        """Per-version totals of ``service`` since this balancer started (requests, 5xx,
        success rate, p50/p90/p99, open connections), counting backends that left the
        table (:class:`~gitorch.traffic.ledger.VersionLedger`); an analysis compares two
        of these with :meth:`VersionFigures.since`. Empty when the service is unknown."""

        def read() -> dict[str, VersionFigures]:
            svc = self._services.get(service)
            if svc is None:
                return {}
            current = [s.figures() for s in svc.backends.values()]
            return self.ledger.versions(service, current, svc.route.weights)

        return self._call(read)

    def serving(self) -> frozenset[str]:
        return self._call(lambda: serving_backends(s.route for s in self._services.values()))

    def health(self) -> DataPlaneHealth:
        if self._closed or not self._thread.is_alive():
            return DataPlaneHealth("builtin", False, "the load balancer is closed")
        return DataPlaneHealth("builtin", True, since=self.ledger.since)

    def endpoints(self) -> dict[str, int]:
        """service -> port actually listened on right now."""

        def read() -> dict[str, int]:
            return {
                name: svc.listening
                for name, svc in self._services.items()
                if svc.listening is not None
            }

        return self._call(read)

    def connections(self) -> int:
        """Client connections open now (on every route, removed ones included)."""

        def read() -> int:
            self._forget_retired()
            served = sum(svc.connections for svc in self._services.values())
            return served + sum(svc.connections for svc in self._retiring)

        return self._call(read)

    def release(self) -> None:
        """Stop taking connections on every route, without closing what the listening
        sockets have queued (a successor process holds the same sockets and serves
        those); connections already open finish as on a removed route (see
        :meth:`ServiceState.retire`). Used when a proxy hands over to its successor."""

        def run() -> None:
            for name, svc in list(self._services.items()):
                self._stop_listening(svc, adopt=False)
                svc.retire()
                del self._services[name]
                if svc.connections:
                    self._retiring.append(svc)

        self._call(run)

    def close(self) -> None:
        """Stop every listener and connection, then the loop thread."""
        if self._closed:
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop)
        try:
            future.result(timeout=self.timeouts.apply)
        finally:
            self._closed = True
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=self.timeouts.apply)

    def __enter__(self) -> BuiltinLoadBalancer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- loop side

    async def _apply(self, table: RoutingTable) -> list[str]:
        # Close what goes (or moves) first, so two routes may swap ports in one table.
        for name, svc in list(self._services.items()):
            route = table.routes.get(name)
            if route is None:
                self._stop_listening(svc)
                svc.retire()
                self.ledger.depart(name, [s.figures() for s in svc.backends.values()])
                del self._services[name]
                self._forget_retired()
                if svc.connections:  # requests in flight, or on their way
                    self._retiring.append(svc)
            elif svc.listening != route.port:
                self._stop_listening(svc)
        failures: list[str] = []
        for name, route in table.routes.items():
            served = self._services.get(name)
            if served is None:
                served = self._services[name] = ServiceState(route)
            left = served.set_route(route)
            for state in served.backends.values():
                if not state.accepting:
                    # A draining backend must be able to exit: idle connections go now,
                    # busy ones are closed when their request ends (see _release).
                    state.close_idle()
                if state.backend.unreachable and state.busy:
                    # Its node is cut off: nothing in flight there will ever end by
                    # itself. Give up now; idempotent requests go to another backend.
                    state.abandon_busy()
            for state in left:
                self.forget_if_gone(served, state)
            try:
                served.tls = self._tls.context(route)
            except ListenError as exc:
                failures.append(exc.message)
                self._stop_listening(served)  # never serve it in clear text instead
                continue
            if served.listening is None:
                try:
                    self._listen(served)
                except ListenError as exc:
                    failures.append(exc.message)
        self.ledger.keep_routes(table.routes)
        self._tls.keep(table.routes)
        return failures

    def _forget_retired(self) -> None:
        """Drop removed routes whose last client connection has ended."""
        self._retiring = [svc for svc in self._retiring if svc.connections]

    def _listen(self, svc: ServiceState) -> None:
        """Take ``svc``'s listening sockets and accept on them.

        The proxy accepts itself rather than through ``asyncio.start_server``: on
        Python 3.11, a connection asyncio had accepted when its server closed in the same
        loop turn is never served nor closed (``Server._attach`` asserts on the closed
        server inside the accept task), so the client hangs. Here every accepted
        connection is served, and closing a listener accepts what is queued first."""
        route = svc.route
        listeners = self.listeners.take(route.service, route.port)
        for sock in listeners:
            self.loop.add_reader(sock.fileno(), self._accept, svc, sock)
        svc.listeners = listeners
        svc.listening = route.port

    def _accept(
        self, svc: ServiceState, listener: socket.socket, limit: int = ACCEPT_BATCH
    ) -> None:
        """Accept up to ``limit`` queued connections and serve each (loop thread)."""
        for _ in range(limit):
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue  # the client gave up while queued
                # Out of descriptors or memory: the rest stays queued for the next turn.
                log.warning("load balancer: accept on %s failed: %s", svc.route.service, exc)
                return
            conn.setblocking(False)
            self._adopt(svc, conn)

    def _adopt(self, svc: ServiceState, conn: socket.socket) -> None:
        """Serve an accepted client connection: by callbacks (:class:`FastClient`) on an
        http route, on a task of its own on a tcp route."""
        svc.connections += 1  # counted at once: a drain must see it before it runs
        if svc.route.protocol == "http":
            self.track(self.loop.create_task(self._open_fast(svc, conn)))
            return

        async def serve() -> None:
            try:
                try:
                    reader, writer = await self._open_client(conn, svc.tls)
                except (OSError, asyncio.CancelledError):  # cancelled: the balancer closes
                    conn.close()
                    raise
                await self._on_client(svc, reader, writer)
            except OSError:
                pass  # the client went away before it could be served
            finally:
                svc.connections -= 1

        self.track(self.loop.create_task(serve()))

    def track(self, task: asyncio.Task[Any]) -> None:
        """Keep ``task`` until it ends (a shutdown cancels what is left)."""
        self._clients.add(task)
        task.add_done_callback(self._clients.discard)

    async def _open_fast(self, svc: ServiceState, conn: socket.socket) -> None:
        """Serve an accepted connection of an http route by callbacks (after the TLS
        handshake when the route terminates TLS)."""
        client = FastClient(self, svc)
        try:
            if svc.tls is None:
                await self.loop.connect_accepted_socket(lambda: client, sock=conn)
            else:
                await self.loop.connect_accepted_socket(
                    lambda: client,
                    sock=conn,
                    ssl=svc.tls,
                    ssl_handshake_timeout=self.timeouts.connect * 5,
                )
        except OSError:
            pass  # the client went away (or failed its TLS handshake) before it was served
        finally:  # also when cancelled: the balancer closes
            if not client.made:
                conn.close()
                svc.connections -= 1

    def serve_handed(
        self,
        svc: ServiceState,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        resume: Callable[[Deadline], Awaitable[bool]] | None = None,
    ) -> None:
        """Go on serving a connection the fast path handed over, on streams (its count
        in ``svc.connections`` comes with it); ``resume`` first finishes the request in
        flight."""

        async def serve() -> None:
            try:
                await self._on_client(svc, reader, writer, resume)
            finally:
                svc.connections -= 1

        self.track(self.loop.create_task(serve()))

    async def _open_client(
        self, conn: socket.socket, tls: ssl.SSLContext | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Streams on an accepted connection (after the TLS handshake when ``tls``)."""
        if tls is None:
            return await asyncio.open_connection(sock=conn, limit=_http.MAX_HEAD)
        reader = asyncio.StreamReader(limit=_http.MAX_HEAD, loop=self.loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=self.loop)
        transport, _ = await self.loop.connect_accepted_socket(
            lambda: protocol, sock=conn, ssl=tls, ssl_handshake_timeout=self.timeouts.connect * 5
        )
        return reader, asyncio.StreamWriter(transport, protocol, reader, self.loop)

    def _stop_listening(self, svc: ServiceState, adopt: bool = True) -> None:
        """Close ``svc``'s listeners. Connections the kernel completed that were not
        accepted yet would be reset by the close (a failed request for a client that had
        connected): with ``adopt``, they are accepted and served first. This matters most
        for workers sharing a port, where the clients of the first worker to close
        reconnect to one that is about to."""
        for listener in svc.listeners:
            self.loop.remove_reader(listener.fileno())
            if adopt:
                self._accept(svc, listener, limit=BACKLOG)
            listener.close()
        svc.listeners = []
        svc.listening = None

    async def _shutdown(self) -> None:
        for svc in self._services.values():
            self._stop_listening(svc, adopt=False)
            svc.closed = True
            for state in svc.backends.values():
                state.close_idle()
        self._services.clear()
        for timed in list(self.deadlines):
            if isinstance(timed, FastClient):
                timed.shut()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)

    async def _reap_idle(self) -> None:
        """Close pooled backend connections that idled too long or were closed by the
        backend (so a pool never holds a stopped backend's socket)."""
        while True:
            await asyncio.sleep(1.0)
            limit = time.monotonic() - self.timeouts.pool_idle
            for svc in self._services.values():
                for state in svc.backends.values():
                    keep = [c for c in state.idle if c.usable() and c.idle_since > limit]
                    for conn in state.idle:
                        if conn not in keep:
                            conn.close()
                    state.idle = keep
                    fast = [u for u in state.fast_idle if u.usable() and u.idle_since > limit]
                    for upstream in state.fast_idle:
                        if upstream not in fast:
                            upstream.close()
                    state.fast_idle = fast

    async def _sweep_deadlines(self) -> None:
        """Time out client handlers whose :class:`Deadline` passed."""
        while True:
            await asyncio.sleep(SWEEP)
            now = time.monotonic()
            for deadline in list(self.deadlines):
                deadline.expire_if_due(now)

    async def _on_client(
        self,
        svc: ServiceState,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        resume: Callable[[Deadline], Awaitable[bool]] | None = None,
    ) -> None:
        # Every client handler ends here: whatever happens, the loop survives.
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        deadline = Deadline(task)
        try:
            if svc.route.protocol == "tcp":
                await self._serve_tcp(svc, reader, writer)
            else:
                self.deadlines.add(deadline)
                if resume is None or await resume(deadline):
                    await self._serve_http(svc, reader, writer, deadline)
        except (asyncio.CancelledError, ConnectionError, TimeoutError, _http.PeerClosed):
            pass
        except Exception:
            log.exception("load balancer: client connection on %s failed", svc.route.service)
        finally:
            writer.close()
            self.deadlines.discard(deadline)
            self._clients.discard(task)

    # ----------------------------------------------------------------- tcp

    async def connect_upstream(self, state: BackendState) -> Upstream | None:
        """A fresh fast-path connection to ``state``'s backend, or None (as :meth:`_connect`)."""
        backend = state.backend
        try:
            async with asyncio.timeout(self.timeouts.connect):
                _, upstream = await self.loop.create_connection(
                    Upstream, backend.host, backend.port
                )
        except (OSError, TimeoutError):
            state.connect_failed()
            return None
        return upstream

    async def resume_response(
        self,
        svc: ServiceState,
        state: BackendState,
        head: _http.RequestHead,
        conn: PooledStream,
        response: _http.ResponseHead | None,
        started: float,
        client_keep: bool,
        extra: _http.Headers,
        writer: asyncio.StreamWriter,
        deadline: Deadline,
    ) -> bool:
        """Finish on streams a request the fast path began (its response is not one it
        relays: streamed, chunked, or a head it leaves to the stream reader); True when
        the client connection may carry another request."""
        head_only = head.method == "HEAD"
        counted = response is not None  # the fast path counted it when it read the head
        try:
            try:
                with deadline.limit(self.timeouts.response):
                    while response is None or response.status < 200:
                        response = await _http.read_response_head(conn.reader)
            except TimeoutError:
                conn.close()
                count_response(state, 504, started)
                text = "gateway timeout: the backend did not answer"
                return await answer(writer, 504, text, keep=False, head_only=head_only)
            except (_http.PeerClosed, ConnectionError, OSError, _http.BadMessage):
                # Not retried: bytes of an answer came already (a head the fast path
                # could not read alone), so the backend did see the request.
                conn.close()
                state.errors += 1
                text = "bad gateway: the backend failed before answering"
                keep = await answer(writer, 502, text, keep=client_keep, head_only=head_only)
                return keep and not svc.closed
            if not counted:
                count_response(state, response.status, started)
            keep = await self._relay(state, conn, head, response, writer, client_keep, extra)
            return keep and not svc.closed
        finally:
            state.busy.discard(conn)
            state.in_flight -= 1
            self.forget_if_gone(svc, state)

    async def _connect(self, state: BackendState) -> PooledStream | None:
        """A fresh connection to ``state``'s backend, or None (counted as an error)."""
        backend = state.backend
        try:
            async with asyncio.timeout(self.timeouts.connect):
                reader, writer = await asyncio.open_connection(
                    backend.host, backend.port, limit=_http.MAX_HEAD
                )
        except (OSError, TimeoutError):
            state.connect_failed()
            return None
        return PooledStream(reader, writer)

    async def _serve_tcp(
        self, svc: ServiceState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        tried: set[str] = set()
        version, _ = svc.choose_version(None)
        for _ in range(svc.attempts()):
            state = svc.pick(tried, version, now=time.monotonic())
            if state is None:
                return
            tried.add(state.backend.id)
            state.in_flight += 1
            try:
                conn = await self._connect(state)
                if conn is None:
                    continue
                state.busy.add(conn)
                try:
                    await splice(reader, writer, conn.reader, conn.writer)
                finally:
                    state.busy.discard(conn)
                    conn.close()
                    state.requests += 1
                return
            finally:
                state.in_flight -= 1
                self.forget_if_gone(svc, state)

    def forget_if_gone(self, svc: ServiceState, state: BackendState) -> None:
        """Forget a backend that left the table once idle (its last figures go to the
        ledger). A retired route keeps its backends until its last connection ends."""
        gone = state.removed and state.in_flight == 0 and not svc.closed
        if gone and svc.backends.get(state.backend.id) is state:
            del svc.backends[state.backend.id]
            if self._services.get(svc.route.service) is svc:
                self.ledger.depart(svc.route.service, [state.figures()])

    # ----------------------------------------------------------------- http

    async def _serve_http(
        self,
        svc: ServiceState,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        deadline: Deadline,
    ) -> None:
        peer = writer.get_extra_info("peername")
        client_ip = peer[0] if isinstance(peer, tuple) else ""
        waiters = svc.head_waiters
        while True:
            # A removed route still answers a request already on its way (see retire).
            idle = RETIRE_GRACE if svc.closed else self.timeouts.client_idle
            waiters.add(deadline)
            try:
                with deadline.limit(idle):
                    head = await _http.read_request_head(reader)
            except _http.PeerClosed as exc:
                if exc.partial:
                    await answer(writer, 400, "incomplete request head")
                return
            except _http.BadMessage as exc:
                await answer(writer, 400, f"bad request: {exc}")
                return
            finally:
                waiters.discard(deadline)
            keep = await self._proxy_request(svc, head, reader, writer, client_ip, deadline)
            if not keep:
                return

    async def _proxy_request(
        self,
        svc: ServiceState,
        head: _http.RequestHead,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client_ip: str,
        deadline: Deadline,
    ) -> bool:
        """Forward one request; True when the client connection may carry another.

        Retries: an attempt that fails before a whole response head came (so nothing was
        sent to the client) is retried on another backend when the request can be sent
        again (its body was buffered) and either the connection was a reused pooled one
        (the request most likely never reached the backend: a keep-alive race) or the
        connection could not be made, or the method is idempotent. At most max(2, active
        backends) attempts.
        """
        conn_tokens = head.tokens("connection")
        client_keep = not svc.closed and (
            "keep-alive" in conn_tokens if head.version < (1, 1) else "close" not in conn_tokens
        )
        try:
            kind, length = head.framing()
        except _http.BadMessage as exc:
            await answer(writer, 400, f"bad request: {exc}")
            return False
        if kind != "none" and "100-continue" in head.tokens("expect"):
            # The proxy answers the expectation itself: the body is read here first.
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = RequestBody(kind, length)
        try:
            if kind != "none":
                with deadline.limit(self.timeouts.client_idle):
                    await body.read_prefix(reader)
        except _http.BadMessage as exc:
            await answer(writer, 400, f"bad request body: {exc}")
            return False

        # An Upgrade (WebSocket) goes on to the backend; its 101 turns the connection
        # into a spliced one (RFC 9110 7.8). Only without a body, and from HTTP/1.1.
        upgrade = None
        if "upgrade" in conn_tokens and kind == "none" and head.version >= (1, 1):
            upgrade = head.first("upgrade")
        request_head = self.backend_request(head, body, client_ip, svc.tls is not None, upgrade)
        is_head = head.method == "HEAD"
        tried: set[str] = set()
        failure = Failure.NO_BACKEND
        version, cookie_version = svc.choose_version(head)
        extra: _http.Headers = []
        if cookie_version is not None:
            extra.append(("Set-Cookie", f"{svc.cookie_name}={cookie_version}; Path=/"))
        for _ in range(svc.attempts()):
            state = svc.pick(tried, version, now=time.monotonic())
            if state is None:
                break
            tried.add(state.backend.id)
            state.in_flight += 1
            try:
                # After a failure, only fresh connections: the pool may hold more dead ones.
                retrying = failure is not Failure.NO_BACKEND
                outcome = await self._attempt(
                    state,
                    head,
                    request_head,
                    body,
                    reader,
                    writer,
                    client_keep,
                    retrying or upgrade is not None,
                    extra,
                    deadline,
                    upgrade,
                )
            finally:
                state.in_flight -= 1
                self.forget_if_gone(svc, state)
            if isinstance(outcome, bool):
                return outcome and not svc.closed
            failure = outcome
            if not may_retry(failure, head.method, body):
                break
        if body.consumed_partly:
            client_keep = False  # the rest of the client's body may still be on the wire
        if failure in (Failure.NO_BACKEND, Failure.NOT_CONNECTED):
            status, text = 503, f"no backend available for {svc.route.service}"
        else:
            status, text = 502, "bad gateway: the backend failed before answering"
        keep = await answer(writer, status, text, keep=client_keep, head_only=is_head)
        return keep and not svc.closed

    def backend_request(
        self,
        head: _http.RequestHead,
        body: RequestBody,
        client_ip: str,
        tls: bool,
        upgrade: str | None = None,
    ) -> bytes:
        """The request head sent to backends: the client's end-to-end headers as they
        came, then the forwarding and framing headers the proxy writes itself."""
        special = head.special
        forwarded = special.get("x-forwarded-for")
        forwarded_for = forwarded[0] if forwarded else None
        parts = [
            f"{head.method} {head.target} HTTP/1.1\r\n",
            head.forward_block(REWRITTEN),
            f"X-Forwarded-For: {forwarded_for}, {client_ip}\r\n"
            if forwarded_for
            else f"X-Forwarded-For: {client_ip}\r\n",
            "X-Forwarded-Proto: https\r\n" if tls else "X-Forwarded-Proto: http\r\n",
        ]
        hosts = special.get("host")
        if hosts:
            if "x-forwarded-host" not in special:
                parts.append(f"X-Forwarded-Host: {hosts[0]}\r\n")
        else:
            # HTTP/1.0 clients may omit Host; HTTP/1.1 backends require one.
            parts.append(f"Host: {self.host}\r\n")
        for name, value in body.framing_headers(head.method):
            parts.append(f"{name}: {value}\r\n")
        if upgrade is not None:
            parts.append(f"Connection: Upgrade\r\nUpgrade: {upgrade}\r\n")
        parts.append("\r\n")
        return "".join(parts).encode("latin-1")

    @staticmethod
    def _pooled(state: BackendState) -> PooledStream | None:
        """An idle keep-alive connection to ``state``'s backend that still looks open."""
        while state.idle:
            conn = state.idle.pop()
            if conn.usable():
                return conn
            conn.close()
        return None

    def _release(self, state: BackendState, conn: PooledStream, reusable: bool) -> None:
        if reusable and state.accepting and conn.usable() and len(state.idle) < POOL_SIZE:
            conn.idle_since = time.monotonic()
            state.idle.append(conn)
        else:
            conn.close()

    async def _attempt(
        self,
        state: BackendState,
        head: _http.RequestHead,
        request_head: bytes,
        body: RequestBody,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client_keep: bool,
        fresh_only: bool,
        extra: _http.Headers,
        deadline: Deadline,
        upgrade: str | None = None,
    ) -> bool | Failure:
        """One try on one backend: the client keep-alive verdict when a response was
        relayed, else why nothing reached the client."""
        started = time.monotonic()
        # A streamed body cannot be replayed: never risk it on a pooled connection that
        # the backend may be closing right now.
        conn = None if fresh_only or not body.complete else self._pooled(state)
        reused = conn is not None
        if conn is None:
            conn = await self._connect(state)
            if conn is None:
                return Failure.NOT_CONNECTED
        state.busy.add(conn)  # so that an unreachable backend's requests can be given up
        try:
            # The common case inline (one coroutine less per request): a whole small body.
            try:
                if body.complete:
                    conn.writer.write(request_head + body.prefix)  # one segment, one syscall
                    if conn.writer.transport.get_write_buffer_size():
                        await conn.writer.drain()
                else:
                    await body.send_streamed(request_head, reader, conn.writer)
                with deadline.limit(self.timeouts.response):
                    response = await _http.read_response_head(conn.reader)
                    while response.status < 200 and not (upgrade and response.status == 101):
                        # 1xx interim answers are skipped: the proxy answered Expect itself,
                        # and 101 only comes to a request that asked to upgrade.
                        response = await _http.read_response_head(conn.reader)
            except TimeoutError:
                conn.close()
                count_response(state, 504, started)
                return await answer(
                    writer,
                    504,
                    "gateway timeout: the backend did not answer",
                    keep=False,
                    head_only=head.method == "HEAD",
                )
            except (_http.PeerClosed, ConnectionError, OSError, _http.BadMessage) as exc:
                conn.close()
                if conn.abandoned:
                    state.errors += 1
                    return Failure.ABANDONED
                if isinstance(exc, _http.PeerClosed | _http.BadMessage) and partial_read(exc):
                    state.errors += 1
                    return Failure.PARTIAL_ANSWER
                if reused:
                    return Failure.POOLED_DEAD  # a keep-alive race, not the backend's fault
                state.errors += 1
                return Failure.SENT_NO_ANSWER
            except BaseException:
                conn.close()
                raise
            count_response(state, response.status, started)
            if response.status == 101:
                try:
                    await switch_protocols(response, upgrade or "", reader, writer, conn, extra)
                finally:
                    conn.close()
                return False
            return await self._relay(state, conn, head, response, writer, client_keep, extra)
        finally:
            state.busy.discard(conn)

    async def _relay(
        self,
        state: BackendState,
        conn: PooledStream,
        head: _http.RequestHead,
        response: _http.ResponseHead,
        writer: asyncio.StreamWriter,
        client_keep: bool,
        extra: _http.Headers,
    ) -> bool:
        """Relay a response (:func:`relay_response`), then pool or close ``conn``;
        returns whether the client connection may carry another request."""
        try:
            keep, reusable = await relay_response(
                head, response, conn.reader, writer, client_keep, extra
            )
        except BaseException:
            conn.close()
            raise
        self._release(state, conn, reusable)
        return keep
