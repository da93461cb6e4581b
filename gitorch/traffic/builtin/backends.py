"""The built-in balancer's side of the backends: the state of each backend (figures, pools
of idle connections, cooldown), each route's chooser, the connections themselves (on
streams, or driven by callbacks for the fast path) and the routes' TLS contexts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, cast

from gitorch.traffic import _http
from gitorch.traffic.builtin.timing import COOLDOWN, RETIRE_GRACE
from gitorch.traffic.choice import Candidate, Chooser
from gitorch.traffic.figures import (
    BackendFigures,
    empty_histogram,
)
from gitorch.traffic.routes import ListenError
from gitorch.traffic.table import (
    Backend,
    Route,
)


@dataclass(eq=False)
class PooledStream:
    """One connection to a backend (pooled when it may carry another request)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0
    abandoned: bool = False  # given up: its backend became unreachable mid-request

    def usable(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()

    def abandon(self) -> None:
        """Give up on this connection now (its peer is cut off: no FIN or RST will come)."""
        self.abandoned = True
        with contextlib.suppress(Exception):
            self.writer.transport.abort()


class UpstreamOwner(Protocol):
    """The request an :class:`Upstream` carries now (a fast-path client): told of the
    backend's bytes and of the connection's end."""

    def on_backend_data(self, upstream: Upstream) -> None: ...

    def on_backend_lost(self, upstream: Upstream) -> None: ...


class HeadWaiter(Protocol):
    """A client connection waiting for its next request head (a deadline of the streams
    path, or a fast-path client): a retired route brings its deadline forward."""

    def shorten(self, at: float) -> None: ...


class Upstream(asyncio.Protocol):
    """A connection to a backend driven by callbacks, for :class:`FastClient` (the fast
    path); pooled between requests as a :class:`PooledStream` is."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""  # bytes: an answer mostly comes in one piece, sliced, not copied
        self.client: UpstreamOwner | None = None  # whose request it carries now
        self.lost = False
        self.idle_since = 0.0
        self.abandoned = False  # given up: its backend became unreachable mid-request

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:
            self.close()  # an idle backend connection has nothing to say: unusable now
            return
        self.buffer = self.buffer + data if self.buffer else data
        client.on_backend_data(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.client is not None:
            self.client.on_backend_lost(self)

    def usable(self) -> bool:
        return not self.lost and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abandon(self) -> None:
        """Give up on this connection now (its peer is cut off: no FIN or RST will come)."""
        self.abandoned = True
        if self.transport is not None:
            self.transport.abort()

    def to_streams(self, loop: asyncio.AbstractEventLoop) -> PooledStream:
        """The same connection as streams (what was read and not consumed comes first)."""
        assert self.transport is not None
        reader, writer = streams_on(self.transport, self.buffer, False, loop)
        self.buffer = b""
        return PooledStream(reader, writer)


def streams_on(
    transport: asyncio.Transport, buffered: bytes, eof: bool, loop: asyncio.AbstractEventLoop
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Streams on a connection a protocol of the fast path served so far: its transport
    gets a :class:`asyncio.StreamReaderProtocol`, and the bytes read and not consumed
    (and an end of file) go to the reader first."""
    reader = asyncio.StreamReader(limit=_http.MAX_HEAD, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    if buffered:
        reader.feed_data(buffered)
    if eof:
        reader.feed_eof()
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


class TlsContexts:
    """The TLS server contexts of the routes that terminate TLS, loaded once per set of
    files and loaded again when a file changes (a renewed certificate)."""

    def __init__(self) -> None:
        self._loaded: dict[str, tuple[tuple[object, ...], ssl.SSLContext]] = {}

    def context(self, route: Route) -> ssl.SSLContext | None:
        """The context for ``route`` (None without TLS); :class:`ListenError` when its
        files cannot be loaded."""
        if route.tls is None:
            self._loaded.pop(route.service, None)
            return None
        files = (route.tls.cert_file, route.tls.key_file)
        try:
            key = (*files, *(os.stat(f).st_mtime_ns for f in files))
        except OSError as exc:
            raise ListenError(
                f"service {route.service}: cannot read TLS file {exc.filename}: {exc.strerror}"
            ) from exc
        known = self._loaded.get(route.service)
        if known is not None and known[0] == key:
            return known[1]
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(*files)
        except (OSError, ssl.SSLError) as exc:
            raise ListenError(
                f"service {route.service}: cannot load its TLS certificate and key: {exc}"
            ) from exc
        self._loaded[route.service] = (key, context)
        return context

    def keep(self, services: Iterable[str]) -> None:
        wanted = set(services)
        for name in [n for n in self._loaded if n not in wanted]:
            del self._loaded[name]


class BackendState(Candidate):
    """What the proxy knows of one backend of one service (lives on the loop thread)."""

    __slots__ = (
        "in_flight",
        "requests",
        "errors",
        "errors_5xx",
        "connect_errors",
        "latency",
        "latency_sum_ms",
        "idle",
        "fast_idle",
        "busy",
    )

    def __init__(self, backend: Backend) -> None:
        super().__init__(backend)
        self.in_flight = 0
        self.requests = 0
        self.errors = 0  # 5xx answers + failed connections (BackendStats.errors)
        self.errors_5xx = 0
        self.connect_errors = 0
        self.latency = empty_histogram()
        self.latency_sum_ms = 0.0
        self.idle: list[PooledStream] = []
        self.fast_idle: list[Upstream] = []  # pooled connections of the fast path
        # Connections carrying a request (or a tcp stream).
        self.busy: set[PooledStream | Upstream] = set()

    def connect_failed(self) -> None:
        """A connection to this backend failed (or was lost before a request went on it):
        counted, and the backend is passed over for :data:`COOLDOWN` seconds."""
        self.errors += 1
        self.connect_errors += 1
        self.down_until = time.monotonic() + COOLDOWN

    def close_idle(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()
        for upstream in self.fast_idle:
            upstream.close()
        self.fast_idle.clear()

    def abandon_busy(self) -> None:
        """The backend is unreachable: its connections in use will never be answered."""
        for conn in list(self.busy):
            conn.abandon()

    def figures(self) -> BackendFigures:
        return BackendFigures(
            backend_id=self.backend.id,
            version=self.backend.version,
            in_flight=self.in_flight,
            requests=self.requests,
            errors_5xx=self.errors_5xx,
            connect_errors=self.connect_errors,
            latency=tuple(self.latency),
            latency_sum_ms=self.latency_sum_ms,
        )


class ServiceState(Chooser[BackendState]):
    """One route being served: its backends (see :class:`Chooser`) and its listener."""

    def __init__(self, route: Route) -> None:
        super().__init__(route, BackendState)
        self.listeners: list[socket.socket] = []  # open listening sockets
        self.listening: int | None = None  # port of the open listeners
        self.closed = False
        self.connections = 0  # open client connections (counted from accept to close)
        self.head_waiters: set[HeadWaiter] = set()  # handlers awaiting a head
        self.tls: ssl.SSLContext | None = None  # terminate TLS on accepted connections

    def retire(self) -> None:
        """The route left the table (or the process hands over): its listener is closed
        already. Requests in flight finish; a client connection may still send one
        request (answered with ``Connection: close``) within :data:`RETIRE_GRACE`; then
        the route is gone.

        The backends stay pickable for those last requests, but take no pooled
        connections (so a stopping replica is not held open by the proxy)."""
        self.closed = True
        for state in self.backends.values():
            state.removed = True
            state.close_idle()
        grace_ends = time.monotonic() + RETIRE_GRACE
        for deadline in self.head_waiters:
            deadline.shorten(grace_ends)
