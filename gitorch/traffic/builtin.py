"""The built-in load balancer: gitorch's own data plane (asyncio, proxying).

One asyncio event loop runs on its own daemon thread and serves every route of the
current :class:`~gitorch.traffic.table.RoutingTable`:

* ``tcp`` routes: L4, a backend per accepted connection, bytes spliced both ways;
* ``http`` routes: an HTTP/1.1 reverse proxy, a backend per *request*, keep-alive with
  clients and a small pool of keep-alive connections per backend; an ``Upgrade``
  request (WebSocket) becomes a spliced connection once the backend answers 101. The
  common request is served by callbacks (:class:`_Client`, :class:`_Upstream`: no
  coroutine or await per request); anything else goes on, on the same connection, on
  streams (:meth:`BuiltinLoadBalancer._serve_http`).

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
import enum
import errno
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, cast

from gitorch.errors import ConfigError
from gitorch.traffic import _http
from gitorch.traffic.choice import Candidate, Chooser
from gitorch.traffic.figures import (
    BackendFigures,
    VersionFigures,
    bucket_of,
    empty_histogram,
)
from gitorch.traffic.ledger import VersionLedger
from gitorch.traffic.listeners import BACKLOG, Binding, ListenerSource
from gitorch.traffic.routes import ListenError, check_table, resolve_tls
from gitorch.traffic.table import (
    Backend,
    BackendStats,
    DataPlaneHealth,
    Route,
    RoutingTable,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds a backend that refused a fresh connection is passed over (while others exist).
COOLDOWN = 2.0
#: Idle keep-alive connections kept per backend.
POOL_SIZE = 16
#: Seconds between two checks of the client connections' deadlines (see _Deadline).
SWEEP = 0.25
#: Seconds a client connection of a removed route may still take to send its next request
#: head (it is answered, then closed): a request already on its way when the route went
#: is served, and an idle keep-alive connection does not hold the route for long.
RETIRE_GRACE = 1.0
#: Connections accepted per readiness event before other work gets a turn.
ACCEPT_BATCH = 64
#: Bytes a client may send ahead (pipelined) while its request is served, before the
#: proxy stops reading from it.
PIPELINE_LIMIT = _http.MAX_HEAD + _http.REPLAY_LIMIT


@dataclass(frozen=True)
class Timeouts:
    """How long the proxy waits (seconds)."""

    connect: float = 2.0  # connecting to a backend (then the next one is tried)
    response: float = 60.0  # a backend's response head after the request was sent (504)
    client_idle: float = 60.0  # a client's next request head, and its small body
    pool_idle: float = 15.0  # an unused pooled backend connection is closed after this
    apply: float = 30.0  # apply()/close() waiting for the loop thread


class _Deadline:
    """How long one client connection's handler may wait in its current step.

    The handler arms it around a wait (``with deadline.limit(seconds): ...``); a sweep
    every :data:`SWEEP` seconds cancels handlers whose deadline passed, and the ``with``
    turns that cancellation into :class:`TimeoutError`, as ``asyncio.timeout`` does. An
    ``asyncio.timeout`` per wait cost the proxy ~15% of its CPU (a timer handle made and
    cancelled for every request head and every response); this costs two attribute
    writes, for timeouts that fire up to :data:`SWEEP` late.
    """

    __slots__ = ("task", "at", "fired", "_seconds")

    def __init__(self, task: asyncio.Task[None]) -> None:
        self.task = task
        self.at = 0.0  # monotonic deadline while armed, else 0
        self.fired = False
        self._seconds = 0.0

    def limit(self, seconds: float) -> _Deadline:
        self._seconds = seconds
        return self

    def shorten(self, at: float) -> None:
        """Bring an armed deadline forward to ``at`` (never later than it was)."""
        if self.at:
            self.at = min(self.at, at)

    def __enter__(self) -> _Deadline:
        self.at = time.monotonic() + self._seconds
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: object) -> None:
        self.at = 0.0
        if self.fired:
            self.fired = False
            # Our cancel is withdrawn; another one (shutdown) still propagates.
            if self.task.uncancel() == 0 and exc_type is asyncio.CancelledError:
                raise TimeoutError("deadline passed") from None

    def expire_if_due(self, now: float) -> None:
        if self.at and self.at <= now and not self.fired:
            self.fired = True
            self.task.cancel()


@dataclass(eq=False)
class _Conn:
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


class _Upstream(asyncio.Protocol):
    """A connection to a backend driven by callbacks, for :class:`_Client` (the fast
    path); pooled between requests as a :class:`_Conn` is."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""  # bytes: an answer mostly comes in one piece, sliced, not copied
        self.client: _Client | None = None  # whose request it carries now
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

    def to_streams(self, loop: asyncio.AbstractEventLoop) -> _Conn:
        """The same connection as streams (what was read and not consumed comes first)."""
        assert self.transport is not None
        reader, writer = _streams_on(self.transport, self.buffer, False, loop)
        self.buffer = b""
        return _Conn(reader, writer)


def _streams_on(
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


class _Client(asyncio.Protocol):
    """One client connection of an http route, served by callbacks: the fast path.

    Most requests are a head and a small body, answered by a head and a small body:
    this serves those without a coroutine, a stream or an await (a request head is
    split off the bytes as they come, parsed, sent on a pooled :class:`_Upstream` in
    one write; the answer goes back in one write): a third less CPU per request than
    on streams (bench/README.md). Heads are read by the same rules as
    on the streams (:func:`_http.split_head`). Everything else goes on on streams, on
    the same connection, as before: a request with a chunked, large or expected body
    or an Upgrade, a head the stream reader must read (bare LF, empty lines before it,
    very long), anything malformed (refused there, with the same answer), and a
    response that is streamed (chunked, large, or delimited by the close). Retries,
    timeouts (through the sweep of :class:`_Deadline`), figures and draining are those
    of the stream path.
    """

    def __init__(self, lb: BuiltinLoadBalancer, svc: _Service) -> None:
        self.lb = lb
        self.svc = svc
        self.transport: asyncio.Transport | None = None
        self.buffer = b""  # bytes: a request mostly comes in one piece, sliced, not copied
        self.client_ip = ""
        self.tls = svc.tls is not None
        self.made = False  # connection_made came: this protocol owns the connection
        self.gone = False  # the client connection is closed
        self.settled = False  # its count in svc.connections was given back
        self.handed = False  # handed over to the stream path
        self.eof = False
        self.reading_paused = False
        self.writing_paused = False
        self.at = 0.0  # monotonic deadline of the current wait, 0 when none
        self.pending: _http.RequestHead | None = None  # a head whose body is awaited
        self.pending_kind = "none"
        self.pending_length = 0
        # The request in flight (busy), and its current attempt.
        self.busy = False
        self.head: _http.RequestHead = _NO_HEAD
        self.body = _RequestBody("none", 0)
        self.request = b""
        self.client_keep = True
        self.version: str | None = None
        self.extra: _http.Headers = []
        self.tried: set[str] = set()
        self.failure = _Failure.NO_BACKEND
        self.attempts_left = 0
        self.state: _BackendState | None = None
        self.upstream: _Upstream | None = None
        self.reused = False
        self.started = 0.0
        self.response: _ResponseOut | None = None

    # ------------------------------------------------------------ client side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.made = True
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if isinstance(peer, tuple) else ""
        self.lb._deadlines.add(self)
        self._next()

    def data_received(self, data: bytes) -> None:
        had = self.buffer
        buf = self.buffer = had + data if had else data
        if not self.busy:
            if had and self.pending is None and b"\n" not in data and len(buf) < _http.SPLIT_LIMIT:
                return  # a head ends with a line end: no new one can be whole yet
            self._next()
        elif len(self.buffer) > PIPELINE_LIMIT and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        self.eof = True
        if not self.busy:
            self._next()
        # The answer in flight may still be written (TLS cannot half-close: asyncio
        # closes it anyway and warns when asked not to, as StreamReaderProtocol knows).
        return not self.tls

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        self._settle()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        if not self.busy:
            self._next()

    def shorten(self, at: float) -> None:
        """Bring the wait for a head forward to ``at`` (the route was removed)."""
        if self.at:
            self.at = min(self.at, at)

    def expire_if_due(self, now: float) -> None:
        if self.at and self.at <= now:
            self.at = 0.0
            self._expired()

    def shut(self) -> None:
        """The balancer closes: end this connection and its request now."""
        if self.upstream is not None:
            self.upstream.client = None
            self.upstream.close()
        self._close()

    def _settle(self) -> None:
        """Give the connection's count back once it is closed and nothing is in flight."""
        if self.gone and not self.busy and not self.settled and not self.handed:
            self.settled = True
            self.svc.connections -= 1
            self.svc.head_waiters.discard(self)
            self.lb._deadlines.discard(self)

    def _close(self) -> None:
        if self.transport is not None and not self.gone:
            self.transport.close()

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not self.gone and not transport.is_closing():
            transport.write(data)

    def _next(self) -> None:
        """Take the next request from the buffer when it is whole (or hand over)."""
        if self.busy or self.handed or self.gone or self.writing_paused:
            return
        svc = self.svc
        buf = self.buffer
        head = self.pending
        if head is None:
            try:
                split = _http.split_head(buf) if buf else None
            except _http.NotSimple:
                self._hand_over()
                return
            if split is None:
                if self.eof:
                    if buf:
                        self._hand_over()  # an incomplete head: answered there
                    else:
                        self._close()
                    return
                if not self.at:
                    idle = RETIRE_GRACE if svc.closed else self.lb.timeouts.client_idle
                    self.at = time.monotonic() + idle
                    svc.head_waiters.add(self)
                return
            line, block, end = split
            try:
                head = _http.request_head_of(line, block)
                kind, length = head.framing()
            except _http.BadMessage:
                self._hand_over()  # refused there, with the same answer
                return
            if (
                kind == "chunked"
                or length > _http.REPLAY_LIMIT
                or "expect" in head.special
                or "upgrade" in head.special  # asking to upgrade takes an Upgrade header
            ):
                self._hand_over()
                return
            buf = self.buffer = buf[end:]
            svc.head_waiters.discard(self)
            self.at = 0.0
            self.pending = head
            self.pending_kind = kind
            self.pending_length = length
        length = self.pending_length
        if len(buf) < length:
            if self.eof:
                self._close()  # the body was cut short
            elif not self.at:
                self.at = time.monotonic() + self.lb.timeouts.client_idle
            return
        self.at = 0.0
        if length:
            body = buf[:length]
            buf = self.buffer = buf[length:]
        else:
            body = b""
        if self.reading_paused and len(buf) <= PIPELINE_LIMIT:
            self.reading_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        self.pending = None
        self._start(head, _RequestBody(self.pending_kind, length, body))

    def _hand_over(self) -> None:
        """Serve this connection on streams from here on (nothing is in flight)."""
        self.handed = True
        self.at = 0.0
        self.svc.head_waiters.discard(self)
        self.lb._deadlines.discard(self)
        reader, writer = self._streams()
        self.lb._serve_handed(self.svc, reader, writer)

    def _streams(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        transport = self.transport
        assert transport is not None
        if self.reading_paused:
            self.reading_paused = False
            transport.resume_reading()  # the stream reader pauses by its own measure
        reader, writer = _streams_on(transport, self.buffer, self.eof, self.lb._loop)
        self.buffer = b""
        if self.writing_paused:
            cast(asyncio.StreamReaderProtocol, transport.get_protocol()).pause_writing()
        return reader, writer

    def _expired(self) -> None:
        upstream, state = self.upstream, self.state
        if upstream is None or state is None:
            self._close()  # a head or body that did not come in time
            return
        self._detach(upstream, state)
        upstream.close()
        if self.response is not None:
            self._end_attempt(state)
            self._end_request(False)  # the answer's body stopped coming: cut it
            return
        _count(state, 504, self.started)
        self._end_attempt(state)
        self._write(
            _http.simple_response(
                504,
                "gateway timeout: the backend did not answer",
                close=True,
                head_only=self.head.method == "HEAD",
            )
        )
        self._end_request(False)

    # ------------------------------------------------------------ one request

    def _start(self, head: _http.RequestHead, body: _RequestBody) -> None:
        svc = self.svc
        connection = head.special.get("connection")
        if svc.closed:
            self.client_keep = False
        elif connection is None:
            self.client_keep = head.version >= (1, 1)
        else:
            tokens = _http.tokens_of(connection)
            self.client_keep = (
                "keep-alive" in tokens if head.version < (1, 1) else "close" not in tokens
            )
        self.busy = True
        self.head = head
        self.body = body
        self.request = self.lb._backend_request(head, body, self.client_ip, self.tls)
        version, cookie_version = svc.choose_version(head)
        self.version = version
        self.extra = (
            [("Set-Cookie", f"{svc.cookie_name}={cookie_version}; Path=/")]
            if cookie_version is not None
            else []
        )
        self.tried = set()
        self.failure = _Failure.NO_BACKEND
        self.attempts_left = svc.attempts()
        self._attempt()

    def _attempt(self) -> None:
        svc = self.svc
        now = time.monotonic()
        state = svc.pick(self.tried, self.version, now=now)
        if state is None or self.attempts_left <= 0:
            self._give_up()
            return
        self.attempts_left -= 1
        self.tried.add(state.backend.id)
        state.in_flight += 1
        self.state = state
        self.started = now
        # After a failure, only fresh connections: the pool may hold more dead ones.
        upstream = None if self.failure is not _Failure.NO_BACKEND else _pooled_fast(state)
        if upstream is not None:
            self.reused = True
            self._send(upstream)
            return
        self.reused = False
        task = self.lb._loop.create_task(self.lb._connect_upstream(state))
        self.lb._track(task)
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[_Upstream | None]) -> None:
        state = self.state
        assert state is not None
        upstream = None if task.cancelled() or task.exception() else task.result()
        if task.cancelled():
            self._end_attempt(state)
            self._end_request(False)  # the balancer closes
            return
        if upstream is None:
            self._failed(state, _Failure.NOT_CONNECTED)
            return
        self._send(upstream)

    def _send(self, upstream: _Upstream) -> None:
        state = self.state
        assert state is not None and upstream.transport is not None
        state.busy.add(upstream)  # so that an unreachable backend's requests can be given up
        upstream.client = self
        self.upstream = upstream
        self.response = None
        upstream.transport.write(self.request + self.body.prefix)  # one segment
        self.at = time.monotonic() + self.lb.timeouts.response

    def on_backend_data(self, upstream: _Upstream) -> None:
        """Bytes of the answer came: relay it when it is whole."""
        state = self.state
        if upstream is not self.upstream or state is None:
            return
        buf = upstream.buffer
        out = self.response
        if out is None:
            while True:
                try:
                    split = _http.split_head(buf)
                except _http.NotSimple:
                    self._response_on_streams(None)
                    return
                if split is None:
                    return
                line, block, end = split
                try:
                    response = _http.response_head_of(line, block)
                except _http.BadMessage:
                    state.errors += 1
                    self._failed(state, _Failure.PARTIAL_ANSWER, upstream)
                    return
                buf = upstream.buffer = buf[end:]
                if response.status >= 200:
                    break
                # 1xx interim answers are skipped, as on streams.
            _count(state, response.status, self.started)
            out = _response_out(self.head, response, self.client_keep, self.extra)
            if out.kind not in ("none", "length") or out.length > _http.COPY_SIZE:
                self._response_on_streams(response)
                return
            self.response = out
        length = out.length
        if len(buf) < length:
            return
        self._write(out.head + buf[:length] if length else out.head)
        leftover = len(buf) > length  # more than the answer: never reuse such a connection
        upstream.buffer = b""
        self._detach(upstream, state)
        _release_fast(state, upstream, out.backend_keep and not leftover)
        self._end_attempt(state)
        self._end_request(out.client_keep)

    def on_backend_lost(self, upstream: _Upstream) -> None:
        """The backend closed before its whole answer came."""
        state = self.state
        if upstream is not self.upstream or state is None:
            return
        if self.response is not None:
            # The answer's head came and its body was cut: the client connection too.
            self._detach(upstream, state)
            self._end_attempt(state)
            self._end_request(False)
            return
        if upstream.abandoned:
            failure = _Failure.ABANDONED
        elif upstream.buffer:
            failure = _Failure.PARTIAL_ANSWER
        elif self.reused:
            failure = _Failure.POOLED_DEAD  # a keep-alive race, not the backend's fault
        else:
            failure = _Failure.SENT_NO_ANSWER
        if failure is not _Failure.POOLED_DEAD:
            state.errors += 1
        self._failed(state, failure, upstream)

    def _failed(
        self, state: _BackendState, failure: _Failure, upstream: _Upstream | None = None
    ) -> None:
        """An attempt ended without an answer: try another backend when it is safe."""
        if upstream is not None:
            self._detach(upstream, state)
            upstream.close()
        self.at = 0.0
        self._end_attempt(state)
        self.failure = failure
        if BuiltinLoadBalancer._may_retry(failure, self.head.method, self.body):
            self._attempt()
        else:
            self._give_up()

    def _give_up(self) -> None:
        if self.failure in (_Failure.NO_BACKEND, _Failure.NOT_CONNECTED):
            status, text = 503, f"no backend available for {self.svc.route.service}"
        else:
            status, text = 502, "bad gateway: the backend failed before answering"
        keep = self.client_keep
        head_only = self.head.method == "HEAD"
        self._write(_http.simple_response(status, text, close=not keep, head_only=head_only))
        self._end_request(keep)

    def _detach(self, upstream: _Upstream, state: _BackendState) -> None:
        upstream.client = None
        self.upstream = None
        state.busy.discard(upstream)

    def _end_attempt(self, state: _BackendState) -> None:
        state.in_flight -= 1
        self.state = None
        if state.removed:
            self.lb._forget_if_gone(self.svc, state)

    def _end_request(self, keep: bool) -> None:
        self.busy = False
        self.at = 0.0
        self.response = None
        if self.gone:
            self._settle()
        elif keep and not self.svc.closed:
            self._next()
        else:
            self._close()

    def _response_on_streams(self, response: _http.ResponseHead | None) -> None:
        """Finish this request, and serve the connection from here on, on streams: the
        answer is streamed (or its head is one the stream reader must read)."""
        upstream, state = self.upstream, self.state
        assert upstream is not None and state is not None
        self._detach(upstream, state)
        if self.gone:  # nobody to stream it to
            upstream.close()
            self._end_attempt(state)
            self._end_request(False)
            return
        conn = upstream.to_streams(self.lb._loop)
        state.busy.add(conn)
        self.handed = True
        self.busy = False
        self.at = 0.0
        self.lb._deadlines.discard(self)
        reader, writer = self._streams()
        lb, svc, head = self.lb, self.svc, self.head
        started, client_keep, extra = self.started, self.client_keep, self.extra

        def resume(deadline: _Deadline) -> Awaitable[bool]:
            return lb._resume_response(
                svc, state, head, conn, response, started, client_keep, extra, writer, deadline
            )

        self.state = None
        lb._serve_handed(svc, reader, writer, resume)


_NO_HEAD = _http.RequestHead("GET", "/", (1, 1))


def _pooled_fast(state: _BackendState) -> _Upstream | None:
    """An idle fast-path connection to ``state``'s backend that still looks open."""
    idle = state.fast_idle
    while idle:
        upstream = idle.pop()
        if upstream.usable():
            return upstream
        upstream.close()
    return None


def _release_fast(state: _BackendState, upstream: _Upstream, reusable: bool) -> None:
    if reusable and state.accepting and upstream.usable() and len(state.fast_idle) < POOL_SIZE:
        upstream.idle_since = time.monotonic()
        state.fast_idle.append(upstream)
    else:
        upstream.close()


#: Event loops the balancer can run on.
EVENT_LOOPS = ("asyncio", "uvloop")


def default_event_loop() -> str:
    """uvloop when it is installed (15% more requests per second for the proxy, and a
    lower p99: bench/README.md), else the standard library's."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A new event loop: the standard library's, or uvloop's (libuv, measured in
    bench/README.md); :class:`ConfigError` when uvloop is asked for and not installed."""
    if kind == "asyncio":
        return asyncio.new_event_loop()
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError as exc:
            raise ConfigError(
                "the uvloop event loop is not installed (pip install uvloop)"
            ) from exc
        return uvloop.new_event_loop()
    raise ConfigError(f"event loop {kind!r}: expected one of {', '.join(EVENT_LOOPS)}")


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


class _BackendState(Candidate):
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
        self.idle: list[_Conn] = []
        self.fast_idle: list[_Upstream] = []  # pooled connections of the fast path
        # Connections carrying a request (or a tcp stream).
        self.busy: set[_Conn | _Upstream] = set()

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


class _Service(Chooser[_BackendState]):
    """One route being served: its backends (see :class:`Chooser`) and its listener."""

    def __init__(self, route: Route) -> None:
        super().__init__(route, _BackendState)
        self.listeners: list[socket.socket] = []  # open listening sockets
        self.listening: int | None = None  # port of the open listeners
        self.closed = False
        self.connections = 0  # open client connections (counted from accept to close)
        self.head_waiters: set[_Deadline | _Client] = set()  # handlers awaiting a head
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
        self._services: dict[str, _Service] = {}
        # Routes removed while requests were still in flight on them: kept until those end,
        # so backend_stats() still counts them (the reconciler waits for zero before it
        # stops a replica of a pruned service; None would let it stop one mid-request).
        self._retiring: list[_Service] = []
        self._clients: set[asyncio.Task[Any]] = set()
        self._deadlines: set[_Deadline | _Client] = set()
        self.ledger = VersionLedger()
        self._loop = new_event_loop(event_loop)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"gitorch-lb-{host}", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- thread plumbing

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        chores = [
            self._loop.create_task(self._reap_idle()),
            self._loop.create_task(self._sweep_deadlines()),
        ]
        try:
            self._loop.run_forever()
        finally:
            for chore in chores:
                chore.cancel()
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(asyncio.gather(*chores, return_exceptions=True))
            self._loop.close()

    def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the loop thread and return its result."""
        if self._closed:
            raise ConfigError("the load balancer is closed")

        async def run() -> T:
            return fn()

        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(run(), self._loop)
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
        future = asyncio.run_coroutine_threadsafe(self._apply(table), self._loop)
        failures = future.result(timeout=self.timeouts.apply)
        if failures:
            raise ListenError(failures[0], detail=tuple(failures[1:]))

    def backend_stats(self, service: str, backend_id: str) -> BackendStats | None:
        """``backend_id``'s in-flight requests and counts, None when it is not served.

        For a route that left the table, every client connection still open on it counts
        as in flight on each of its backends: one may still send a request (see
        :meth:`_Service.retire`), so the reconciler waits for it before stopping one."""

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
        :meth:`_Service.retire`). Used when a proxy hands over to its successor."""

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
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        try:
            future.result(timeout=self.timeouts.apply)
        finally:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
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
                served = self._services[name] = _Service(route)
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
                self._forget_if_gone(served, state)
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

    def _listen(self, svc: _Service) -> None:
        """Take ``svc``'s listening sockets and accept on them.

        The proxy accepts itself rather than through ``asyncio.start_server``: on
        Python 3.11, a connection asyncio had accepted when its server closed in the same
        loop turn is never served nor closed (``Server._attach`` asserts on the closed
        server inside the accept task), so the client hangs. Here every accepted
        connection is served, and closing a listener accepts what is queued first."""
        route = svc.route
        listeners = self.listeners.take(route.service, route.port)
        for sock in listeners:
            self._loop.add_reader(sock.fileno(), self._accept, svc, sock)
        svc.listeners = listeners
        svc.listening = route.port

    def _accept(self, svc: _Service, listener: socket.socket, limit: int = ACCEPT_BATCH) -> None:
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

    def _adopt(self, svc: _Service, conn: socket.socket) -> None:
        """Serve an accepted client connection: by callbacks (:class:`_Client`) on an
        http route, on a task of its own on a tcp route."""
        svc.connections += 1  # counted at once: a drain must see it before it runs
        if svc.route.protocol == "http":
            self._track(self._loop.create_task(self._open_fast(svc, conn)))
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

        self._track(self._loop.create_task(serve()))

    def _track(self, task: asyncio.Task[Any]) -> None:
        """Keep ``task`` until it ends (a shutdown cancels what is left)."""
        self._clients.add(task)
        task.add_done_callback(self._clients.discard)

    async def _open_fast(self, svc: _Service, conn: socket.socket) -> None:
        """Serve an accepted connection of an http route by callbacks (after the TLS
        handshake when the route terminates TLS)."""
        client = _Client(self, svc)
        try:
            if svc.tls is None:
                await self._loop.connect_accepted_socket(lambda: client, sock=conn)
            else:
                await self._loop.connect_accepted_socket(
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

    def _serve_handed(
        self,
        svc: _Service,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        resume: Callable[[_Deadline], Awaitable[bool]] | None = None,
    ) -> None:
        """Go on serving a connection the fast path handed over, on streams (its count
        in ``svc.connections`` comes with it); ``resume`` first finishes the request in
        flight."""

        async def serve() -> None:
            try:
                await self._on_client(svc, reader, writer, resume)
            finally:
                svc.connections -= 1

        self._track(self._loop.create_task(serve()))

    async def _open_client(
        self, conn: socket.socket, tls: ssl.SSLContext | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Streams on an accepted connection (after the TLS handshake when ``tls``)."""
        if tls is None:
            return await asyncio.open_connection(sock=conn, limit=_http.MAX_HEAD)
        reader = asyncio.StreamReader(limit=_http.MAX_HEAD, loop=self._loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=self._loop)
        transport, _ = await self._loop.connect_accepted_socket(
            lambda: protocol, sock=conn, ssl=tls, ssl_handshake_timeout=self.timeouts.connect * 5
        )
        return reader, asyncio.StreamWriter(transport, protocol, reader, self._loop)

    def _stop_listening(self, svc: _Service, adopt: bool = True) -> None:
        """Close ``svc``'s listeners. Connections the kernel completed that were not
        accepted yet would be reset by the close (a failed request for a client that had
        connected): with ``adopt``, they are accepted and served first. This matters most
        for workers sharing a port, where the clients of the first worker to close
        reconnect to one that is about to."""
        for listener in svc.listeners:
            self._loop.remove_reader(listener.fileno())
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
        for timed in list(self._deadlines):
            if isinstance(timed, _Client):
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
        """Time out client handlers whose :class:`_Deadline` passed."""
        while True:
            await asyncio.sleep(SWEEP)
            now = time.monotonic()
            for deadline in list(self._deadlines):
                deadline.expire_if_due(now)

    async def _on_client(
        self,
        svc: _Service,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        resume: Callable[[_Deadline], Awaitable[bool]] | None = None,
    ) -> None:
        # Every client handler ends here: whatever happens, the loop survives.
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        deadline = _Deadline(task)
        try:
            if svc.route.protocol == "tcp":
                await self._serve_tcp(svc, reader, writer)
            else:
                self._deadlines.add(deadline)
                if resume is None or await resume(deadline):
                    await self._serve_http(svc, reader, writer, deadline)
        except (asyncio.CancelledError, ConnectionError, TimeoutError, _http.PeerClosed):
            pass
        except Exception:
            log.exception("load balancer: client connection on %s failed", svc.route.service)
        finally:
            writer.close()
            self._deadlines.discard(deadline)
            self._clients.discard(task)

    # ----------------------------------------------------------------- tcp

    async def _connect_upstream(self, state: _BackendState) -> _Upstream | None:
        """A fresh fast-path connection to ``state``'s backend, or None (as :meth:`_connect`)."""
        backend = state.backend
        try:
            async with asyncio.timeout(self.timeouts.connect):
                _, upstream = await self._loop.create_connection(
                    _Upstream, backend.host, backend.port
                )
        except (OSError, TimeoutError):
            state.errors += 1
            state.connect_errors += 1
            state.down_until = time.monotonic() + COOLDOWN
            return None
        return upstream

    async def _resume_response(
        self,
        svc: _Service,
        state: _BackendState,
        head: _http.RequestHead,
        conn: _Conn,
        response: _http.ResponseHead | None,
        started: float,
        client_keep: bool,
        extra: _http.Headers,
        writer: asyncio.StreamWriter,
        deadline: _Deadline,
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
                _count(state, 504, started)
                text = "gateway timeout: the backend did not answer"
                return await _answer(writer, 504, text, keep=False, head_only=head_only)
            except (_http.PeerClosed, ConnectionError, OSError, _http.BadMessage):
                # Not retried: bytes of an answer came already (a head the fast path
                # could not read alone), so the backend did see the request.
                conn.close()
                state.errors += 1
                text = "bad gateway: the backend failed before answering"
                keep = await _answer(writer, 502, text, keep=client_keep, head_only=head_only)
                return keep and not svc.closed
            if not counted:
                _count(state, response.status, started)
            keep = await self._relay(state, conn, head, response, writer, client_keep, extra)
            return keep and not svc.closed
        finally:
            state.busy.discard(conn)
            state.in_flight -= 1
            self._forget_if_gone(svc, state)

    async def _connect(self, state: _BackendState) -> _Conn | None:
        """A fresh connection to ``state``'s backend, or None (counted as an error)."""
        backend = state.backend
        try:
            async with asyncio.timeout(self.timeouts.connect):
                reader, writer = await asyncio.open_connection(
                    backend.host, backend.port, limit=_http.MAX_HEAD
                )
        except (OSError, TimeoutError):
            state.errors += 1
            state.connect_errors += 1
            state.down_until = time.monotonic() + COOLDOWN
            return None
        return _Conn(reader, writer)

    async def _serve_tcp(
        self, svc: _Service, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
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
                    await _splice(reader, writer, conn.reader, conn.writer)
                finally:
                    state.busy.discard(conn)
                    conn.close()
                    state.requests += 1
                return
            finally:
                state.in_flight -= 1
                self._forget_if_gone(svc, state)

    def _forget_if_gone(self, svc: _Service, state: _BackendState) -> None:
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
        svc: _Service,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        deadline: _Deadline,
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
                    await _answer(writer, 400, "incomplete request head")
                return
            except _http.BadMessage as exc:
                await _answer(writer, 400, f"bad request: {exc}")
                return
            finally:
                waiters.discard(deadline)
            keep = await self._proxy_request(svc, head, reader, writer, client_ip, deadline)
            if not keep:
                return

    async def _proxy_request(
        self,
        svc: _Service,
        head: _http.RequestHead,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client_ip: str,
        deadline: _Deadline,
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
            await _answer(writer, 400, f"bad request: {exc}")
            return False
        if kind != "none" and "100-continue" in head.tokens("expect"):
            # The proxy answers the expectation itself: the body is read here first.
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = _RequestBody(kind, length)
        try:
            if kind != "none":
                with deadline.limit(self.timeouts.client_idle):
                    await body.read_prefix(reader)
        except _http.BadMessage as exc:
            await _answer(writer, 400, f"bad request body: {exc}")
            return False

        # An Upgrade (WebSocket) goes on to the backend; its 101 turns the connection
        # into a spliced one (RFC 9110 7.8). Only without a body, and from HTTP/1.1.
        upgrade = None
        if "upgrade" in conn_tokens and kind == "none" and head.version >= (1, 1):
            upgrade = head.first("upgrade")
        request_head = self._backend_request(head, body, client_ip, svc.tls is not None, upgrade)
        is_head = head.method == "HEAD"
        tried: set[str] = set()
        failure = _Failure.NO_BACKEND
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
                retrying = failure is not _Failure.NO_BACKEND
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
                self._forget_if_gone(svc, state)
            if isinstance(outcome, bool):
                return outcome and not svc.closed
            failure = outcome
            if not self._may_retry(failure, head.method, body):
                break
        if body.consumed_partly:
            client_keep = False  # the rest of the client's body may still be on the wire
        if failure in (_Failure.NO_BACKEND, _Failure.NOT_CONNECTED):
            status, text = 503, f"no backend available for {svc.route.service}"
        else:
            status, text = 502, "bad gateway: the backend failed before answering"
        keep = await _answer(writer, status, text, keep=client_keep, head_only=is_head)
        return keep and not svc.closed

    @staticmethod
    def _may_retry(failure: _Failure, method: str, body: _RequestBody) -> bool:
        if not body.replayable:
            return False
        if failure in (_Failure.NOT_CONNECTED, _Failure.POOLED_DEAD):
            return True  # the request never reached a backend (or almost surely not)
        # Nothing has reached the client yet, so an idempotent request may go elsewhere
        # even when the backend broke halfway through its head (nginx: invalid_header).
        answerless = failure in (
            _Failure.SENT_NO_ANSWER,
            _Failure.PARTIAL_ANSWER,
            _Failure.ABANDONED,
        )
        return answerless and method in _http.IDEMPOTENT

    def _backend_request(
        self,
        head: _http.RequestHead,
        body: _RequestBody,
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
            head.forward_block(_REWRITTEN),
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
    def _pooled(state: _BackendState) -> _Conn | None:
        """An idle keep-alive connection to ``state``'s backend that still looks open."""
        while state.idle:
            conn = state.idle.pop()
            if conn.usable():
                return conn
            conn.close()
        return None

    def _release(self, state: _BackendState, conn: _Conn, reusable: bool) -> None:
        if reusable and state.accepting and conn.usable() and len(state.idle) < POOL_SIZE:
            conn.idle_since = time.monotonic()
            state.idle.append(conn)
        else:
            conn.close()

    async def _attempt(
        self,
        state: _BackendState,
        head: _http.RequestHead,
        request_head: bytes,
        body: _RequestBody,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client_keep: bool,
        fresh_only: bool,
        extra: _http.Headers,
        deadline: _Deadline,
        upgrade: str | None = None,
    ) -> bool | _Failure:
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
                return _Failure.NOT_CONNECTED
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
                _count(state, 504, started)
                return await _answer(
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
                    return _Failure.ABANDONED
                if isinstance(exc, _http.PeerClosed | _http.BadMessage) and _partial(exc):
                    state.errors += 1
                    return _Failure.PARTIAL_ANSWER
                if reused:
                    return _Failure.POOLED_DEAD  # a keep-alive race, not the backend's fault
                state.errors += 1
                return _Failure.SENT_NO_ANSWER
            except BaseException:
                conn.close()
                raise
            _count(state, response.status, started)
            if response.status == 101:
                try:
                    await _switch_protocols(response, upgrade or "", reader, writer, conn, extra)
                finally:
                    conn.close()
                return False
            return await self._relay(state, conn, head, response, writer, client_keep, extra)
        finally:
            state.busy.discard(conn)

    async def _relay(
        self,
        state: _BackendState,
        conn: _Conn,
        head: _http.RequestHead,
        response: _http.ResponseHead,
        writer: asyncio.StreamWriter,
        client_keep: bool,
        extra: _http.Headers,
    ) -> bool:
        """Relay a response (:func:`_relay_response`), then pool or close ``conn``;
        returns whether the client connection may carry another request."""
        try:
            keep, reusable = await _relay_response(
                head, response, conn.reader, writer, client_keep, extra
            )
        except BaseException:
            conn.close()
            raise
        self._release(state, conn, reusable)
        return keep


#: Request headers the proxy drops and writes itself (framing, expectation, forwarding).
_REWRITTEN = frozenset({"content-length", "expect", "x-forwarded-proto", "x-forwarded-for"})


class _Failure(enum.Enum):
    """Why an attempt produced no response for the client."""

    NO_BACKEND = "no active backend"
    NOT_CONNECTED = "the connection could not be made"
    POOLED_DEAD = "a reused keep-alive connection was closed before any answer"
    SENT_NO_ANSWER = "a fresh connection broke before any answer"
    PARTIAL_ANSWER = "the backend broke in the middle of its answer head"
    ABANDONED = "the backend became unreachable before any answer"


def _partial(exc: Exception) -> bool:
    if isinstance(exc, _http.PeerClosed):
        return exc.partial
    return True  # a malformed head means bytes came


def _count(state: _BackendState, status: int, started: float) -> None:
    state.requests += 1
    took_ms = (time.monotonic() - started) * 1000
    state.latency[bucket_of(took_ms)] += 1
    state.latency_sum_ms += took_ms
    if status >= 500:
        state.errors += 1
        state.errors_5xx += 1


@dataclass
class _RequestBody:
    """A request body: small ones are read whole (replayable), large ones streamed."""

    kind: str  # none | length | chunked (as the client framed it)
    length: int
    prefix: bytes = b""
    complete: bool = True
    consumed_partly: bool = False  # part of the rest was read from the client: no replay

    @property
    def replayable(self) -> bool:
        return not self.consumed_partly

    async def read_prefix(self, reader: asyncio.StreamReader) -> None:
        if self.kind == "length":
            if self.length <= _http.REPLAY_LIMIT:
                self.prefix = await _http.read_exactly(reader, self.length)
            else:
                self.complete = False
        elif self.kind == "chunked":
            self.prefix, self.complete = await _http.read_chunked_prefix(reader, _http.REPLAY_LIMIT)

    def framing_headers(self, method: str) -> _http.Headers:
        if self.complete:
            if self.kind == "none" and method in _http.IDEMPOTENT:
                return []
            return [("Content-Length", str(len(self.prefix)))]
        if self.kind == "length":
            return [("Content-Length", str(self.length))]
        return [("Transfer-Encoding", "chunked")]

    async def send_streamed(
        self, head: bytes, client: asyncio.StreamReader, backend: asyncio.StreamWriter
    ) -> None:
        """Send the request head and a body too large to buffer (``complete`` False),
        copying the rest of it from the client; a whole body goes with its head in
        :meth:`BuiltinLoadBalancer._attempt`."""
        if self.consumed_partly:
            raise ConnectionError("request body already partly forwarded")
        self.consumed_partly = True
        backend.write(head)
        if self.kind == "length":
            await backend.drain()
            await _http.copy_length(client, backend, self.length)
        else:
            _http.write_piece(backend, self.prefix, chunked=True)
            await backend.drain()
            await _http.copy_chunked(client, backend, chunked=True)


_CONTENT_LENGTH = frozenset({"content-length"})


async def _relay_response(
    request: _http.RequestHead,
    response: _http.ResponseHead,
    backend: asyncio.StreamReader,
    client: asyncio.StreamWriter,
    client_keep: bool,
    extra: _http.Headers | None = None,
) -> tuple[bool, bool]:
    """Stream the response to the client: (client keep-alive, backend conn reusable);
    ``extra`` headers (the sticky cookie) are added to the backend's."""
    out = _response_out(request, response, client_keep, extra)
    kind, length = out.kind, out.length
    if kind == "length" and length <= _http.COPY_SIZE:
        # Small answers (the common case) go out in one write with their head.
        try:
            client.write(out.head + await backend.readexactly(length))
        except asyncio.IncompleteReadError:
            raise _http.PeerClosed(partial=True) from None
    else:
        client.write(out.head)
        if kind == "length":
            await _http.copy_length(backend, client, length)
        elif kind == "chunked":
            await _http.copy_chunked(backend, client, chunked=out.chunked)
        elif kind == "eof":
            await _http.copy_to_eof(backend, client, chunked=out.chunked)
    if client.transport.get_write_buffer_size():
        await client.drain()  # most writes go straight to the socket: no await then
    return out.client_keep, out.backend_keep


class _ResponseOut(NamedTuple):
    """How a backend's response goes on to the client (see :func:`_response_out`)."""

    head: bytes  # the head sent to the client
    kind: str  # the backend's body framing: none | length | chunked | eof
    length: int
    chunked: bool  # the body goes out chunked
    client_keep: bool
    backend_keep: bool


def _response_out(
    request: _http.RequestHead,
    response: _http.ResponseHead,
    client_keep: bool,
    extra: _http.Headers | None,
) -> _ResponseOut:
    """The head for the client and the framings of a backend's response (pure)."""
    special = response.special
    if (
        client_keep
        and not extra
        and request.version >= (1, 1)
        and response.version >= (1, 1)
        and _http.HOP_BY_HOP.isdisjoint(special)
        and request.method != "HEAD"
        and response.status not in (204, 304)
    ):
        # The common answer (one plain Content-Length, nothing hop-by-hop, nothing to
        # add, a keep-alive HTTP/1.1 client): the general case below comes to its head
        # as it came, under the status line; this only gets there in fewer steps.
        lengths = special.get("content-length")
        if lengths is not None and len(lengths) == 1:
            value = lengths[0]
            if value.isdigit() and len(value) <= 18 and (value[0] != "0" or value == "0"):
                line = f"HTTP/1.1 {response.status} {response.reason}".rstrip()
                out = f"{line}\r\n{response.block}\r\n".encode("latin-1")
                return _ResponseOut(out, "length", int(value), False, True, True)
    no_body = request.method == "HEAD" or response.status in (204, 304)
    connection = special.get("connection")
    backend_keep = response.version >= (1, 1) and (
        connection is None or "close" not in _http.tokens_of(connection)
    )
    if no_body:
        kind, length = "none", 0
    else:
        try:
            kind, length = response.framing()
        except _http.BadMessage:
            kind, length = "eof", 0  # unreadable framing: relay until the backend closes
        if kind == "none":
            kind = "eof"  # no length: the body ends when the backend closes
    if kind == "eof":
        backend_keep = False
    # The backend's Content-Length line goes on as it came when it is the one length
    # being relayed (the common case: the head is forwarded unchanged); else it is
    # dropped and, for a length-framed body, written anew.
    lengths = special.get("content-length")
    own_length = kind == "length" and lengths is not None and lengths == [str(length)]
    block = response.forward_block(frozenset() if no_body or own_length else _CONTENT_LENGTH)
    parts = [f"HTTP/1.1 {response.status} {response.reason}".rstrip(), "\r\n", block]
    if extra:
        parts.extend(f"{name}: {value}\r\n" for name, value in extra)
    chunked_out = False
    if kind == "length":
        if not own_length:
            parts.append(f"Content-Length: {length}\r\n")
    elif kind in ("chunked", "eof"):
        if request.version >= (1, 1):
            chunked_out = True
            parts.append("Transfer-Encoding: chunked\r\n")
        else:
            client_keep = False  # an HTTP/1.0 client learns the end by the close
    if client_keep:
        if request.version < (1, 1):
            parts.append("Connection: keep-alive\r\n")
    else:
        parts.append("Connection: close\r\n")
    parts.append("\r\n")
    out_head = "".join(parts).encode("latin-1")
    return _ResponseOut(out_head, kind, length, chunked_out, client_keep, backend_keep)


async def _switch_protocols(
    response: _http.ResponseHead,
    upgrade: str,
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    backend: _Conn,
    extra: _http.Headers,
) -> None:
    """Relay a backend's 101 answer, then copy bytes both ways until both sides end (a
    WebSocket, or any protocol the client asked to upgrade to)."""
    protocol = response.first("upgrade") or upgrade
    parts = [f"HTTP/1.1 101 {response.reason}".rstrip(), "\r\n", response.forward_block()]
    parts.extend(f"{name}: {value}\r\n" for name, value in extra)
    parts.append(f"Connection: Upgrade\r\nUpgrade: {protocol}\r\n\r\n")
    client_writer.write("".join(parts).encode("latin-1"))
    await client_writer.drain()
    await _splice(client_reader, client_writer, backend.reader, backend.writer)


async def _answer(
    writer: asyncio.StreamWriter,
    status: int,
    text: str,
    *,
    keep: bool = False,
    head_only: bool = False,
) -> bool:
    """Send a response made by the proxy; returns whether the connection may go on."""
    with contextlib.suppress(ConnectionError, OSError):
        writer.write(_http.simple_response(status, text, close=not keep, head_only=head_only))
        await writer.drain()
        return keep
    return False


async def _splice(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    backend_reader: asyncio.StreamReader,
    backend_writer: asyncio.StreamWriter,
) -> None:
    """Copy bytes both ways until both directions ended; a half-close is passed on."""

    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(_http.COPY_SIZE):
                dst.write(data)
                await dst.drain()
            if dst.can_write_eof() and not dst.is_closing():
                dst.write_eof()
        except (ConnectionError, OSError):
            # One side broke: end both directions now.
            for writer in (client_writer, backend_writer):
                writer.transport.abort()

    await asyncio.gather(pump(client_reader, backend_writer), pump(backend_reader, client_writer))
